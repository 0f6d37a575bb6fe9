"""The results store: ids, the run life cycle, and the guarantees the sweep runner relies on, tested with real
processes (concurrent claims, SIGKILL, dead owners)."""

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from depthlab.errors import DepthlabError
from depthlab.records import RECORD_FIELDS, STATUSES, RunRecord, config_id, run_id
from depthlab.spec.config import field_names
from depthlab.results.store import SCHEMA_VERSION, Store, owner_token

FINAL = dict(train_loss=0.5, val_loss=0.6, train_acc=0.8, val_acc=0.75, test_loss=0.61, test_acc=0.74)


def cfg(i, **kw):
    c = dict(dataset="synthetic", topology="sequential", blocks=2, width=8, kernel=3, lr=0.01, seed=i, epochs=3)
    c.update(kw)
    return c


def finish(store, rid, owner, status="done", **kw):
    args = dict(status=status, final=FINAL, history=[{"epoch": 0}, {"epoch": 1}], params=123, q=2.5, seconds=1.5,
                env={"torch": "2.13.0"})
    args.update(kw)
    return store.finish(rid, owner, **args)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    yield s
    s.close()


def _set(store_path, rid, **cols):
    """Edit a row behind the store's back (to fake an old heartbeat or a foreign owner)."""
    con = sqlite3.connect(store_path)
    con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in cols)} WHERE run_id = ?", (*cols.values(), rid))
    con.commit()
    con.close()


# -- ids ----------------------------------------------------------------------------------------------------------


def test_ids_are_sha256_of_canonical_json():
    c = {"width": 8, "lr": 0.1, "dataset": "mnist", "hidden": None}
    text = '{"dataset":"mnist","hidden":null,"lr":0.1,"width":8}'
    assert config_id(c) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert config_id(dict(reversed(list(c.items())))) == config_id(c)  # key order does not matter
    assert len(config_id(c)) == 16 and int(config_id(c), 16) >= 0
    assert config_id({"lr": 1.0}) != config_id({"lr": 1})  # floats as repr: 1.0 is not 1
    assert config_id({"lr": 1e-3}) == hashlib.sha256(b'{"lr":0.001}').hexdigest()[:16]
    # a run is a config trained by a recipe
    assert run_id(c, 1) == hashlib.sha256(('{"config":' + text + ',"recipe":1}').encode()).hexdigest()[:16]
    assert run_id(c, 2) != run_id(c, 1) and run_id(dict(reversed(list(c.items()))), 1) == run_id(c, 1)
    with pytest.raises(ValueError):
        run_id(c, 0)


def test_record_keys_never_shadow_config_fields():
    assert not set(RECORD_FIELDS) & set(field_names())


def test_a_hand_made_record_and_its_flat_view():
    """`make` sets result fields by name and keeps any other name as an extra metric; the flat view holds the
    config fields, then the result fields, then the extra metrics that none of those hides."""
    rec = RunRecord.make({"topology": "parallel", "epochs": 3}, status="done", val_loss=0.5, sweeps=["a"],
                         env={"amp": "off", "pack_size": 4}, erf50=2.0, epochs=9)
    assert (rec.status, rec.val_loss, rec.sweeps, rec.extra) == ("done", 0.5, ("a",), {"erf50": 2.0, "epochs": 9})
    assert rec.metric("val_loss") == 0.5 and rec.metric("erf50") == 2.0 and rec.metric("erf90") is None
    assert rec.finished and rec.precision == "fp32" and rec.pack_size == 4  # amp "off": an fp32 run of before
    row = rec.as_row()
    assert list(row)[:2] == ["topology", "epochs"] and row["epochs"] == 3  # the config's planned epochs win
    assert row["erf50"] == 2.0 and row["sweeps"] == ["a"] and row["env"] == {"amp": "off", "pack_size": 4}
    assert [k for k in row if k in RECORD_FIELDS] == [k for k in RECORD_FIELDS if k != "config"]
    json.dumps(row, allow_nan=False)
    assert not RunRecord.make(status="pending").finished and RunRecord().precision is None


def test_owner_token_names_host_and_pid():
    host, pid, token = owner_token().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid() and len(token) == 8
    assert owner_token() != owner_token()


# -- life cycle ---------------------------------------------------------------------------------------------------


