"""Schema 3: the shift_results table, its migration from older stores, and its rows (one per key, never two)."""

import sqlite3

import pytest

from depthlab.errors import DepthlabError, SpecError
from depthlab.results.store import MIGRATIONS, SCHEMA_VERSION, SHIFT_KEY, Store

ROW = dict(run_id="abc", corruption="fog", severity=5, method="tent", batch_size=16, alpha=1.0, seed=0,
           status="done", loss=0.5, accuracy=0.9, examples=100, seconds=1.5, settings={"label": "tent"}, env={})


def raw(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tables(path):
    return {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_version_3_adds_the_shift_table():
    assert SCHEMA_VERSION >= 3 and MIGRATIONS[2][0] == 3 and "shift" in MIGRATIONS[2][1]


def test_a_new_store_has_the_table_and_reopens(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    assert "shift_results" in tables(path) and raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with Store(path) as store:  # a current store with its new tables is ours
        assert store.migrated == [] and store.shift_rows() == []


def test_a_version_2_store_migrates_and_a_read_only_open_leaves_it_as_it_was(old_store):
    path = old_store
    with Store(path):
        pass
    raw(path, "DROP TABLE shift_results")
    raw(path, "DROP TABLE pack_sizes")
    for table in ("rekeyed", "studies", "costs"):  # a version 2 store has none of the later tables
        raw(path, f"DROP TABLE {table}")
    raw(path, "PRAGMA user_version = 2")
    before = path.read_bytes()
    later = list(range(3, SCHEMA_VERSION + 1))
    with Store.existing(path, readonly=True) as store:
        assert store.migrated == later and store.shift_rows() == [] and len(store.records()) == 8
    assert path.read_bytes() == before
    with Store(path) as store:
        assert store.migrated == later and len(store.records()) == 8
    assert "shift_results" in tables(path)


def test_an_unknown_table_is_still_foreign(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    raw(path, "CREATE TABLE photos (id INTEGER)")
    with pytest.raises(DepthlabError, match="not a depthlab results store"):
        Store(path)


def test_a_key_is_written_once(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        assert store.add_shift_result(ROW) is True
        assert store.add_shift_result(dict(ROW, accuracy=0.1, alpha=1)) is False  # alpha 1 and 1.0: one key
        assert store.add_shift_result(dict(ROW, batch_size=1)) is True
        rows = store.shift_rows()
        assert len(rows) == 2 and rows[0]["accuracy"] == 0.9 and rows[0]["settings"] == {"label": "tent"}
        assert store.shift_keys() == {tuple(ROW[k] for k in SHIFT_KEY),
                                      tuple(dict(ROW, batch_size=1)[k] for k in SHIFT_KEY)}
        assert store.shift_rows(["other"]) == []
        assert store.add_shift_result(dict(ROW, seed=1, status="diverged", loss=float("nan"), accuracy=None))
        assert store.shift_rows()[-1]["loss"] is None  # NaN is stored as NULL


def test_bad_rows_are_refused(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(SpecError, match="status"):
            store.add_shift_result(dict(ROW, status="running"))
        with pytest.raises(ValueError, match="needs seed"):
            store.add_shift_result({k: v for k, v in ROW.items() if k != "seed"})
        assert store.shift_rows() == []


def test_a_retrained_run_loses_the_measurements_of_its_old_weights(tmp_path):
    """#23 bug 10: a run trained again kept its old shift rows, and later `shift` calls skipped them as done."""
    with Store(tmp_path / "s.sqlite") as store:
        (rid,) = store.add_runs([dict(dataset="mnist", width=4, seed=0)], sweep="s", recipe=1)
        for attempt in range(2):
            store.claim([rid], "me:1:x")
            assert store.finish(rid, "me:1:x", status="done", final={}, history=[], params=1, q=1.0, seconds=1.0,
                                train_seconds=1.0, env={})
            if attempt == 0:
                store.add_shift_result(dict(ROW, run_id=rid))
                assert len(store.shift_rows([rid])) == 1
                store.reopen([rid], "trained again")
        assert store.shift_rows([rid]) == []
