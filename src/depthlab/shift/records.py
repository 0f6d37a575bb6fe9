"""Shift measurements as run records (`depthlab.records.RunRecord`), the shape `depthlab.analysis.compare` pairs
and the report draws.

A record's config is its run's config plus the measurement's settings:

- `corruption`, `severity`;
- `method`: the method's label, its α included where α is a setting (`alpha_bn:0.1`, `core_reconstructed:0.1`;
  `tent_episodic` for an episodic method). α is part of the label rather than a field of its own: records that
  differ only in the method must form a pair (`--contrast method`), and α differs between methods;
- `eval_batch_size` and `shift_seed` (the run's own `batch_size` and `seed` are its training settings).

Its metrics are `test_loss` and `test_acc` (`records.METRICS`): cross-entropy and accuracy of the online
predictions on the corrupted test stream. The train and val metrics are None: the measurement has none. `q`,
`params`, `recipe` and `sweep` are the run's, so Q bands and recipe checks work as for runs; the number of test
examples measured is an extra metric (`record.extra["examples"]`, a column of the flat view).
"""

from __future__ import annotations

from depthlab.errors import DepthlabError
from depthlab.records import RunRecord, config_id
from depthlab.shift.methods import EPISODIC, WITH_ALPHA
from depthlab.spec.config import neutral  # the run fields' neutral values, which a config id leaves out

SETTINGS = ("corruption", "severity", "method", "eval_batch_size", "shift_seed")
METRICS = ("test_acc", "test_loss")  # what a shift measurement records, the comparison's default metrics


def label(row: dict) -> str:
    """A row's method label (older rows without one in their settings: rebuilt from method and alpha)."""
    stored = (row.get("settings") or {}).get("label")
    if stored:
        return stored
    base = row["method"].removesuffix(EPISODIC)
    return row["method"] + (f":{row['alpha']:g}" if base in WITH_ALPHA else "")


def shift_records(run_records: list[RunRecord], rows: list[dict]) -> list[RunRecord]:
    """One record per measurement row whose run is among `run_records` (from `Store.records`), in row order."""
    runs = {r.run_id: r for r in run_records}
    return [_measurement(runs[row["run_id"]], row) for row in rows if row["run_id"] in runs]


def _measurement(run: RunRecord, row: dict) -> RunRecord:
    """The record of one measurement of `run`: its config with the settings, the run's identity fields."""
    settings = dict(corruption=row["corruption"], severity=row["severity"], method=label(row),
                    eval_batch_size=row["batch_size"], shift_seed=row["seed"])
    clash = sorted(set(settings) & set(run.config))
    if clash:
        raise DepthlabError(f"run configs have fields named like shift settings ({', '.join(clash)}); "
                            "rename them in depthlab.shift.records.SETTINGS")
    config = {**run.config, **settings}
    return RunRecord(
        config=config, run_id=row["run_id"], config_id=config_id(config, neutral()), recipe=run.recipe,
        sweep=run.sweep, sweeps=run.sweeps, status=row["status"], params=run.params, q=run.q,
        test_loss=row.get("loss"), test_acc=row.get("accuracy"), seconds=row.get("seconds"),
        env=row.get("env") or {}, extra={"examples": row.get("examples")},
    )


def load_shift_records(store, sweep: str | None = None, rows: list[dict] | None = None) -> list[RunRecord]:
    """The shift records of an open store (of one sweep's runs when given; `rows`: its `shift_rows()` when read
    already). Only the measured runs are read, without their per-epoch history (a measurement has none): a store
    without shift rows reads no run at all."""
    rows = store.shift_rows() if rows is None else rows
    ids = list(dict.fromkeys(row["run_id"] for row in rows))
    runs = store.records(sweep=sweep, run_ids=ids, history=False)
    return shift_records(runs, rows)
