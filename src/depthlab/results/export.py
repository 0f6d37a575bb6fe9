"""Export store records as one flat table (CSV, JSON or Parquet): the result columns, the run's pack (its id, size
and this run's share of the pack's time), then every config field (constant ones too: a table read later, or
joined with another sweep's, must say what every run was), every extra measurement, and the environment
(`env.<key>`); or, with `history`, one row per run and epoch. A CSV cell that a spreadsheet would run as a formula
(text starting with =, +, -, @) is written with a leading apostrophe."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from contextlib import contextmanager
from operator import attrgetter, itemgetter

from depthlab.errors import DepthlabError, SpecError
from depthlab.outputs import replaced
from depthlab.records import RECORD_FIELDS, RunRecord

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
    if len(keys) > 1 and all(len(c) == len(keys) for c in configs):  # each holds every key (the usual case):
        names = sorted(keys)  # read them as one table turned into its columns
        return [k for k, values in zip(names, zip(*map(itemgetter(*names), configs))) if _varies(values)]
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
        if float not in kinds:  # (a seed's 100,000 values need no text)
            return len(distinct) > 1
        if 0.0 not in distinct:  # 0.0 and -0.0 are equal, their texts are not
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


def _columns(records: list[RunRecord], parts: tuple | None = None) -> list[str]:
    """RESULT_FIELDS, PACK_FIELDS, every config key, every extra measurement, every env key (`env.<key>`);
    `parts`: the records' `_column_parts`, when known."""
    config, extra, env = parts or _column_parts(records)
    return RESULT_FIELDS + PACK_FIELDS + config + extra + [f"env.{k}" for k in env]


def _column_parts(records: list[RunRecord]) -> tuple[list[str], list[str], list[str]]:
    """The config columns, the extra measurements' and the env keys, each sorted (`_columns`)."""
    taken = set(RESULT_FIELDS) | set(PACK_FIELDS)
    config = sorted(set().union(*(r.config for r in records)) - taken) if records else []
    extra = sorted(set().union(*(r.extra for r in records)) - taken - set(config)) if records else []
    envs = {id(r.env): r.env for r in records}  # the runs of a pack share one (`Store.records`)
    env = sorted({f"env.{k}" for e in envs.values() for k in e})
    return config, extra, [k[4:] for k in env]


def flat_table(records: list[RunRecord]) -> list[dict]:
    """One row per record, with the columns of `_columns` (a record without one gets None)."""
    parts = _column_parts(records)
    return [dict(zip(_columns(records, parts), row)) for row in _flat_rows(records, parts)]


# Where each of RESULT_FIELDS comes from: a record field (read at once by one getter), the run's sweeps, or its
# config: indexes into a record's [*those fields, its sweeps' cell, *those config values].
_OWN = tuple(f for f in RESULT_FIELDS if f in RECORD_FIELDS and f != "sweeps")
_OWN_VALUES = attrgetter(*_OWN)
_HEAD_CONFIG = tuple(f for f in RESULT_FIELDS if f not in RECORD_FIELDS)
_HEAD = [len(_OWN) if f == "sweeps" else _OWN.index(f) if f in _OWN else len(_OWN) + 1 + _HEAD_CONFIG.index(f)
         for f in RESULT_FIELDS]


def _flat_rows(records: list[RunRecord], parts: tuple, *, safe: bool = False) -> list[list]:
    """The cells of `flat_table`'s rows, in column order; `safe`: text cells made safe for spreadsheets
    (`_safe_cells`). `parts`: the records' `_column_parts`."""
    heads, envs = _flat_parts(records, parts, safe=safe)
    for head, env_cells in zip(heads, envs):
        head += env_cells
    return heads


