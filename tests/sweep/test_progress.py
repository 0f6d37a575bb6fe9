"""The sweep progress bar fills by cost, so its ETA holds when cheap and costly runs are mixed."""

import io
import re
import time

import pytest

from depthlab.models import flops
from depthlab.spec.config import RunConfig
from depthlab.run.progress import SweepProgress, fit_name, run_cost, training_examples


def config(**fields):
    return RunConfig(**{"dataset": "mnist", "width": 8, "epochs": 2, **fields})


def test_training_examples_follow_subset_and_validation_split():
    assert training_examples(config(val_split=5000)) == 55_000
    assert training_examples(config(val_split=0.1)) == 54_000
    assert training_examples(config(train_subset=3000, val_split=1000)) == 3000
    assert training_examples(config(dataset="cifar10", val_split=0)) == 50_000


def test_run_cost_is_three_forward_passes_per_example_and_epoch():
    c = config(blocks=4, train_subset=1000, epochs=3)
    assert run_cost(c) == 3 * flops(c.model_spec()) * 1000 * 3
    assert run_cost(config(blocks=256)) > 50 * run_cost(config(blocks=2))


def test_bar_fills_by_cost_epoch_by_epoch_and_counts_runs():
    shallow, deep = config(blocks=2, seed=0), config(blocks=64, seed=0)
    out = io.StringIO()
    bar = SweepProgress([shallow, deep], "sweep", file=out)
    assert bar.eta() is None and "0/2 runs" in out.getvalue() and "ETA ?" in out.getvalue()
    bar.finished(shallow)
    share = run_cost(shallow) / (run_cost(shallow) + run_cost(deep))
    assert bar.bar.n == pytest.approx(run_cost(shallow)) and share < 0.05
    elapsed = time.perf_counter() - bar.started
    # half the runs are done, but not half the work: the ETA is the elapsed time times work left / work done
    # (≥ 19× here), where a runs/s estimate would say about 1×
    assert bar.eta() >= elapsed * (1 - share) / share > 19 * elapsed
    bar.epoch(deep)  # one of two epochs: half the deep run
    assert bar.bar.n == pytest.approx(run_cost(shallow) + run_cost(deep) / 2)
    bar.finished(deep, "diverged")  # only the rest is credited, never more than the run's cost
    assert bar.bar.n == pytest.approx(run_cost(shallow) + run_cost(deep)) and bar.eta() == 0
    bar.close()
    assert "2/2 runs" in out.getvalue() and "1 diverged" in out.getvalue()


def test_restarted_runs_give_back_their_credit_and_runs_taken_elsewhere_leave_the_totals():
    a, b, c = config(seed=0), config(seed=1), config(seed=2, blocks=8)
    out = io.StringIO()
    bar = SweepProgress([a, b, c], "sweep", file=out)
    bar.epoch(a), bar.epoch(b)
    bar.restart([a, b])  # the pack ran out of memory and is split: both start over
    assert bar.bar.n == pytest.approx(0) and bar.eta() is None
    bar.elsewhere(c)  # another runner holds c
    assert bar.bar.total == pytest.approx(run_cost(a) + run_cost(b)) and bar.runs == 2
    bar.finished(a), bar.finished(b)
    assert bar.bar.n == pytest.approx(bar.bar.total) and bar.eta() == 0
    bar.close()
    assert "2/2 runs" in out.getvalue() and "1 taken by other runners" in out.getvalue()
    everything_elsewhere = SweepProgress([a], "sweep", file=io.StringIO())
    everything_elsewhere.elsewhere(a)
    everything_elsewhere.close()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_percentage_and_eta_come_first_after_a_cut_name(monkeypatch):
    import os

    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((60, 24)))
    runs = [config(seed=s) for s in range(3)]
    out = Terminal()
    bar = SweepProgress(runs, "a-sweep-with-a-very-long-name-" * 4 + "(0/3 done before)", file=out)
    bar.finished(runs[0])
    line = out.getvalue().split("\r")[-1]
    assert line.startswith("a-sweep-with-a-very…: ")  # 20 of 60 columns
    assert re.search(r"…:  33% ETA \S+ \|", line[:60]), line  # visible in 60 columns, before the bar
    assert "1/3 runs" in line
    bar.close()
    assert fit_name("short", 60) == "short" and len(fit_name("x" * 100, 60)) == 20
    assert len(fit_name("x" * 100, 10)) == 12  # never shorter than NAME_MIN


def test_piped_output_writes_plain_lines_per_few_percent_or_pack_not_a_redrawn_bar():
    runs = [config(seed=s) for s in range(40)]
    out = io.StringIO()
    bar = SweepProgress(runs, "sweep", file=out)
    for run in runs:  # 40 runs finishing at once: every 2.5% of the work
        bar.epoch(run)
        bar.finished(run)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "sweep:   0% ETA ?, 0/40 runs, " + lines[0].split("0/40 runs, ")[1]
    assert lines[-1].startswith("sweep: 100% ETA 00:00, 40/40 runs")
    assert 10 <= len(lines) <= 22  # at most one per 5%, plus the first and the last: not one per update
    quiet = io.StringIO()
    SweepProgress(runs, "sweep", file=quiet, enabled=False).close()
    assert quiet.getvalue() == ""
