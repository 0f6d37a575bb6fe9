"""`depthlab compare`'s answer on one screen (`format_answer`): the verdicts first, lines within the terminal's
width and words never split, a ranking when the contrast has more than two values, the full tables on --details."""

import math
import os
import re
import shutil

import numpy as np
import pytest

import depthlab.cli.main as main_mod
from depthlab.analysis.compare import compare_report, format_answer, format_report, terminal_width
from depthlab.records import RunRecord
from depthlab.results.store import Store

METRICS = ("val_loss", "train_loss", "val_acc")
FOUR = {"sequential": 0.0, "groups:2": -0.03, "groups:4": -0.06, "parallel": -0.1}  # offsets of val_loss
RNG = np.random.default_rng(7)
BASE = 1.0 + RNG.normal(0, 0.2, 12)  # run-to-run spread that pairing removes
NOISE = RNG.normal(0, 0.005, (len(FOUR), 12))


def record(seed, topology, val_loss, *, q=5.0, head="gap", status="done", train_loss=None, val_acc=None):
    """A finished run as Store.records() gives it (4 blocks, so every wiring is a different network)."""
    config = dict(dataset="mnist", topology=topology, blocks=4, width=8, kernel=3, head=head, seed=seed, epochs=3)
    acc = 1.0 - val_loss / 4 if val_acc is None else val_acc
    return RunRecord.make(config, run_id=f"{topology}-{head}-{seed}", status=status, params=1000, q=q,
                          val_loss=val_loss, train_loss=val_loss / 2 if train_loss is None else train_loss,
                          val_acc=acc, train_acc=acc, seconds=1.0)


def records(topologies, n=8, q=lambda seed: 5.0, **kw):
    return [record(seed, t, BASE[seed] + FOUR[t] + NOISE[k, seed], q=q(seed), **kw)
            for k, t in enumerate(topologies) for seed in range(n)]


def report_of(recs, **kw):
    return compare_report(recs, n_boot=500, **kw)


@pytest.fixture(scope="module")
def two():
    return report_of(records(["sequential", "parallel"]))


@pytest.fixture(scope="module")
def four():
    return report_of(records(list(FOUR)))


def logical(text):
    """The answer's lines with their wrapped continuations (indented 4 or more) joined back."""
    out = []
    for line in text.splitlines():
        if line.startswith("    ") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def verdict_lines(text):
    return [i for i, line in enumerate(text.splitlines()) if line.startswith(METRICS)]


def check_fits(text, report, width):
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    assert verdict_lines(text) and verdict_lines(text)[0] < 10  # the first verdict is on the first screen
    words = {w for line in lines for w in line.split()}
    joined = "\n".join(logical(text))
    for results in report["paired"].values():
        for res in results:
            for g in res["groups"]:
                assert set(g["verdict"].split()) <= words, g["verdict"]  # each word whole on some line
                assert g["verdict"] in joined


@pytest.mark.parametrize("width", [80, 120])
def test_two_values_answer_in_a_few_lines_within_the_width(two, width):
    text = format_answer(two, width)
    check_fits(text, two, width)
    lines = logical(text)
    assert lines[0].startswith("depthlab compare, topology: sequential vs parallel; 16 runs (done 16)")
    rows = [line for line in lines if line.startswith(METRICS)]
    assert len(rows) == 3  # one per metric, the one pair of values
    by_metric = {line.split()[0]: line for line in rows}
    assert "parallel - sequential: d -" in by_metric["val_loss"] and by_metric["val_loss"].endswith(
        "8/8 pairs: parallel better")
    assert by_metric["val_acc"].endswith("parallel better") and "d +" in by_metric["val_acc"]
    assert "ranking" not in text  # two values: the verdict is the ranking
    assert "--details shows the full tables" in lines[-1]
    assert len(text.splitlines()) <= 12


PAIR_LINE = re.compile(r"^(\w+) +(\S+) - (\S+): d ")


