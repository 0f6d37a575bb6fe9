"""Fixtures for the report tests: one tiny real sweep per test session (seconds), a hostile pending run in it,
and the report of that store written once by the `depthlab report` command."""

from __future__ import annotations

import pytest

from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

# 2 depths x 2 wirings x 3 seeds on generated data: 6 pairs (3 per depth), two Q bands, two epochs of history.
TINY = {
    "name": "tiny",
    "defaults": {"dataset": "synthetic", "train_subset": 256, "test_subset": 64, "val_split": 64, "width": 4,
                 "stem_stride": 2, "batch_size": 32, "epochs": 10, "lr": 0.02},  # they learn: training loss
    # 0.58-0.82 x chance in float32 and bf16 (compare leaves out runs above 0.9 x chance)
    "grid": {"blocks": [2, 3], "topology": ["sequential", "parallel"], "seed": [0, 1, 2]},
}
HOSTILE = "<script>alert(1)</script>"
HOSTILE_SWEEP = "<b>x</b>"


def run_cli(monkeypatch, *argv) -> int:
    import depthlab.cli.main as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["report"])
    return cli.main(list(argv))


@pytest.fixture
def cli(monkeypatch):
    """`depthlab ARGS...` with only the report commands registered; returns the exit code."""
    return lambda *argv: run_cli(monkeypatch, *argv)


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory):
    """A store holding the tiny sweep (done) plus one pending run whose config and sweep name hold markup."""
    path = tmp_path_factory.mktemp("report_store") / "runs.sqlite"
    spec = SweepSpec.from_dict(TINY)
    run_sweep(spec, path, device="cpu", progress=False, log=lambda msg: None)
    with Store(path) as store:
        config = dict(spec.configs()[0].to_dict(), norm=HOSTILE)
        store.add_runs([config], sweep=HOSTILE_SWEEP, recipe=1)
    return path


@pytest.fixture(scope="session")
def records(sweep_store):
    with Store(sweep_store) as store:
        return store.records()


@pytest.fixture(scope="session")
def report_path(sweep_store, tmp_path_factory):
    """The report of the whole store, written by `depthlab report` (session-wide: figures take seconds)."""
    out = tmp_path_factory.mktemp("report_out") / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        assert run_cli(mp, "report", "--store", str(sweep_store), "--out", str(out), "--runs", "4") == 0
    return out


@pytest.fixture(scope="session")
def report_html(report_path):
    return report_path.read_text(encoding="utf-8")