def test_add_runs_is_idempotent_and_keeps_order(store):
    configs = [cfg(i) for i in range(5)]
    ids = store.add_runs(configs, sweep="a", recipe=1)
    assert ids == [run_id(c, 1) for c in configs]
    assert store.add_runs(configs[::-1], sweep="b", recipe=1) == ids[::-1]
    assert store.counts() == {"pending": 5, "running": 0, "done": 0, "diverged": 0, "failed": 0}
    assert [r.run_id for r in store.records()] == ids
    assert {r.sweep for r in store.records()} == {"a"}  # a run's own sweep is the first that added it
    assert store.counts(sweep="b") == {**dict.fromkeys(STATUSES, 0), "pending": 5}  # and b lists them too
    assert store.sweeps() == ["a", "b"]


def test_full_life_cycle_and_records(store):
    configs = [cfg(0), cfg(1, topology="parallel", epochs=5)]
    a, b = store.add_runs(configs, sweep="s1", recipe=1)
    me = owner_token()
    assert store.claim([a, b], me) == [a, b]
    assert store.claim([a, b], "other:1:x") == []
    assert store.record_epoch(a, me, {"epoch": 0, "train_loss": float("nan")})
    assert store.record_epoch(a, me, {"epoch": 1, "train_loss": 0.4})
    assert not store.record_epoch(a, "other:1:x", {"epoch": 2})
    running = store.records(status="running")
    assert [r.epochs_run for r in running] == [2, 0]
    assert list(running[0].history) == [{"epoch": 0, "train_loss": None}, {"epoch": 1, "train_loss": 0.4}]

    final = dict(FINAL, val_loss=float("nan"), test_loss=None, test_acc=float("inf"), best_epoch=1)
    assert finish(store, a, me, final=final)
    assert not finish(store, a, me)  # not running any more
    assert store.fail(b, me, "CUDA error: boom")

    ra, rb = store.records()
    assert isinstance(ra, RunRecord) and ra.status == "done" and ra.config == configs[0]
    row = ra.as_row()
    for k, v in configs[0].items():
        assert row[k] == v  # in the flat view, no result field shadows a config field
    assert (ra.run_id, ra.sweep, ra.params, ra.q, ra.seconds) == (a, "s1", 123, 2.5, 1.5)
    assert ra.train_loss == 0.5 and ra.val_loss is None and ra.test_loss is None and ra.test_acc is None
    assert ra.extra == {"best_epoch": 1} and row["best_epoch"] == 1  # extra final metrics are kept
    assert ra.epochs_run == 2 and list(ra.history) == [{"epoch": 0}, {"epoch": 1}]  # finish's history is kept
    assert ra.recipe == 1 and ra.config_id == config_id(configs[0]) and ra.sweeps == ("s1",)
    assert ra.env == {"torch": "2.13.0"} and ra.error is None and ra.attempts == 1
    assert rb.status == "failed" and rb.error == "CUDA error: boom" and rb.epochs_run == 0
    assert rb.config["epochs"] == 5  # the planned epochs stay in the config
    assert store.counts() == {"pending": 0, "running": 0, "done": 1, "diverged": 0, "failed": 1}
    assert [r.run_id for r in store.records(status="failed")] == [b]
    assert store.records(status=["done", "failed"], sweep="s1") == [ra, rb]
    json.dumps([r.as_row() for r in store.records()], allow_nan=False)  # strict JSON throughout


def test_records_are_frozen(store):
    """A record handed to several analyses cannot be changed by one of them: not its fields, not its config,
    env, extra metrics or history."""
    (a,) = store.add_runs([cfg(0)], recipe=1)
    store.claim([a], "me:1:x")
    assert finish(store, a, "me:1:x", final=dict(FINAL, best_epoch=1))
    (r,) = store.records()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = "failed"
    for mapping in (r.config, r.env, r.extra, r.history[0]):
        with pytest.raises(TypeError):
            mapping["x"] = 1
    assert store.records() == [r]


