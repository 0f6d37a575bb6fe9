"""Outcomes grouped by config fields, on a hand-made table whose answer is known; and `depthlab summary`."""

import json

import pytest

import depthlab.cli.main as main_mod
from depthlab.analysis.summary import format_summary, summarise, summary_fields
from depthlab.errors import SpecError
from depthlab.records import RunRecord
from depthlab.results.store import Store


def run(blocks, scale, seed, status="done", loss=None):
    config = dict(dataset="mnist", topology="sequential", blocks=blocks, width=8, kernel=3, residual_scale=scale,
                  seed=seed)
    return RunRecord.make(config, run_id=f"{blocks}-{scale}-{seed}", status=status, train_loss=loss,
                          val_loss=None if loss is None else loss + 0.1, val_acc=None)


RECORDS = [
    run(16, "1", 0, loss=0.5), run(16, "1", 1, loss=0.7), run(16, "1", 2, loss=0.9),
    run(256, "1", 0, "diverged"), run(256, "1", 1, "diverged"), run(256, "1", 2, loss=2.0),
    run(256, "1/n", 0, loss=0.6), run(256, "1/n", 1, loss=0.8), run(256, "1/n", 2, "failed"),
]


def test_groups_count_statuses_and_average_only_done_runs():
    assert summary_fields(RECORDS) == ["blocks", "residual_scale"]  # seed is what a group averages over
    rows = {(r["blocks"], r["residual_scale"]): r for r in summarise(RECORDS)["rows"]}
    assert list(rows) == [(16, "1"), (256, "1"), (256, "1/n")]  # numeric order, not text order
    assert rows[16, "1"]["done"] == 3 and rows[16, "1"]["train_loss_mean"] == pytest.approx(0.7)
    assert rows[16, "1"]["train_loss_std"] == pytest.approx(0.2)
    assert (rows[256, "1"]["diverged"], rows[256, "1"]["done"]) == (2, 1)
    assert rows[256, "1"]["train_loss_mean"] == 2.0 and rows[256, "1"]["train_loss_std"] is None  # one value
    assert rows[256, "1/n"]["failed"] == 1 and rows[256, "1/n"]["val_loss_mean"] == pytest.approx(0.8)
    assert rows[256, "1/n"]["val_acc_mean"] is None  # no value to average


def test_explicit_grouping_and_metrics():
    rows = summarise(RECORDS, by=["residual_scale"], metrics=["train_loss"])["rows"]
    assert [(r["residual_scale"], r["runs"], r["diverged"]) for r in rows] == [("1", 6, 2), ("1/n", 3, 0)]
    assert set(rows[0]) >= {"train_loss_mean", "train_loss_std"} and "val_loss_mean" not in rows[0]


@pytest.mark.parametrize("by, metrics, field", [(["width"], ["train_loss"], "by"),
                                                (["blocks"], ["accuracy"], "metric")])
def test_bad_fields_and_metrics_name_the_allowed_values(by, metrics, field):
    with pytest.raises(SpecError) as err:
        summarise(RECORDS, by=by, metrics=metrics)
    assert err.value.field == field and ("blocks" in err.value.allowed or "val_acc" in err.value.allowed)


def test_text_table_shows_counts_and_mean_with_std():
    text = format_summary(summarise(RECORDS, metrics=["train_loss"]))
    header, _, first, second, third, note = text.splitlines()
    assert header.split() == ["blocks", "residual_scale", "runs", "done", "diverged", "failed", "train_loss"]
    assert first.split() == ["16", "1", "3", "3", "0", "0", "0.7", "±", "0.2"]
    assert second.split() == ["256", "1", "3", "1", "2", "0", "2"]
    assert "done runs" in note


def test_summary_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(main_mod, "COMMAND_MODULES", ["results"])
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        configs = [dict(dataset="mnist", blocks=b, residual_scale=s, seed=seed, width=8)
                   for b in (16, 64) for s in ("1", "1/n") for seed in (0, 1)]
        ids = store.add_runs(configs, sweep="nf", recipe=1)
        store.claim(ids, "me:1:x")
        for rid, cfg in zip(ids, configs):
            diverged = cfg["blocks"] == 64 and cfg["residual_scale"] == "1"
            store.finish(rid, "me:1:x", status="diverged" if diverged else "done",
                         final=dict(train_loss=None if diverged else 0.1 * cfg["blocks"] / 16, val_acc=0.9),
                         history=[], params=10, q=1.0, seconds=1.0, env={})
    assert main_mod.main(["summary", "--store", str(path), "--json", "--metric", "train_loss"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["blocks"], r["residual_scale"], r["done"], r["diverged"]) for r in rows] == [
        (16, "1", 2, 0), (16, "1/n", 2, 0), (64, "1", 0, 2), (64, "1/n", 2, 0)]
    assert rows[3]["train_loss_mean"] == pytest.approx(0.4)
    assert main_mod.main(["summary", "--store", str(path), "--by", "blocks"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:4] == ["16", "4", "4", "0"]
    assert main_mod.main(["summary", "--store", str(path), "--by", "widht"]) == 2
    assert "allowed" in capsys.readouterr().err