def _flat_parts(records: list[RunRecord], parts: tuple, *, safe: bool = False,
                raw: bool = False) -> tuple[list[list], list[list]]:
    """(each row's cells before its `env.<key>` columns, each row's `env.<key>` cells): `_flat_rows` in two parts,
    the second one list per environment, shared by the rows of the runs that share it (a pack's: `Store.records`),
    so that a writer can format it once (`_write_csv_rows`). The cells are what `_cell` makes of `record.as_row()` with
    the pack and `env.<key>` columns over it (`_generic_rows`), read here field by field instead; with `raw`, the
    first part holds the values, not yet cells, for a writer that makes a column of them at once (`_column_cells`)."""
    config, extra, env = parts
    if _shadowed(config, extra):
        rows, cut = _generic_rows(records, safe), len(_columns(records, parts)) - len(env)
        return [row[:cut] for row in rows], [row[cut:] for row in rows]
    keys = len(set().union(*(r.config for r in records)))
    whole = itemgetter(*config) if len(config) > 1 else None  # a config holding every key: its cells at once
    envs: dict[int, tuple] = {}  # {id(env): (env, its cells)}: the env is held so that its id stays its own
    sweeps: dict[int, tuple] = {}
    heads, env_rows = [], []
    for rec in records:
        cfg, ex, en = rec.config, rec.extra, rec.env
        known = envs.get(id(en))
        if known is None:
            known = envs[id(en)] = (en, _safe_cells([_cell(en.get(k)) for k in env], safe))
        listed = sweeps.get(id(rec.sweeps))
        if listed is None:
            listed = sweeps[id(rec.sweeps)] = (rec.sweeps, _cell(list(rec.sweeps)))
        pool = [*_OWN_VALUES(rec), listed[1], *(cfg[c] if c in cfg else ex.get(c) for c in _HEAD_CONFIG)]
        cells = [pool[k] for k in _HEAD]
        cells += [en.get("pack"), rec.pack_size, rec.pack_seconds, rec.pack_train_seconds]
        cells += whole(cfg) if whole and len(cfg) == keys else [cfg[c] if c in cfg else ex.get(c) for c in config]
        cells += [ex.get(c) for c in extra]
        heads.append(cells if raw else _safe_cells(cells, safe, cell=True))
        env_rows.append(known[1])
    return heads, env_rows


_NOT_TEXT = frozenset((int, bool, type(None)))


def _safe_cells(cells: list, safe: bool, *, cell: bool = False) -> list:
    """`cells` (with `cell`: values, each made a cell by `_cell`), with `safe` each text that a spreadsheet would
    evaluate (a sweep named "=cmd|...") made inert with a leading apostrophe. One pass over millions of cells:
    `_cell` inline for the usual types (a float is itself when finite: v - v is 0 then, NaN otherwise)."""
    if cell and safe:
        return [("'" + v if v.startswith(FORMULA_START) else v) if (t := type(v)) is str else v if t in _NOT_TEXT
                else (v if v - v == 0 else None) if t is float else _safe_cells([_cell(v)], True)[0] for v in cells]
    if cell:
        return [v if (t := type(v)) is str or t in _NOT_TEXT else (v if v - v == 0 else None) if t is float
                else _cell(v) for v in cells]
    if not safe:
        return cells
    return [("'" + v if v.startswith(FORMULA_START) else v) if isinstance(v, str) else v for v in cells]


def _shadowed(config: list[str], extra: list[str]) -> bool:
    """Whether a config or extra column could be hidden in `as_row()` by a record field or by an `env.<key>`
    column (no store writes such names; a hand-made record may): then rows are made the generic way."""
    names = {*config, *extra}
    return bool(names & set(RECORD_FIELDS)) or any(n.startswith("env.") for n in names)


def _generic_rows(records: list[RunRecord], safe: bool) -> list[list]:
    """`_flat_rows` through `record.as_row()`, whatever the names."""
    columns = _columns(records)
    rows = []
    for rec in records:
        flat = {**rec.as_row(), "pack": rec.env.get("pack"), "pack_size": rec.pack_size,
                "pack_seconds": rec.pack_seconds, "pack_train_seconds": rec.pack_train_seconds,
                **{f"env.{k}": v for k, v in rec.env.items()}}
        rows.append(_safe_cells([_cell(flat.get(c)) for c in columns], safe))
    return rows


def history_table(records: list[RunRecord]) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the per-epoch metrics: one row per run and epoch, run_id and epoch first."""
    rows = [{"run_id": rec.run_id, "epoch": i + 1, **{k: _cell(v) for k, v in h.items()}}
            for rec in records for i, h in enumerate(rec.history)]
    keys = sorted({k for r in rows for k in r} - {"run_id", "epoch"})
    return ["run_id", "epoch", *keys], [{c: r.get(c) for c in ["run_id", "epoch", *keys]} for r in rows]


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


def _column_cells(values: list) -> list:
    """`_cell` of each of a column's values, its types looked at once: a column of names, ints and finite floats
    (most of them) is its values."""
    kinds = set(map(type, values))
    if kinds <= _NOT_TEXT | {str}:
        return values
    if kinds <= _NOT_TEXT | {str, float} and all(v - v == 0 for v in values if type(v) is float):
        return values  # (v - v is 0 for a finite float, NaN otherwise)
    return [_cell(v) for v in values]


def _arrow_column(values: list):
    """Parquet wants one type per column; a mixed one (residual_scale: "1/n" and 0.5) becomes text."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds <= {int, float} or len(kinds) <= 1:
        return values
    return [None if v is None else str(v) for v in values]