@pytest.mark.parametrize("width", [80, 120])
def test_four_values_rank_by_mean_and_fit(four, width):
    text = format_answer(four, width)
    check_fits(text, four, width)
    if width == 120:
        assert len(text.splitlines()) <= 45  # a 120x45 terminal shows it whole
    lines = logical(text)
    pairs = [PAIR_LINE.match(line).groups() for line in lines if PAIR_LINE.match(line)]
    assert len(pairs) == 3 * 6 and len(set(pairs)) == 3 * 6  # every two of four values, per metric
    for metric in METRICS:
        (ranking,) = [line for line in lines if line.startswith(f"{metric} ranking")]
        found = re.findall(r"(sequential|parallel|groups:\d) (\d\.\d+)", ranking.split("runs): ")[1])
        means = [float(m) for _, m in found]
        assert [v for v, _ in found] == ["parallel", "groups:4", "groups:2", "sequential"]
        assert means == sorted(means, reverse=metric.endswith("_acc"))
        # the ranking follows its metric's verdicts
        own = [i for i, line in enumerate(lines) if PAIR_LINE.match(line) and line.startswith(metric + " ")]
        assert len(own) == 6 and lines.index(ranking) == max(own) + 1


def test_ranking_means_are_the_means_of_done_runs(four):
    text = format_answer(four, 200)
    (ranking,) = [line for line in text.splitlines() if line.startswith("val_loss ranking")]
    seq = np.mean([BASE[s] + NOISE[0, s] for s in range(8)])
    assert f"sequential {seq:.4g}" in ranking


def test_several_q_bands_give_short_lines_after_the_all_line():
    report = report_of(records(["sequential", "parallel"], n=12, q=lambda seed: 0.5 if seed % 2 else 20.0))
    text = format_answer(report, 80)
    check_fits(text, report, 80)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("val_loss"))
    assert "12/12 pairs" in lines[first] or "12/12 pairs" in lines[first + 1]
    bands = [line for line in lines if line.startswith("  Q band")]
    assert [b.split(":")[0] for b in bands[:2]] == ["  Q band [0,1)", "  Q band [10,inf)"]
    assert all("6/6 pairs" in b and "sequential" not in b.split(":")[0] for b in bands)
    assert lines.index(bands[0]) > first


def test_one_band_gives_no_band_lines(two):
    assert "Q band [" not in format_answer(two, 120)


def test_by_splits_get_short_lines():
    recs = records(["sequential", "parallel"]) + [
        record(seed, t, 1.0 + 0.1 * (t == "parallel") + 0.001 * seed, head="flatten")
        for t in ("sequential", "parallel") for seed in range(8)]
    report = report_of(recs, by="head", metrics=("val_loss",))
    text = format_answer(report, 80)
    check_fits(text, report, 80)
    lines = text.splitlines()
    assert any(line.startswith("  head=gap:") and line.endswith("parallel better") for line in lines)
    assert any(line.startswith("  head=flatten:") and line.endswith("sequential better") for line in lines)


def test_details_add_the_full_tables(two):
    short = format_answer(two, 100)
    full = format_answer(two, 100, details=True)
    assert full == short.rsplit("\n\n", 1)[0] + "\n" + "\n" + format_report(two)
    assert "Mean final metrics" in full and "TOST p" in full and "Mean final metrics" not in short


def test_a_word_wider_than_a_line_stands_alone_and_whole():
    recs = [record(s, "sequential", 1.0 + 0.01 * s - 0.1 * (head[0] == "b"), head=head)
            for head in ("a" * 45, "b" * 45) for s in range(4)]
    text = format_answer(report_of(recs, contrast="head"), 40)
    words = {w for line in text.splitlines() for w in line.split()}
    assert {"head=" + "a" * 45, "head=" + "b" * 45} <= words
    for line in text.splitlines():
        assert len(line) <= 40 or " " not in line.strip()


