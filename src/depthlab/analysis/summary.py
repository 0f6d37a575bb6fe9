"""Outcomes grouped by config fields: which settings train, which diverge, and how well.

`compare` answers the paired deep-vs-shallow question; many experiments ask a plainer one, e.g. the
normalisation-free study: for each depth × residual scale × norm × init, how many of its seeds trained, how many
diverged, and what loss and accuracy the trained ones reached. Seeds are what a group averages over, so by
default the groups are every varied config field except `seed`.
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

from depthlab.analysis.compare import mean_or_none, std_or_none, value_order
from depthlab.errors import SpecError
from depthlab.results.export import varied_fields
from depthlab.records import METRICS, STATUSES, RunRecord, finite

DEFAULT_SUMMARY_METRICS = ("train_loss", "val_loss", "val_acc")


def summary_fields(records: list[RunRecord]) -> list[str]:
    """The default grouping: the varied config fields, seed excluded."""
    return [f for f in varied_fields(records) if f != "seed"]


def summarise(records: list[RunRecord], by: list[str] | None = None, metrics=DEFAULT_SUMMARY_METRICS) -> dict:
    """One row per combination of the `by` fields present in the records: runs per status, and the mean and std
    of each metric over the group's runs that are done (a diverged run has no metric to average)."""
    allowed = varied_fields(records)
    by = [f for f in allowed if f != "seed"] if by is None else list(by)  # summary_fields, without a 2nd pass
    for field in by:
        if field not in allowed:
            raise SpecError("by", field, ", ".join(allowed) or "none (no config field varies)")
    for metric in metrics:
        if metric not in METRICS:
            raise SpecError("metric", metric, ", ".join(METRICS))
    groups: dict[tuple, list[RunRecord]] = {}
    key = _group_key(by)
    for rec in records:
        groups.setdefault(key(rec.config), []).append(rec)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(value_order(v) for v in k)):
        runs = groups[key]
        row = dict(zip(by, key), runs=len(runs))
        statuses = Counter(r.status for r in runs)
        row.update({s: statuses[s] for s in STATUSES})
        done = [r for r in runs if r.status == "done"]
        for metric in metrics:  # one of METRICS: a record field
            values = [v for v in (finite(getattr(r, metric)) for r in done) if v is not None]
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_or_none(values), std_or_none(values)
        rows.append(row)
    return {"by": by, "metrics": list(metrics), "rows": rows}


def _group_key(by: list[str]):
    """config -> the values of the `by` fields in it (None where it has none), read at once where it has them all."""
    every = itemgetter(*by) if len(by) > 1 else None

    def key(config) -> tuple:
        if every is not None:
            try:
                return every(config)
            except KeyError:
                pass
        return tuple(config.get(f) for f in by)

    return key


def format_summary(summary: dict) -> str:
    """The summary as an aligned text table: group fields, status counts, then mean ± std per metric."""
    from depthlab.analysis.compare import text_table

    by, metrics, rows = summary["by"], summary["metrics"], summary["rows"]
    statuses = [s for s in STATUSES if any(row[s] for row in rows)] or ["done"]
    headers = [*by, "runs", *statuses, *metrics]
    table = []
    for row in rows:
        cells = [row[f] for f in by] + [row["runs"]] + [row[s] for s in statuses]
        for metric in metrics:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            cells.append("-" if mean is None else f"{mean:.4g}" + ("" if std is None else f" ± {std:.2g}"))
        table.append(cells)
    note = "metrics: mean ± std over the done runs of each group"
    return text_table(headers, table, "l" * len(by) + "r" * (1 + len(statuses) + len(metrics))) + f"\n{note}\n"
