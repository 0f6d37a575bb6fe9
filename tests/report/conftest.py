"""Fixtures for the report tests: one tiny real sweep per test session (seconds), a hostile pending run in it,
and the report of that store written once by the `depthlab report` command (and once with `--by blocks`); and
stores of hand-made finished runs written through the store's API (no training), for the `groups:g` wirings
and for runs of one epoch."""

from __future__ import annotations

from html.parser import HTMLParser

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
WIRINGS = ("sequential", "groups:2", "parallel")  # deep to shallow, as the figures order them
SCRIPT_SWEEP = "<script>alert('wiring')</script>"  # the name of the hand-made sweep of every wiring


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


@pytest.fixture(scope="session")
def by_report_path(sweep_store, tmp_path_factory):
    """The report of the whole store split by blocks (2 and 3), written by `depthlab report --by blocks`."""
    out = tmp_path_factory.mktemp("report_by") / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        assert run_cli(mp, "report", "--store", str(sweep_store), "--out", str(out), "--runs", "4",
                       "--by", "blocks") == 0
    return out


def hand_store(path, *, wirings=WIRINGS, epochs: int = 2, sweep: str = "hand", widths=(4, 8), seeds=(0, 1, 2)):
    """A store of done runs written through the store's API without training: 4 blocks, every wiring × width ×
    seed, made-up final metrics (learned: training loss about a third of chance) and `epochs` epochs of
    history each. The shallower the wiring, the lower its validation loss, so every pair has a winner."""
    configs = [dict(dataset="synthetic", topology=t, blocks=4, width=w, seed=s, epochs=epochs)
               for t in wirings for w in widths for s in seeds]
    owner = "test:1:x"
    with Store(path) as store:
        ids = store.add_runs(configs, sweep=sweep, recipe=1)
        assert store.claim(ids, owner) == ids
        for rid, cfg in zip(ids, configs):
            val = 1.0 + 0.05 * cfg["seed"] - 0.02 * wirings.index(cfg["topology"]) - 0.01 * cfg["width"]
            history = [dict(epoch=e + 1, train_loss=0.8 + 0.4 / (e + 1), val_loss=val + 0.4 / (e + 1),
                            val_acc=0.6 - 0.2 / (e + 1)) for e in range(epochs)]
            store.finish(rid, owner, status="done", history=history, params=250 * cfg["width"],
                         final=dict(train_loss=0.8 + 0.4 / epochs, val_loss=history[-1]["val_loss"], train_acc=0.7,
                                    val_acc=history[-1]["val_acc"]),
                         q=4.0 / cfg["width"], seconds=0.5, env={"device": "cpu"})
    return path


@pytest.fixture(scope="session")
def one_epoch_store(tmp_path_factory):
    """Hand-made done runs of every wiring with one epoch of history each."""
    return hand_store(tmp_path_factory.mktemp("one_epoch") / "runs.sqlite", epochs=1)


@pytest.fixture(scope="session")
def big_store(tmp_path_factory):
    """Hand-made done runs of every wiring, 2 widths and 350 seeds (2,100 runs, 3 epochs each): more than a
    report lists one by one (about a second to write)."""
    return hand_store(tmp_path_factory.mktemp("big") / "runs.sqlite", seeds=range(350), epochs=3)


@pytest.fixture(scope="session")
def wiring_store(tmp_path_factory):
    """Hand-made done runs of sequential, groups:2 and parallel, two epochs each, in a sweep with a hostile name."""
    return hand_store(tmp_path_factory.mktemp("wirings") / "runs.sqlite", sweep=SCRIPT_SWEEP)


class Tables(HTMLParser):
    """Text of every cell of every table with an id: {id: [[cell, ...], ...]} (header row first)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tables, self._current, self._row, self._cell = {}, None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._current = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._current is not None:
            self._row = []
            self._current.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._current, self._row = None, None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="session")
def html_tables():
    """The tables of a page: {table id: [[cell text, ...], ...]}, header row first."""
    return lambda html: Tables(html).tables