def test_runs_at_chance_level_get_no_verdict_that_says_equivalent_or_better():
    chance = math.log(10)
    recs = [record(s, t, chance + 0.001 * s, train_loss=chance - 0.001 * k, val_acc=0.1)
            for k, t in enumerate(FOUR) for s in range(6)]
    report = report_of(recs)
    for width in (80, 120):
        text = format_answer(report, width)
        assert max(map(len, text.splitlines())) <= width
        assert "equivalent" not in text and "better" not in text
        assert "not learned: 6 of 6 pairs hold a run near chance level" in "\n".join(logical(text))
        assert "val_loss ranking: none, no pair of learned runs" in "\n".join(logical(text))


# -- through the CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def only_results_commands(monkeypatch):
    monkeypatch.setattr(main_mod, "COMMAND_MODULES", ["results"])


def make_store(path, chance=False):
    """Four wirings, 6 seeds each; at chance level when `chance` (a training loss of about ln 10)."""
    store = Store(path)
    configs = [dict(dataset="mnist", topology=t, blocks=4, width=8, kernel=3, epochs=2, seed=s)
               for t in FOUR for s in range(6)]
    ids = store.add_runs(configs, sweep="demo", recipe=1)
    store.claim(ids, "me:1:x")
    for rid, cfg in zip(ids, configs):
        loss = BASE[cfg["seed"]] + FOUR[cfg["topology"]] + NOISE[0, cfg["seed"]]
        final = (dict(train_loss=math.log(10), val_loss=math.log(10), train_acc=0.1, val_acc=0.1) if chance else
                 dict(train_loss=loss / 2, val_loss=loss, train_acc=1 - loss / 4, val_acc=1 - loss / 4))
        store.finish(rid, "me:1:x", status="done", final=final, history=[{"epoch": 0}, {"epoch": 1}],
                     params=1000, q=2.0, seconds=0.5, env={"device": "cpu"})
    store.close()


def compare_cli(argv, capsys):
    assert main_mod.main(["compare", "--n-boot", "500", *argv]) == 0
    return capsys.readouterr().out


def test_cli_answer_fits_80_columns(tmp_path, capsys, monkeypatch, only_results_commands):
    path = tmp_path / "runs.sqlite"
    make_store(path)
    monkeypatch.setenv("COLUMNS", "80")
    out = compare_cli(["--store", str(path)], capsys)
    assert max(map(len, out.splitlines())) <= 80 and verdict_lines(out)[0] < 10
    assert "val_loss ranking" in out and "Mean final metrics" not in out
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((80, 45)))
    assert compare_cli(["--store", str(path)], capsys) == out
    details = compare_cli(["--store", str(path), "--details"], capsys)
    assert details.startswith(out.rsplit("\n\n", 1)[0]) and "Mean final metrics" in details and "TOST p" in details


def test_cli_without_a_terminal_uses_100_columns(tmp_path, capsys, monkeypatch, only_results_commands):
    monkeypatch.delenv("COLUMNS", raising=False)

    def no_terminal(fd=1):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    assert terminal_width() == 100
    path = tmp_path / "runs.sqlite"
    make_store(path)
    out = compare_cli(["--store", str(path)], capsys)
    assert max(map(len, out.splitlines())) <= 100


def test_cli_chance_level_store_says_not_learned(tmp_path, capsys, monkeypatch, only_results_commands):
    path = tmp_path / "runs.sqlite"
    make_store(path, chance=True)
    monkeypatch.setenv("COLUMNS", "80")
    out = compare_cli(["--store", str(path)], capsys)
    assert "not learned" in out and "equivalent" not in out and "better" not in out
    assert max(map(len, out.splitlines())) <= 80


def test_cli_json_is_the_report(tmp_path, capsys, only_results_commands):
    import json

    path = tmp_path / "runs.sqlite"
    make_store(path)
    out = compare_cli(["--store", str(path), "--json", "--details"], capsys)
    report = json.loads(out)
    assert set(report) >= {"band_table", "paired", "notes"} and len(report["paired"]["val_loss"]) == 6
