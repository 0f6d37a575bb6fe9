"""Exporting store records as a flat table."""

import csv
import io
import json
import sys

import pytest

from depthlab.errors import DepthlabError, SpecError
from depthlab.records import RECORD_FIELDS, RunRecord
from depthlab.results.export import PACK_FIELDS, RESULT_FIELDS, flat_table, varied_fields, write_results
from depthlab.results.store import Store


def rec(**kw):
    """A record whose config and result fields are given alike (a name of RECORD_FIELDS is a result field)."""
    config = dict(dataset="mnist", topology="sequential", blocks=2, width=8, kernel=3, head="gap",
                  residual_scale="1", seed=0, epochs=3)
    results = dict(run_id="r", params=10, q=1.5, status="done", train_loss=0.1, val_loss=0.2, train_acc=0.9,
                   val_acc=0.8, test_loss=None, test_acc=None, seconds=1.0, history=[], env={}, error=None,
                   attempts=1, sweep="")
    for key, value in kw.items():
        (results if key in RECORD_FIELDS else config)[key] = value
    return RunRecord.make(config, **results)


RECORDS = [
    rec(run_id="a"),
    rec(run_id="b", topology="parallel", residual_scale=0.5, val_loss=float("nan")),
    rec(run_id="c", seed=1, residual_scale="1/n", extra_flag=True),
]


def test_varied_fields():
    # result fields (status, losses, ...) are not config; a key missing somewhere counts as varied
    assert varied_fields(RECORDS) == ["extra_flag", "residual_scale", "seed", "topology"]
    assert varied_fields(RECORDS[:1]) == []
    assert varied_fields([]) == []


CONFIG = ["epochs", "extra_flag", "head", "residual_scale", "seed"]  # every config key not already a result column, sorted


def test_flat_table_columns_and_values():
    rows = flat_table(RECORDS)
    assert list(rows[0]) == RESULT_FIELDS + PACK_FIELDS + CONFIG  # constant ones (head) too
    assert rows[1]["val_loss"] is None  # NaN -> None
    assert [r["residual_scale"] for r in rows] == ["1", 0.5, "1/n"]
    assert [r["extra_flag"] for r in rows] == [None, None, True]
    assert flat_table([]) == []


def test_csv_to_file_and_json_to_stdout(tmp_path, capsys):
    out = tmp_path / "runs.csv"
    assert write_results(RECORDS, "csv", out) == 3
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RESULT_FIELDS + PACK_FIELDS + CONFIG
    assert rows[0]["train_loss"] == "0.1" and rows[1]["val_loss"] == "" and rows[2]["residual_scale"] == "1/n"

    write_results(RECORDS, "json", "-")
    data = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in data] == ["a", "b", "c"] and data[1]["val_loss"] is None


def test_parquet_round_trip_with_mixed_types(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "runs.parquet"
    write_results(RECORDS, "parquet", out)
    table = pq.read_table(out).to_pylist()
    assert [r["run_id"] for r in table] == ["a", "b", "c"]
    assert [r["residual_scale"] for r in table] == ["1", "0.5", "1/n"]  # a mixed column is stored as text
    assert table[0]["q"] == 1.5 and table[1]["val_loss"] is None and table[0]["test_acc"] is None


def test_parquet_errors(tmp_path, monkeypatch):
    with pytest.raises(DepthlabError, match="needs a file"):
        write_results(RECORDS, "parquet", "-")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(DepthlabError, match="pip install 'depthlab\\[parquet\\]'"):
        write_results(RECORDS, "parquet", tmp_path / "x.parquet")


def test_bad_format_and_bad_path(tmp_path):
    with pytest.raises(SpecError, match="format: got 'xlsx'; allowed: csv, json, parquet"):
        write_results(RECORDS, "xlsx", "-")
    with pytest.raises(DepthlabError, match="cannot write"):
        write_results(RECORDS, "csv", tmp_path / "missing" / "dir" / "x.csv")


def test_records_from_a_store(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    configs = [dict(dataset="mnist", topology=t, blocks=4, width=8, kernel=3, epochs=5, seed=0)
               for t in ("sequential", "parallel")]
    a, b = store.add_runs(configs, sweep="s1", recipe=1)
    store.add_runs(configs[:1], sweep="s2", recipe=1)
    store.claim([a, b], "me:1:x")
    store.finish(a, "me:1:x", status="done", final=dict(val_loss=0.3), history=[{}, {}], params=99, q=4.0,
                 seconds=2.0, train_seconds=1.5, env={})
    store.release([b], "me:1:x")
    store.claim([b], "me:1:x")
    store.fail(b, "me:1:x", "boom")
    rows = flat_table(store.records())
    store.close()
    assert list(rows[0]) == RESULT_FIELDS + PACK_FIELDS + ["epochs", "seed"]  # constant config keys too
    assert rows[0]["epochs_run"] == 2 and rows[1]["epochs_run"] == 0  # recorded epochs, not the planned 5
    assert rows[0]["sweeps"] == "s1; s2" and rows[1]["sweeps"] == "s1"  # every sweep that lists the run
    assert rows[0]["recipe"] == 1 and rows[0]["train_seconds"] == 1.5 and rows[0]["seconds"] == 2.0
    assert rows[1]["error"] == "boom" and rows[0]["error"] is None
    assert (rows[0]["status"], rows[0]["params"], rows[0]["val_loss"]) == ("done", 99, 0.3)
    assert rows[1]["status"] == "failed" and rows[1]["val_loss"] is None
    buf = io.StringIO()
    csv.writer(buf).writerow(rows[0].values())  # plain scalars only


def test_the_export_keeps_packs_measurements_and_environment():
    """A pack's time is shared: each run's share adds up to the pack's time once (#24 honest cost)."""
    pack = dict(env={"pack": "p1", "pack_size": 2, "precision": "bf16"}, seconds=8.0, train_seconds=6.0)
    rows = flat_table([rec(run_id="a", **pack), rec(run_id="b", seed=1, erf50=7, **pack)])
    assert [r["pack"] for r in rows] == ["p1", "p1"] and sum(r["pack_seconds"] for r in rows) == 8.0
    assert rows[0]["pack_train_seconds"] == 3.0 and rows[0]["env.precision"] == "bf16"
    assert rows[1]["erf50"] == 7 and rows[0]["erf50"] is None  # an extra measurement gets its column


def test_history_rows_and_formula_cells(tmp_path):
    records = [rec(run_id="a", history=[{"val_loss": 0.5}, {"val_loss": 0.4}]), rec(run_id="=cmd|x", seed=1,
                                                                                     history=[{"val_loss": 0.7}])]
    out = tmp_path / "h.csv"
    assert write_results(records, "csv", out, history=True) == 3
    rows = list(csv.DictReader(open(out, newline="")))
    assert [(r["run_id"], r["epoch"], r["val_loss"]) for r in rows] == [("a", "1", "0.5"), ("a", "2", "0.4"),
                                                                         ("'=cmd|x", "1", "0.7")]