def test_finish_only_by_the_running_owner(store):
    (a,) = store.add_runs([cfg(0)], recipe=1)
    assert not finish(store, a, "me:1:x")  # pending
    store.claim([a], "me:1:x")
    assert not finish(store, a, "thief:2:y")
    assert not store.fail(a, "thief:2:y", "no")
    assert store.counts()["running"] == 1
    with pytest.raises(ValueError, match="status"):
        finish(store, a, "me:1:x", status="pending")
    assert finish(store, a, "me:1:x", status="diverged", final=dict.fromkeys(FINAL, float("nan")))
    (r,) = store.records(status="diverged")
    assert all(r.metric(k) is None for k in FINAL)


def test_release_heartbeat_and_reclaim_attempts(store, tmp_path):
    ids = store.add_runs([cfg(i) for i in range(3)], recipe=1)
    me = owner_token()
    store.claim(ids, me)
    store.record_epoch(ids[0], me, {"epoch": 0})
    store.release(ids[:2], "someone:else:1")  # not theirs: no effect
    assert store.counts()["running"] == 3
    store.release(ids[:2], me)
    assert store.counts() == {"pending": 2, "running": 1, "done": 0, "diverged": 0, "failed": 0}
    assert store.claim(ids, me) == ids[:2]
    recs = {r.run_id: r for r in store.records()}
    assert recs[ids[0]].attempts == 2 and recs[ids[0]].history == ()  # a new attempt starts afresh
    _set(tmp_path / "s.sqlite", ids[2], heartbeat_at=0.0)
    store.heartbeat(ids, me)
    beats = {r["run_id"]: r["heartbeat_at"] for r in store.running()}
    assert all(b > time.time() - 60 for b in beats.values())
    assert {r["owner"] for r in store.running()} == {me}
    with pytest.raises(DepthlabError, match="status"):
        store.records(status="finished")


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("this is not sqlite " * 100)
    with pytest.raises(DepthlabError, match="notes.sqlite"):
        Store(bad)


def test_wal_mode(store):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000


@pytest.mark.parametrize("schema", ["CREATE TABLE photos (id INTEGER, path TEXT)",
                                    "CREATE TABLE runs (id INTEGER, name TEXT)",
                                    # the columns an older check looked for, but not all of a store's
                                    "CREATE TABLE runs (run_id TEXT, config TEXT, status TEXT, history TEXT, "
                                    "final TEXT, train_loss REAL, val_loss REAL, train_acc REAL, val_acc REAL, "
                                    "test_loss REAL, test_acc REAL)"])
