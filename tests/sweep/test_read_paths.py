"""The read paths at scale (#23): what they compute once or on several threads, or by a shortcut, is what they
computed before, value for value."""

import gc
import math
import sqlite3

import pytest

from depthlab.analysis import compare
from depthlab.cli.main import main
from depthlab.records import RunRecord
from depthlab.results.export import varied_fields
from depthlab.results.store import Store


def configs_with(values: list) -> list[RunRecord]:
    return [RunRecord.make({"dataset": "mnist", "x": v}) for v in values]


@pytest.mark.parametrize("values, varied", [
    ([1, 1], False), ([1, 2], True), (["a", "b"], True), ([1, 1.0], True), ([1, True], True), ([0, False], True),
    (["1", 1], True),
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


def stored_runs(path) -> None:
    """Runs of every shape a store holds: shared and own environments, extra metrics or none, a history, a run in
    two sweeps, a failed one (no environment, no metrics) and a pending one."""
    with Store(path) as store:
        configs = [{"dataset": "mnist", "topology": t, "seed": s} for s in range(3) for t in ("sequential", "parallel")]
        ids = store.add_runs(configs, sweep="a", recipe=2)
        store.add_runs(configs[:2], sweep="b", recipe=2)
        store.claim(ids[:5], "t:1:x")
        for k, rid in enumerate(ids[:4]):
            store.finish(rid, "t:1:x", status="done", final={"val_loss": 0.5 + k, "erf50": k} if k % 2 else
                         {"val_loss": 0.5}, history=[{"epoch": 1, "val_loss": 0.7}, {"epoch": 2, "val_loss": 0.5}],
                         params=10, q=2.0, seconds=1.0, env={"pack": k // 2, "precision": "fp32"})
        store.fail(ids[4], "t:1:x", "boom")


@pytest.mark.parametrize("history", [True, False])
def test_records_made_from_parsed_rows_equal_records_made_the_defensive_way(tmp_path, history):
    import json
    import sqlite3
    from types import MappingProxyType

    path = tmp_path / "s.sqlite"
    stored_runs(path)
    with Store(path, readonly=True) as store:
        fast = store.records(history=history)
        in_b = store.records(sweep="b", history=history)
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT *, json_array_length(history) AS n FROM runs ORDER BY rowid").fetchall()
    sweeps = {r["run_id"]: tuple(s for (s,) in con.execute("SELECT sweep FROM sweep_runs WHERE run_id = ? ORDER BY "
                                                             "rowid", (r["run_id"],))) for r in rows}
    slow = [RunRecord(config=json.loads(r["config"]), run_id=r["run_id"], config_id=r["config_id"],
                      recipe=r["recipe"], sweep=r["sweep"], sweeps=sweeps[r["run_id"]], status=r["status"],
                      params=r["params"], q=r["q"], **{m: r[m] for m in compare.METRICS}, epochs_run=r["n"],
                      seconds=r["seconds"], train_seconds=r["train_seconds"], error=r["error"],
                      attempts=r["attempts"], history=json.loads(r["history"]) if history else (),
                      env=json.loads(r["env"]) if r["env"] else {}, extra=json.loads(r["final"] or "{}"))
            for r in rows]
    assert fast == slow and [r.as_row() for r in fast] == [r.as_row() for r in slow]
    assert [vars(r) for r in fast] == [vars(r) for r in slow]  # no field more, none less
    assert [r.sweep for r in in_b] == ["b", "b"] and in_b[0].sweeps == ("a", "b")
    done = fast[0]
    assert fast[0].env is fast[1].env and fast[0].env is not fast[2].env  # a pack's environment: parsed once
    for view in (done.config, done.env, done.extra, *done.history):
        assert type(view) is MappingProxyType
        with pytest.raises(TypeError):
            view["x"] = 1
    assert fast[4].env == {} and fast[4].error == "boom" and fast[5].status == "pending"
    with pytest.raises(TypeError, match="every field"):
        RunRecord.from_parsed({"run_id": "x", "config": {}})


def test_export_rows_read_field_by_field_are_the_rows_of_as_row():
    import numpy as np

    from depthlab.results import export

    env = {"pack": "000001", "pack_size": 2, "device": "=cmd", "recipe_table": {"a": [1, 2]}}
    records = [
        RunRecord.make({"dataset": "mnist", "topology": "parallel", "width": 8, "lr": 0.1, "note": "-x",
                        "blocks": 2},
                       run_id="a", sweeps=("s", "t"), status="done", val_loss=math.nan, q=np.float64(2.5),
                       seconds=4.0, env=env, erf50=3),
        RunRecord.make({"dataset": "mnist", "topology": "sequential", "width": 8, "lr": -0.0, "note": "+y",
                        "blocks": 2},
                       run_id="b", sweeps=("s", "t"), status="diverged", val_loss=math.inf, params=np.int64(7),
                       seconds=4.0, env=env, error="@loss is nan"),
        RunRecord.make({"dataset": "cifar10", "topology": "parallel", "blocks": [1, 2]}, run_id="c", sweeps=(),
                       status="done", train_loss=0.5, env={"pack_size": 1, "extra": None}, erf50=np.float32(2.5)),
    ]
    parts = export._column_parts(records)  # the first two hold every config key, the third not
    for safe in (False, True):
        assert export._flat_rows(records, parts, safe=safe) == export._generic_rows(records, safe)
    rows = export._flat_rows(records, parts, safe=True)
    assert rows[1][export._columns(records).index("error")] == "'@loss is nan"
    assert rows[0][export._columns(records).index("val_loss")] is None  # NaN: an empty cell


# -- the epochs column (schema 8) ------------------------------------------------------------------------------


def epochs_read(store) -> dict:
    """{run id: epochs_run} as a read gives it, with and without histories."""
    with_history = {r.run_id: r.epochs_run for r in store.records()}
    assert with_history == {r.run_id: r.epochs_run for r in store.records(history=False)}
    assert with_history == {r.run_id: len(r.history) for r in store.records()}
    return with_history


def test_epochs_run_follows_the_history_through_every_write(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        a, b = store.add_runs([{"dataset": "mnist", "seed": s} for s in (0, 1)], sweep="s", recipe=2)
        assert epochs_read(store) == {a: 0, b: 0}
        store.claim([a, b], "t:1:x")
        for k in range(3):
            store.record_epoch(a, "t:1:x", {"epoch": k + 1, "train_loss": 1.0})
        store.record_epoch(b, "t:1:x", {"epoch": 1})
        assert epochs_read(store) == {a: 3, b: 1}
        store.finish(a, "t:1:x", status="done", final={"val_loss": 0.5}, history=[{"epoch": 1}] * 5, params=1,
                     q=1.0, seconds=1.0, env={})
        store.release([b], "t:1:x")  # back to pending: its history is emptied
        assert epochs_read(store) == {a: 5, b: 0}
        store.reopen([a], "again")  # pending, its last history kept until it is claimed again
        assert epochs_read(store) == {a: 5, b: 0}
        store.claim([a], "t:2:y")
        assert epochs_read(store) == {a: 0, b: 0}


def test_a_store_before_the_epochs_column_gets_it_counted(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        (rid,) = store.add_runs([{"dataset": "mnist"}], recipe=2)
        store.claim([rid], "t:1:x")
        store.finish(rid, "t:1:x", status="done", final={}, history=[{"epoch": 1}, {"epoch": 2}], params=1, q=1.0,
                     seconds=1.0, env={})
    con = sqlite3.connect(path)  # the store as schema 7 left it
    con.execute("DROP TRIGGER runs_epochs_run")
    con.execute("ALTER TABLE runs DROP COLUMN epochs_run")
    con.execute("PRAGMA user_version = 7")
    con.commit()
    con.close()
    before = path.read_bytes()
    with Store.existing(path, readonly=True) as store:  # a private migrated copy: the file stays as it was
        assert store.migrated == [8] and epochs_read(store) == {rid: 2}
    assert path.read_bytes() == before
    with Store(path) as store:
        assert store.migrated == [8] and epochs_read(store) == {rid: 2}


# -- the export's writers: a pack's environment formatted once, columns made at once ------------------------------


def export_records(tmp_path) -> list[RunRecord]:
    """Runs of two packs (the first two share one environment, as `Store.records` gives a pack's runs) and one
    alone, with cells a CSV must quote or make inert, non-finite floats, lists and a mixed column."""
    pack = {"pack": "000001", "pack_size": 2, "device": "cpu, 2 cores", "note": 'say "hi"\nbye', "host": "=cmd|x",
            "recipe_table": {"b": [1, 2.5], "a": None}, "lr": float("nan")}
    other = {"pack": "000002", "pack_size": 1, "device": "-x", "extra": [1, "a"]}
    configs = [{"dataset": "mnist", "width": 8, "note": "+1", "scale": 0.5},
               {"dataset": "mnist", "width": 8, "note": "a,b", "scale": "1/n"},
               {"dataset": "mnist", "width": [8, 16], "note": "@x", "scale": 1}]
    with Store(tmp_path / "export.sqlite") as store:
        ids = store.claim(store.add_runs(configs, sweep="s", recipe=2), "t:1:x")
        store.add_runs(configs[:2], sweep="t", recipe=2)
        for rid, env, final, error in zip(ids, (pack, pack, other), ({"val_loss": 0.5, "erf50": 3}, {}, {}),
                                          (None, None, "line\nbreak")):
            store.finish(rid, "t:1:x", status="done", final=final, history=[], params=1, q=2.5, seconds=1.0,
                         env=env, error=error)
        records = store.records()
    assert records[0].env is records[1].env and records[0].sweeps == ("s", "t")
    return records


def test_csv_rows_are_those_of_one_writer_over_whole_rows(tmp_path):
    import csv
    import io

    from depthlab.results import export

    records = export_records(tmp_path)
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(export._columns(records))
    writer.writerows(export._generic_rows(records, safe=True))
    for subset in (records, records[:1], []):
        export.write_results(subset, "csv", tmp_path / "runs.csv")
        whole = io.StringIO()
        writer = csv.writer(whole, lineterminator="\n")
        writer.writerow(export._columns(subset))
        writer.writerows(export._generic_rows(subset, safe=True))
        assert (tmp_path / "runs.csv").read_text() == whole.getvalue()
    export.write_results(records, "csv", tmp_path / "runs.csv")
    assert (tmp_path / "runs.csv").read_text() == expected.getvalue()
    assert "'=cmd|x" in expected.getvalue() and "'@x" in expected.getvalue()  # made inert, in the env too


def test_the_csv_writer_must_write_each_row_with_one_call():
    from depthlab.results.export import _Lines

    lines = _Lines(io_sink := __import__("io").StringIO(), [",x\n", ",y\n"])
    lines.write("a\n")
    with pytest.raises(RuntimeError, match="1 lines for 2 rows"):
        lines.check_done()
    lines.write("b\n")
    lines.check_done()
    assert io_sink.getvalue() == "a,x\nb,y\n"


def test_parquet_columns_are_those_of_whole_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from depthlab.results import export

    records = export_records(tmp_path)
    for subset in (records, records[:1], records[2:]):
        export.write_results(subset, "parquet", tmp_path / "runs.parquet")
        columns = export._columns(subset)
        values = list(zip(*export._generic_rows(subset, safe=False)))
        expected = pa.table({c: pa.array(export._arrow_column(list(v))) for c, v in zip(columns, values)})
        written = pq.read_table(tmp_path / "runs.parquet")
        assert written.equals(expected), (written.to_pylist(), expected.to_pylist())
