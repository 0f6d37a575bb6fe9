"""Export store records as one flat table (CSV, JSON or Parquet): the result columns, the run's pack (its id, size
and this run's share of the pack's time), then every config field (constant ones too: a table read later, or
joined with another sweep's, must say what every run was), every extra measurement, and the environment
(`env.<key>`); or, with `history`, one row per run and epoch. A CSV cell that a spreadsheet would run as a formula
(text starting with =, +, -, @) is written with a leading apostrophe."""

from __future__ import annotations

import csv
import json
import math
import sys
from contextlib import contextmanager
from operator import itemgetter

from depthlab.errors import DepthlabError, SpecError
from depthlab.outputs import replaced
from depthlab.records import RunRecord

RESULT_FIELDS = [
    "run_id", "sweeps", "recipe", "dataset", "topology", "blocks", "width", "kernel", "params", "q", "status",
    "train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc", "epochs_run", "seconds",
    "train_seconds", "error",
]
FORMATS = ("csv", "json", "parquet")
PACK_FIELDS = ["pack", "pack_size", "pack_seconds", "pack_train_seconds"]  # RunRecord: a pack's time, shared
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varied_fields(records: list[RunRecord]) -> list[str]:
    """Config keys whose value differs across the records (a key missing from some counts as None), sorted."""
    configs = [r.config for r in records]
    keys = set().union(*configs) if configs else set()
    if all(len(c) == len(keys) for c in configs):  # each holds every key (the usual case): read them faster
        return sorted(k for k in keys if _varies(list(map(itemgetter(k), configs))))
    return sorted(k for k in keys if _varies([c.get(k) for c in configs]))


_JSON_TYPES = frozenset((str, int, float, bool, type(None), list, dict))
_SCALARS = frozenset((str, int, float, bool, type(None)))


def _varies(values: list) -> bool:
    """Whether two of `values` differ as their JSON (`_key`) does, encoding only the distinct values (a field of
    100,000 runs holds a handful): 1, 1.0 and true differ, and so do 0.0 and -0.0."""
    kinds = set(map(type, values))
    if len(kinds) > 1 and kinds <= _JSON_TYPES:
        return True  # no two JSON types share a text
    if len(kinds) == 1 and kinds <= _SCALARS:
        distinct = set(values)  # one scalar type: equal values have one text, unequal ones two (NaN aside)
        if not (float in kinds and 0.0 in distinct):  # 0.0 and -0.0 are equal, their texts are not
            return len({_key(v) for v in distinct}) > 1
    return len({_key(v) for v in values}) > 1


_PLAIN = (str, int, bool, type(None))  # cells as they are (exact types: a numpy integer is not one)


def _cell(value):
    """A table cell: a scalar or None (non-finite floats -> None; lists and dicts -> their JSON; a list of
    names, such as a run's sweeps, joined by '; ')."""
    kind = type(value)
    if kind in _PLAIN:  # most cells, first (a table of 100,000 runs has millions)
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy values
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _columns(records: list[RunRecord]) -> list[str]:
    """RESULT_FIELDS, PACK_FIELDS, every config key, every extra measurement, every env key (`env.<key>`)."""
    taken = set(RESULT_FIELDS) | set(PACK_FIELDS)
    config = sorted(set().union(*(r.config for r in records)) - taken) if records else []
    extra = sorted(set().union(*(r.extra for r in records)) - taken - set(config)) if records else []
    env = sorted({f"env.{k}" for r in records for k in r.env})
    return RESULT_FIELDS + PACK_FIELDS + config + extra + env


def flat_table(records: list[RunRecord]) -> list[dict]:
    """One row per record, with the columns of `_columns` (a record without one gets None)."""
    columns = _columns(records)
    rows = []
    for rec in records:
        flat = {**rec.as_row(), "pack": rec.env.get("pack"), "pack_size": rec.pack_size,
                "pack_seconds": rec.pack_seconds, "pack_train_seconds": rec.pack_train_seconds,
                **{f"env.{k}": v for k, v in rec.env.items()}}
        rows.append({c: _cell(flat.get(c)) for c in columns})
    return rows


def history_table(records: list[RunRecord]) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the per-epoch metrics: one row per run and epoch, run_id and epoch first."""
    rows = [{"run_id": rec.run_id, "epoch": i + 1, **{k: _cell(v) for k, v in h.items()}}
            for rec in records for i, h in enumerate(rec.history)]
    keys = sorted({k for r in rows for k in r} - {"run_id", "epoch"})
    return ["run_id", "epoch", *keys], [{c: r.get(c) for c in ["run_id", "epoch", *keys]} for r in rows]


def _safe_for_spreadsheets(value):
    """Text a spreadsheet would evaluate (a sweep named "=cmd|..."), made inert with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


@contextmanager
def _opened(out):
    """stdout for "-", else a text file that replaces `out` only once complete (depthlab.outputs.replaced)."""
    if out == "-":
        yield sys.stdout
        return
    try:
        with replaced(out) as temp, open(temp, "w", newline="", encoding="utf-8") as f:
            yield f
    except OSError as err:
        raise DepthlabError(f"cannot write {out}: {err.strerror or err}") from err


def _arrow_column(values: list):
    """Parquet wants one type per column; a mixed one (residual_scale: "1/n" and 0.5) becomes text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} or len(kinds) <= 1:
        return values
    return [None if v is None else str(v) for v in values]


def write_results(records: list[RunRecord], fmt: str = "csv", out="-", *, history: bool = False) -> int:
    """Write the flat table of `records` (with `history`, their per-epoch rows) to `out` (a path, or "-" for
    stdout). Returns the number of rows."""
    if fmt not in FORMATS:
        raise SpecError("format", fmt, ", ".join(FORMATS))
    columns, rows = history_table(records) if history else (_columns(records), flat_table(records))
    if fmt == "parquet":
        if out == "-":
            raise DepthlabError("parquet is binary and needs a file: pass --out FILE.parquet")
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise DepthlabError(
                "writing parquet needs pyarrow: pip install 'depthlab[parquet]' (or use --format csv/json)"
            ) from err
        table = pa.table({c: pa.array(_arrow_column([r[c] for r in rows])) for c in columns})
        try:  # into a file beside it: pyarrow removes what it was writing when it fails, never `out` itself
            with replaced(out) as temp:
                pq.write_table(table, str(temp))
        except OSError as err:
            raise DepthlabError(f"cannot write {out}: {err}") from err
        return len(rows)
    with _opened(str(out) if out != "-" else out) as f:
        if fmt == "csv":
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            # a row's values are in column order (`flat_table`, `history_table`); most cells are not text
            writer.writerows([_safe_for_spreadsheets(v) if isinstance(v, str) else v for v in row.values()]
                             for row in rows)
        else:
            json.dump(rows, f, indent=2, allow_nan=False)
            f.write("\n")
    return len(rows)