def _write_csv_rows(f, heads: list[list], envs: list[list]) -> None:
    """Write the rows of `_flat_parts` as CSV lines to `f`: each row's cells, then its environment's cells, formatted
    once per environment. A pack's runs share one environment, and its cells (the software, the hardware, the
    recipe table as JSON) are a third of a CSV's cells and most of its text: 100,000 runs took 0.6 s of the
    writer's 1.4 s to format them again for every run. A cell's CSV text does not depend on the cells beside it
    (`csv.QUOTE_MINIMAL` quotes a field for its own characters), so a row's line is the line of its first cells,
    a comma, and the line of its environment's."""
    texts: dict[int, str] = {}
    for cells in envs:
        if id(cells) not in texts:
            texts[id(cells)] = _csv_line(cells)
    lines = _Lines(f, [texts[id(cells)] for cells in envs])
    # the same line end as the whole rows': a field holding it is quoted
    csv.writer(lines, lineterminator="\n").writerows(heads)
    lines.check_done()


def _csv_line(cells: list) -> str:
    """The CSV text of `cells` as `_write_csv_rows` appends it to a row: a comma before it, the line end after."""
    if not cells:
        return "\n"
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(cells)
    return "," + text.getvalue()


class _Lines:
    """The file a csv writer writes to in `_write_csv_rows`: each line it writes (a row's first cells: the writer
    writes each row with one call) has its line end replaced by the next of `tails`."""

    def __init__(self, f, tails: list[str]):
        self._write, self._tails, self._next = f.write, tails, 0

    def write(self, line: str) -> None:
        self._write(line[:-1])  # without its "\n"
        self._write(self._tails[self._next])
        self._next += 1

    def check_done(self) -> None:
        """Every tail written, each after its own row (a writer that wrote a row in several calls would not)."""
        if self._next != len(self._tails):
            raise RuntimeError(f"the CSV writer wrote {self._next} lines for {len(self._tails)} rows")


def write_results(records: list[RunRecord], fmt: str = "csv", out="-", *, history: bool = False) -> int:
    """Write the flat table of `records` (with `history`, their per-epoch rows) to `out` (a path, or "-" for
    stdout). Returns the number of rows."""
    if fmt not in FORMATS:
        raise SpecError("format", fmt, ", ".join(FORMATS))
    if fmt == "parquet" and out == "-":
        raise DepthlabError("parquet is binary and needs a file: pass --out FILE.parquet")
    safe = fmt == "csv"  # text made safe for spreadsheets where it goes into a CSV
    if history:
        columns, table = history_table(records)
        rows = [_safe_cells(list(r.values()), safe) for r in table]  # values in column order
        heads, envs = rows, [[]] * len(rows)
    else:  # each row's cells in column order, in two parts (`_flat_parts`)
        parts = _column_parts(records)
        columns, (heads, envs) = _columns(records, parts), _flat_parts(records, parts, safe=safe,
                                                                       raw=fmt == "parquet")
    if fmt == "parquet":
        _write_parquet(columns, heads, envs, out)
    else:
        with _opened(str(out) if out != "-" else out) as f:
            if fmt == "csv":
                csv.writer(f, lineterminator="\n").writerow(columns)
                _write_csv_rows(f, heads, envs)
            else:
                rows = (dict(zip(columns, head + env)) for head, env in zip(heads, envs))
                json.dump(list(rows), f, indent=2, allow_nan=False)
                f.write("\n")
    return len(heads)


def _write_parquet(columns: list[str], heads: list[list], envs: list[list], out) -> None:
    """Write the rows of `_flat_parts` (`heads` raw values, unless the rows are a history's) to `out`, column by
    column: each column's values made cells at once (`_column_cells`), and each `env.<key>` column made of the
    distinct environments' cells, taken by each row's environment (a pack's runs share one)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DepthlabError(
            "writing parquet needs pyarrow: pip install 'depthlab[parquet]' (or use --format csv/json)"
        ) from err
    width = len(columns) - len(envs[0]) if envs else len(columns)
    arrays = [pa.array(_arrow_column(_column_cells(list(v)))) for v in list(zip(*heads)) or [()] * width]
    distinct = {id(e): e for e in envs}
    which = {key: k for k, key in enumerate(distinct)}
    taken = pa.array([which[id(e)] for e in envs], type=pa.int64())
    arrays += [pa.array(_arrow_column(list(v))).take(taken) for v in zip(*distinct.values())]
    table = pa.table(dict(zip(columns, arrays)))
    try:  # into a file beside it: pyarrow removes what it was writing when it fails, never `out` itself
        with replaced(out) as temp:
            pq.write_table(table, str(temp))
    except OSError as err:
        raise DepthlabError(f"cannot write {out}: {err}") from err
