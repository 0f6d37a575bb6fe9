"""The sweep runner against a real store and real `depthlab run` processes: resume after SIGKILL, concurrency."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from depthlab.cli.main import main
from depthlab.sweep.runner import run_sweep
from depthlab.sweep.spec import SweepSpec
from depthlab.sweep.store import Store

SPEC = {"name": "tiny", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 256,
                                     "test_subset": 64, "width": 4, "stem_stride": 2,
                                     "batch_size": 32, "epochs": 2},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2]}}


def write_spec(tmp_path, **changes):
    spec = json.loads(json.dumps(SPEC))
    spec["defaults"].update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def depthlab(*args):
    return [sys.executable, "-m", "depthlab.cli.main", *map(str, args)]


def finished(store_path):
    store = Store(store_path)
    try:
        return [r for r in store.records() if r["status"] in ("done", "diverged", "failed")]
    finally:
        store.close()


def test_run_in_process_then_nothing_left(tmp_path):
    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    summary = run_sweep(spec, store, device="cpu", progress=False)
    assert summary["trained"]["done"] == 6 and summary["counts"]["done"] == 6
    again = run_sweep(spec, store, device="cpu", progress=False)
    assert sum(again["trained"].values()) == 0
    records = Store(store).records()
    assert all(r["params"] > 0 and r["q"] > 0 and r["env"]["torch"] and len(r["history"]) == 2 for r in records)


def test_dry_run_trains_nothing(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--dry-run", "--max-pack", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "4 packs" in out and "nothing trained" in out
    assert not store.exists()


def test_set_overrides_fields_of_every_run(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--set", "width=2", "--set", "seed=[0]",
                 "--quiet", "--no-compare"]) == 0
    assert "sweep tiny[width=2,seed=[0]]: trained 2 runs" in capsys.readouterr().out
    records = Store(store).records()
    assert {(r["width"], r["seed"], r["sweep"]) for r in records} == {(2, 0, "tiny[width=2,seed=[0]]")}


def test_a_spec_without_runs_is_an_error(tmp_path, capsys):
    spec = dict(SPEC, exclude=[{"dataset": "synthetic"}])
    path = tmp_path / "none.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--store", str(tmp_path / "s.sqlite"), "--quiet"]) != 0
    assert "has no runs" in capsys.readouterr().err


def test_limit_trains_at_most_n(tmp_path):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--limit", "2", "--max-pack", "1",
                 "--quiet", "--no-compare"]) == 0
    assert len(finished(store)) == 2


def run_until_two_finished(spec, store, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """A real `depthlab run` (packs of one, 6 runs), returned once 2 of its runs are finished."""
    proc = subprocess.Popen(depthlab("run", spec, "--store", store, "--max-pack", "1", "--quiet", "--no-compare"),
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not store.exists() or len(finished(store)) < 2):
        time.sleep(0.2)
    return proc


def test_resume_after_sigkill_trains_every_run_exactly_once(tmp_path):
    spec = write_spec(tmp_path, epochs=3)
    store = tmp_path / "s.sqlite"
    proc = run_until_two_finished(spec, store)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["run_id"]: r for r in finished(store)}
    assert 2 <= len(before) < 6, "the kill should land mid-sweep"
    subprocess.run(depthlab("run", spec, "--store", store, "--quiet", "--no-compare"), check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    after = {r["run_id"]: r for r in Store(store).records()}
    assert len(after) == 6 and all(r["status"] == "done" for r in after.values())
    for rid, record in before.items():  # finished before the kill: kept, never trained again
        assert after[rid]["seconds"] == record["seconds"] and after[rid]["attempts"] == 1
    assert any(r["attempts"] == 2 for r in after.values()) or len(before) == 6


def test_sigterm_releases_the_held_runs_and_keeps_the_finished(tmp_path):
    spec = write_spec(tmp_path, epochs=3)
    store = tmp_path / "s.sqlite"
    proc = run_until_two_finished(spec, store, stderr=subprocess.PIPE)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated; everything finished so far is saved" in err.decode()
    records = Store(store).records()
    done = [r for r in records if r["status"] == "done"]
    assert 2 <= len(done) < 6, "the signal should land mid-sweep"
    # nothing is left 'running' for a reclaim to find: the runner put its claims back itself
    assert {r["status"] for r in records} == {"done", "pending"}


def test_two_runners_never_train_the_same_run(tmp_path):
    spec = write_spec(tmp_path)
    store = tmp_path / "s.sqlite"
    Store(store).close()  # both start against an existing store
    procs = [subprocess.Popen(depthlab("run", spec, "--store", store, "--max-pack", "1", "--quiet",
                                       "--no-compare"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    records = Store(store).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    assert all(r["attempts"] == 1 for r in records)  # each claimed (hence trained) exactly once
    owners = {r["env"]["host"] for r in records}
    assert len(owners) == 1


def test_cli_run_prints_comparison(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained 6 runs" in out and "parallel" in out and "Q band" in out


def test_missing_dataset_stops_with_clear_error_and_keeps_runs_pending(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("DEPTHLAB_CIFAR10_URL", "http://127.0.0.1:9/none.tar.gz")
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path, dataset="cifar10")), "--store", str(store), "--quiet"]) == 2
    assert "cifar" in capsys.readouterr().err.lower()
    assert Store(store).counts()["pending"] == 6


def test_failed_runs_are_retried_on_request(tmp_path, monkeypatch):
    from depthlab.sweep import engine

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    real = engine.train_pack
    monkeypatch.setattr(engine, "train_pack", lambda *a, **k: (_ for _ in ()).throw(ValueError("broken")))
    summary = run_sweep(spec, store, device="cpu", progress=False, max_pack=3)
    assert summary["counts"]["failed"] == 6
    assert "broken" in Store(store).records()[0]["error"]
    monkeypatch.setattr(engine, "train_pack", real)
    assert sum(run_sweep(spec, store, device="cpu", progress=False)["trained"].values()) == 0  # failed stays
    summary = run_sweep(spec, store, device="cpu", progress=False, retry_failed=True)
    assert summary["counts"]["done"] == 6


def test_a_broken_device_stops_the_sweep_and_keeps_runs_pending(tmp_path, monkeypatch):
    from depthlab.sweep import engine

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine, "train_pack", broken)
    store = tmp_path / "s.sqlite"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_sweep(SweepSpec.from_dict(SPEC), store, device="cpu", progress=False)
    assert Store(store).counts()["pending"] == 6


def test_heartbeat_thread_keeps_claims_fresh(tmp_path):
    from depthlab.sweep.runner import Heartbeat
    from depthlab.sweep.store import owner_token

    store = Store(tmp_path / "s.sqlite")
    ids = store.add_runs([{"a": 1}])
    owner = owner_token()
    store.claim(ids, owner)
    before = store.running()[0]
    beat = Heartbeat(store, owner, every=0.05)
    beat.ids = ids
    time.sleep(0.3)
    beat.stop()
    after = store.running()[0]
    key = next(k for k in after if "heartbeat" in k)
    assert after[key] > before[key]