def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path, schema):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute(schema)
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(DepthlabError, match="not a depthlab results store"):
        Store(path)
    assert path.read_bytes() == before  # no table added, journal mode unchanged
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_existing_refuses_a_missing_file_and_reopens_a_store(tmp_path):
    with pytest.raises(DepthlabError, match="no results store"):
        Store.existing(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()
    with Store(tmp_path / "s.sqlite") as s:
        s.add_runs([cfg(1)], recipe=1)
    with Store.existing(tmp_path / "s.sqlite") as s:  # a store that exists (with runs) is ours
        assert s.counts()["pending"] == 1


def test_a_run_shared_by_two_sweeps_belongs_to_both_and_is_stored_once(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        first = s.add_runs([cfg(1), cfg(2)], sweep="first", recipe=1)
        second = s.add_runs([cfg(2), cfg(3)], sweep="second", recipe=1)  # cfg(2) is in both
        assert first[1] == second[0]
        owner = owner_token()
        s.claim([first[1]], owner)
        finish(s, first[1], owner)
        assert s.sweeps() == ["first", "second"]
        assert [r.config["seed"] for r in s.records(sweep="second")] == [2, 3]
        assert {r.sweep for r in s.records(sweep="second")} == {"second"}
        assert s.counts("second")["done"] == 1 and s.counts("first")["done"] == 1
        assert sum(s.counts().values()) == 3  # stored and trained once


# -- schema versions and migrations -------------------------------------------------------------------------------

def raw(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_an_old_store_migrates_once_and_keeps_every_run(old_store, tmp_path):
    path = old_store
    before = {r[0]: r[1:] for r in raw(path, "SELECT run_id, status, val_loss, history, sweep FROM runs")}
    assert raw(path, "PRAGMA user_version") == [(0,)] and len(before) == 8
    with Store(path) as store:
        assert store.migrated == list(range(1, SCHEMA_VERSION + 1)) and store.schema_version == SCHEMA_VERSION
        records = store.records()
        assert store.sweeps() == ["fixture", "fixture-b"]
        assert store.counts("fixture-b") == {**dict.fromkeys(STATUSES, 0), "done": 3, "pending": 1}
    # every run kept, with its result, re-keyed by (config with the fields added since, recipe 1)
    assert len(records) == 8
    old = list(before.values())
    assert [(r.status, r.val_loss, json.dumps(r.as_row()["history"], separators=(",", ":"))) for r in records] == \
        [(s, v, h) for s, v, h, _ in old]
    for rec in records:
        assert rec.recipe == 1 and rec.config["skip"] is True and rec.config["init_from"] is None
        assert rec.run_id == run_id(rec.config, 1) and rec.config_id == config_id(rec.config)
    # the saved weights follow their runs
    weights = sorted(p.stem for p in (tmp_path / "store.sqlite.weights").glob("*.pt"))
    assert weights == sorted(r.run_id for r in records if r.sweep == "fixture")
    with Store(path) as store:  # once: the second open migrates nothing
        assert store.migrated == [] and len(store.records()) == 8


def test_a_store_from_before_shared_sweeps_gets_its_links(old_store):
    path = old_store
    raw(path, "DROP TABLE sweep_runs")
    with Store(path) as store:
        assert store.sweeps() == ["fixture", "fixture-b"]
        # the runs first added by fixture-b
        assert [r.config["seed"] for r in store.records(sweep="fixture-b")] == [2, 2]


def test_a_store_of_a_newer_depthlab_is_refused_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    raw(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(DepthlabError, match="newer depthlab"):
        Store(path)
    assert path.read_bytes() == before


def test_read_only_opens_change_nothing(old_store, tmp_path):
    path = old_store
    before = path.read_bytes()
    with Store.existing(path, readonly=True) as store:  # an old store is migrated in memory only
        assert len(store.records()) == 8 and store.migrated == list(range(1, SCHEMA_VERSION + 1))
        with pytest.raises(sqlite3.OperationalError):
            store.add_runs([cfg(0)], recipe=1)
    assert path.read_bytes() == before
    # a file the user cannot write is still readable
    new = tmp_path / "new.sqlite"
    with Store(new) as store:
        store.add_runs([cfg(1)], recipe=1)
    os.chmod(new, 0o444)
    try:
        with Store.existing(new, readonly=True) as store:
            assert store.counts()["pending"] == 1
    finally:
        os.chmod(new, 0o644)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(DepthlabError, match="empty file"):  # a read does not turn an empty file into a store
        Store.existing(empty, readonly=True)
    assert empty.stat().st_size == 0


@pytest.mark.parametrize("path", ["", ":memory:", "file:x?mode=memory"])
def test_a_store_must_be_a_file(path):
    with pytest.raises(DepthlabError, match="must be a file path"):
        Store(path)


def test_store_paths_that_cannot_be_files(tmp_path):
    with pytest.raises(DepthlabError, match="is a directory"):
        Store(tmp_path)
    with pytest.raises(DepthlabError, match="does not exist"):
        Store(tmp_path / "missing" / "s.sqlite")


# -- dead owners --------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: the pid names no process now
    return proc.pid


def test_reclaim_stale(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path, stale_after=600)
    host = socket.gethostname()
    ids = store.add_runs([cfg(i) for i in range(6)], recipe=1)
    ids = ids + store.add_runs([cfg(i) for i in range(6, 8)], recipe=1)
    owners = {
        ids[0]: f"{host}:{dead_pid()}:aa",  # this host, dead pid -> reclaimed
        ids[1]: owner_token(),  # this process, alive, fresh heartbeat -> kept
        ids[2]: "elsewhere-node-7:4242:cc",  # other host, stale heartbeat -> reclaimed
        ids[3]: "elsewhere-node-7:4243:dd",  # other host, fresh heartbeat -> kept
        ids[4]: "garbage-owner",  # unparseable, stale -> reclaimed
        ids[5]: f"{host}:{dead_pid()}:ee",  # finished by a dead owner -> never reset
        ids[6]: f"{host}:1:ff",  # pid 1 is alive (reused by another process), heartbeat a day old -> reclaimed
        ids[7]: f"{host}:1:gg",  # pid 1 alive, fresh heartbeat: a live runner -> kept
    }
    for rid, owner in owners.items():
        assert store.claim([rid], owner) == [rid]
    assert finish(store, ids[5], owners[ids[5]])
    assert store.record_epoch(ids[0], owners[ids[0]], {"epoch": 1, "train_loss": 0.5})
    for rid in (ids[2], ids[4]):
        _set(path, rid, heartbeat_at=time.time() - 10_000)
    _set(path, ids[6], heartbeat_at=time.time() - 86_400)
    dead = {r["run_id"]: r["owner_dead"] for r in store.running()}  # what `depthlab status` shows
    assert [dead[i] for i in ids if i != ids[5]] == [True, False, True, False, True, True, False]
    assert store.reclaim_stale() == 4
    status = {r.run_id: r.status for r in store.records()}
    assert [status[i] for i in ids] == ["pending", "running", "pending", "running", "pending", "done", "pending",
                                        "running"]
    assert {r.run_id: r.history for r in store.records()}[ids[0]] == ()  # no stale partial history
    assert store.reclaim_stale() == 0
    # a reclaimed run can be claimed again, and its attempts show it
    assert store.claim([ids[0]], owner_token()) == [ids[0]]
    assert {r.run_id: r.attempts for r in store.records()}[ids[0]] == 2
    store.close()


# -- concurrency and crashes (real processes) ---------------------------------------------------------------------


def _claim_worker(path, ids, rounds, barrier, out):
    """Claim `ids` a few at a time; in every round but the last give them back. Report the claims per round."""
    store = Store(path)
    owner = owner_token()
    per_round = []
    barrier.wait()  # start together, so the two processes really contend
    for r in range(rounds):
        got = []
        for i in range(0, len(ids), 3):
            got += store.claim(ids[i:i + 3], owner)
        if r < rounds - 1:
            store.release(got, owner)
        per_round.append(got)
    store.close()
    out.put((owner, per_round))


def test_concurrent_claims_never_overlap(tmp_path):
    path = str(tmp_path / "s.sqlite")
    store = Store(path)
    ids = store.add_runs([cfg(i) for i in range(300)], recipe=1)
    ctx = mp.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(2)
    # both start on the same 200 ids in the same order, so the two processes race for the same rows at once
    lists = [ids[:250], ids[:200] + ids[250:]]
    procs = [ctx.Process(target=_claim_worker, args=(path, lst, 4, barrier, out)) for lst in lists]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # after the last round (no release) every id is held once: the two final claim lists are disjoint, cover all
    # ids, and agree with the owners the store names
    finals = {owner: rounds[-1] for owner, rounds in results.items()}
    a, b = finals.values()
    assert not set(a) & set(b), "an id was claimed by both processes"
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert set(a) | set(b) == set(ids)
    assert {r["run_id"]: r["owner"] for r in store.running()} == {i: o for o, got in finals.items() for i in got}
    # every claim the processes saw is one the store counted, and no other
    handed = {}
    for rounds in results.values():
        for got in rounds:
            for i in got:
                handed[i] = handed.get(i, 0) + 1
    assert {r.run_id: r.attempts for r in store.records()} == handed
    store.close()


def _finish_forever(path, ids):
    """Claim and finish runs one by one until killed."""
    store = Store(path)
    owner = owner_token()
    for rid in ids:
        if store.claim([rid], owner):
            store.record_epoch(rid, owner, {"epoch": 0})
            finish(store, rid, owner)
    time.sleep(60)


def test_sigkill_loses_nothing_finished(tmp_path):
    path = str(tmp_path / "s.sqlite")
    store = Store(path)
    ids = store.add_runs([cfg(i) for i in range(2000)], recipe=1)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_finish_forever, args=(path, ids))
    proc.start()
    deadline = time.time() + 30
    while store.counts()["done"] < 20 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-flight: between, or inside, transactions
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    done_before = {r.run_id for r in store.records(status="done")}
    assert len(done_before) >= 20
    reopened = Store(path)
    assert reopened._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = reopened.records(status="done")
    assert {r.run_id for r in done} >= done_before
    assert all(r.val_loss == FINAL["val_loss"] and r.epochs_run == 2 for r in done)  # each finish is whole
    assert reopened.reclaim_stale() <= 1  # at most the one it had claimed but not finished
    assert reopened.counts()["running"] == 0
    counts = reopened.counts()
    assert counts["pending"] + counts["done"] == len(ids)
    reopened.close()
    store.close()


def test_a_dead_process_with_our_pid_is_reclaimed(tmp_path):
    """An earlier process that had this pid (a restarted container) died holding a claim: reclaim it."""
    store = Store(tmp_path / "s.sqlite")
    ids = store.add_runs([cfg(0), cfg(1)], recipe=1)
    store.claim([ids[0]], f"{socket.gethostname()}:{os.getpid()}:0ld0ld00")
    store.claim([ids[1]], owner_token())
    assert store.reclaim_stale() == 1
    assert {r.run_id: r.status for r in store.records()} == {ids[0]: "pending", ids[1]: "running"}


def test_retry_puts_failed_runs_back(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    ids = store.add_runs([cfg(0), cfg(1)], recipe=1)
    owner = owner_token()
    store.claim(ids, owner)
    store.fail(ids[0], owner, "boom")
    assert finish(store, ids[1], owner)
    assert store.retry(ids) == 1
    assert [r.status for r in store.records()] == ["pending", "done"]


def test_records_of_given_runs(store):
    ids = store.add_runs([cfg(i) for i in range(4)], sweep="a", recipe=1)
    assert [r.run_id for r in store.records(run_ids=[ids[2], ids[0]])] == [ids[0], ids[2]]  # insertion order
    assert store.records(run_ids=[]) == [] and store.records(run_ids=["nope"]) == []
    assert [r.run_id for r in store.records(run_ids=ids[1:], status="pending", sweep="a")] == ids[1:]


def test_opening_a_store_while_a_peer_creates_it_reads_one_snapshot(tmp_path, monkeypatch):
    """A runner polling a store that another `depthlab run` is still creating: the peer committed schema 1, and
    commits the other migrations between the opener's reads of the schema version and of the tables. Read apart,
    the newer tables looked foreign to schema 1 ("not a depthlab results store")."""
    from depthlab.results import store as store_module

    path = tmp_path / "s.sqlite"
    peer = sqlite3.connect(path, isolation_level=None)
    peer.execute("PRAGMA journal_mode = WAL")

    def migrate(steps):
        for version, _, step in steps:
            peer.execute("BEGIN IMMEDIATE")
            step(peer, str(path))
            peer.execute(f"PRAGMA user_version = {version}")
            peer.execute("COMMIT")

    migrate(store_module.MIGRATIONS[:1])
    connect = Store._connect

    def interleaved(self):
        conn = connect(self)

        def trace(sql):
            if "sqlite_master" in sql and peer.execute("PRAGMA user_version").fetchone()[0] == 1:
                migrate(store_module.MIGRATIONS[1:])  # the peer finishes while this opener reads
        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(Store, "_connect", interleaved)
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    peer.close()


def test_sweep_memberships_are_indexed_by_run(tmp_path):
    """#23: every read lists each run's sweeps; without an index by run that was quadratic in the store's size
    (bench/store_scale.py: 13.6 s against 0.38 s for 10,000 runs)."""
    import sqlite3

    Store(tmp_path / "s.sqlite").close()
    con = sqlite3.connect(tmp_path / "s.sqlite")
    plan = " ".join(r[-1] for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT sweep FROM sweep_runs WHERE run_id = 'x'").fetchall())
    con.close()
    assert "sweep_runs_by_run" in plan


def test_records_without_history_count_its_epochs_and_leave_the_collector_as_it_was(store):
    """#23: the read commands that draw no curves read records without their per-epoch history (most of a run's
    row); everything else is the same record."""
    import gc

    ids = store.add_runs([cfg(0), cfg(1)], sweep="s", recipe=1)
    store.claim(ids, "me:1:x")
    assert finish(store, ids[0], "me:1:x", history=[{"epoch": e, "val_loss": 0.5} for e in range(3)])
    full, lean = store.records(), store.records(history=False)
    assert [r.epochs_run for r in lean] == [3, 0] and [len(r.history) for r in full] == [3, 0]
    assert all(r.history == () for r in lean)
    assert [dataclasses.replace(r, history=()) for r in full] == lean
    assert gc.isenabled()
    gc.disable()
    try:
        store.records()
        assert not gc.isenabled()  # paused while records are made, restored as it was
    finally:
        gc.enable()
