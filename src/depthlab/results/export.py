"""Export store records as one flat table (CSV, JSON or Parquet): the result columns, then every config field
that varies across the records (the constant ones say nothing about the comparison)."""

from __future__ import annotations

import csv
import json
import math
import sys
from contextlib import contextmanager

from depthlab.errors import DepthlabError, SpecError
from depthlab.outputs import replaced
from depthlab.records import RunRecord

RESULT_FIELDS = [
    "run_id", "sweeps", "recipe", "dataset", "topology", "blocks", "width", "kernel", "params", "q", "status",
    "train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc", "epochs_run", "seconds",
    "train_seconds", "error",
]
FORMATS = ("csv", "json", "parquet")


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varied_fields(records: list[RunRecord]) -> list[str]:
    """Config keys whose value differs across the records (a key missing from some counts as None), sorted."""
    configs = [r.config for r in records]
    keys = set().union(*configs) if configs else set()
    return sorted(k for k in keys if len({_key(c.get(k)) for c in configs}) > 1)


def _cell(value):
    """A table cell: a scalar or None (non-finite floats -> None; lists and dicts -> their JSON; a list of
    names, such as a run's sweeps, joined by '; ')."""
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
    # a varied config key that is also a result column (e.g. `epochs`) shows the record's value
    return RESULT_FIELDS + [k for k in varied_fields(records) if k not in RESULT_FIELDS]


def flat_table(records: list[RunRecord]) -> list[dict]:
    """One row per record: RESULT_FIELDS (of its flat view, `RunRecord.as_row`), then the varied config fields,
    in that order."""
    extra = _columns(records)[len(RESULT_FIELDS):]
    rows = []
    for rec in records:
        flat = rec.as_row()
        row = {f: _cell(flat.get(f)) for f in RESULT_FIELDS}
        row.update({k: _cell(rec.config.get(k)) for k in extra})
        rows.append(row)
    return rows


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


def write_results(records: list[RunRecord], fmt: str = "csv", out="-") -> int:
    """Write the flat table of `records` to `out` (a path, or "-" for stdout). Returns the number of rows."""
    if fmt not in FORMATS:
        raise SpecError("format", fmt, ", ".join(FORMATS))
    columns, rows = _columns(records), flat_table(records)
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
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            json.dump(rows, f, indent=2, allow_nan=False)
            f.write("\n")
    return len(rows)
