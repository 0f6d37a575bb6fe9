"""The read paths at scale (#23): what they compute once or on several threads, or by a shortcut, is what they
computed before, value for value."""

import gc
import math

import pytest

from depthlab.analysis import compare
from depthlab.cli.main import main
from depthlab.records import RunRecord
from depthlab.results.export import varied_fields
from depthlab.results.store import Store


def configs_with(values: list) -> list[RunRecord]:
    return [RunRecord.make({"dataset": "mnist", "x": v}) for v in values]


@pytest.mark.parametrize("values, varied", [
    ([1, 1], False), ([1, 1.0], True), ([1, True], True), ([0, False], True), (["1", 1], True),
    ([0.0, 0.0], False), ([0.0, -0.0], True), ([math.nan, math.nan], False), ([None, None], False),
    ([[1, 2], [1, 2]], False), ([[1, 2], [1.0, 2]], True), ([{"a": 1}, {"a": 1}], False), ([2.5, 2.5, 2.5], False),
])
def test_varied_fields_tells_values_apart_as_their_json_does(values, varied):
    assert varied_fields(configs_with(values)) == (["x"] if varied else [])


def test_a_field_missing_from_some_configs_varies_unless_it_is_none_everywhere():
    records = [RunRecord.make({"dataset": "mnist", "x": None}), RunRecord.make({"dataset": "mnist"})]
    assert varied_fields(records) == []
    records.append(RunRecord.make({"dataset": "mnist", "x": 1}))
    assert varied_fields(records) == ["x"]


def pairs(n: int, offset: float = 0.01) -> list[RunRecord]:
    """n seeds of a sequential and a parallel run, over four Q bands."""
    out = []
    for seed in range(n):
        for topology, shift in (("sequential", 0.0), ("parallel", offset)):
            loss = 0.5 + 0.1 * math.sin(seed) + shift
            out.append(RunRecord.make({"dataset": "mnist", "topology": topology, "blocks": 2, "seed": seed},
                                      status="done", train_loss=loss, val_loss=loss + 0.05, val_acc=1 - loss,
                                      q=[0.5, 2.0, 5.0, 20.0][seed % 4], recipe=1))
    return out


def test_groups_resampled_on_threads_give_the_serial_answer(monkeypatch):
    records = pairs(60)
    monkeypatch.setattr(compare, "PARALLEL_PAIRS", 10 ** 9)
    serial = compare.compare_report(records, n_boot=300)
    monkeypatch.setattr(compare, "PARALLEL_PAIRS", 0)
    monkeypatch.setattr(compare.os, "cpu_count", lambda: 3)
    assert compare.compare_report(records, n_boot=300) == serial


def test_what_a_comparison_remembers_does_not_outlive_it():
    first = pairs(8)
    before = compare.compare_report(first, n_boot=100)
    other = pairs(8, offset=0.2)  # the same configs, other losses
    assert compare.compare_report(other, n_boot=100) != before
    assert compare.compare_report(first, n_boot=100) == before
    assert compare._SEEN.get() is None
    kept, superseded = compare.latest_recipes(first)
    assert kept is first and superseded == 0  # nothing superseded: the list itself
    assert len(compare.pair_records(first)[0]) == 8  # outside a comparison: computed, not remembered


def test_read_commands_leave_the_collector_as_they_found_it(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        ids = store.claim(store.add_runs([{"dataset": "mnist", "topology": t, "seed": s} for s in range(3)
                                          for t in ("sequential", "parallel")], sweep="s", recipe=2), "t:1:x")
        for rid in ids:
            store.finish(rid, "t:1:x", status="done", final={"train_loss": 0.5, "val_loss": 0.6, "val_acc": 0.8},
                         history=[{}], params=10, q=2.0, seconds=1.0, env={})
    for argv in (["summary"], ["compare", "--n-boot", "50"], ["results", "--out", str(tmp_path / "r.csv")]):
        assert main([*argv, "--store", str(path)]) == 0
        assert gc.isenabled() and gc.get_freeze_count() == 0
    capsys.readouterr()
