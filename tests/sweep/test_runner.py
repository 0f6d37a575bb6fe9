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
from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

# the runs train with `--precision auto`: as on either kind of CPU (tests/conftest.py)
pytestmark = pytest.mark.auto_precision

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
        return [r for r in store.records() if r.status in ("done", "diverged", "failed")]
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
    assert all(r.params > 0 and r.q > 0 and r.env["torch"] and len(r.history) == 2 for r in records)


def test_dry_run_trains_nothing(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--dry-run", "--max-pack", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "4 packs" in out and "nothing trained" in out
    assert not store.exists()


def test_precision_is_a_recorded_choice_not_part_of_a_runs_identity(tmp_path, capsys, monkeypatch):
    """--precision fp32 / bf16 are recorded per run; auto follows the CPU's native bf16; a finished run is not
    trained again in another precision; --no-complexity is recorded."""
    from depthlab import precision

    store, spec = tmp_path / "s.sqlite", str(write_spec(tmp_path))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert main(["run", spec, "--store", str(store), "--dry-run"]) == 0
    assert "in fp32" in capsys.readouterr().out
    assert main(["run", spec, "--store", str(store), "--precision", "fp32", "--limit", "2", "--quiet",
                 "--no-compare", "--no-complexity"]) == 0
    assert "in fp32" in capsys.readouterr().out
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert main(["run", spec, "--store", str(store), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained 4 runs" in out and "in bf16" in out  # the 2 fp32 runs stay: the same runs
    records = Store(store).records()
    assert sorted(r.env["precision"] for r in records) == ["bf16"] * 4 + ["fp32"] * 2
    assert all((r.env["complexity"] is False) == (r.env["precision"] == "fp32") for r in records)
    assert all((r.extra["geometric_complexity"] is None) == (r.env["precision"] == "fp32") for r in records)
    assert "pairs mix precisions" in out and "several precisions" in out


def test_set_overrides_fields_of_every_run(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", str(write_spec(tmp_path)), "--store", str(store), "--set", "width=2", "--set", "seed=[0]",
                 "--quiet", "--no-compare"]) == 0
    assert "sweep tiny[width=2,seed=[0]]: trained 2 runs" in capsys.readouterr().out
    records = Store(store).records()
    assert {(r.config["width"], r.config["seed"], r.sweep) for r in records} == {(2, 0, "tiny[width=2,seed=[0]]")}


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
    before = {r.run_id: r for r in finished(store)}
    assert 2 <= len(before) < 6, "the kill should land mid-sweep"
    subprocess.run(depthlab("run", spec, "--store", store, "--quiet", "--no-compare"), check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    after = {r.run_id: r for r in Store(store).records()}
    assert len(after) == 6 and all(r.status == "done" for r in after.values())
    for rid, record in before.items():  # finished before the kill: kept, never trained again
        assert after[rid].seconds == record.seconds and after[rid].attempts == 1
    assert any(r.attempts == 2 for r in after.values()) or len(before) == 6


def test_ctrl_c_stops_the_workers_releases_the_held_runs_and_keeps_the_finished(tmp_path):
    spec = write_spec(tmp_path, epochs=3)
    store = tmp_path / "s.sqlite"
    proc = subprocess.Popen(depthlab("run", spec, "--store", store, "--max-pack", "1", "--workers", "2", "--quiet",
                                     "--no-compare"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,  # Python turns SIGINT into KeyboardInterrupt only if not ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and (not store.exists() or len(finished(store)) < 2):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; everything finished so far is saved" in err.decode()
    records = Store(store).records()
    assert 2 <= sum(r.status == "done" for r in records) < 6, "the interrupt should land mid-sweep"
    assert {r.status for r in records} == {"done", "pending"}
    assert all(r.env["workers"] == 2 for r in records if r.status == "done")


def test_sigterm_releases_the_held_runs_and_keeps_the_finished(tmp_path):
    spec = write_spec(tmp_path, epochs=3)
    store = tmp_path / "s.sqlite"
    proc = run_until_two_finished(spec, store, stderr=subprocess.PIPE)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated; everything finished so far is saved" in err.decode()
    records = Store(store).records()
    done = [r for r in records if r.status == "done"]
    assert 2 <= len(done) < 6, "the signal should land mid-sweep"
    # nothing is left 'running' for a reclaim to find: the runner put its claims back itself
    assert {r.status for r in records} == {"done", "pending"}


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
    assert len(records) == 6 and all(r.status == "done" for r in records)
    assert all(r.attempts == 1 for r in records)  # each claimed (hence trained) exactly once
    owners = {r.env["host"] for r in records}
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
    from depthlab.train import engine

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    real = engine.train_pack
    monkeypatch.setattr(engine, "train_pack", lambda *a, **k: (_ for _ in ()).throw(ValueError("broken")))
    summary = run_sweep(spec, store, device="cpu", progress=False, max_pack=3)
    assert summary["counts"]["failed"] == 6
    assert "broken" in Store(store).records()[0].error
    monkeypatch.setattr(engine, "train_pack", real)
    assert sum(run_sweep(spec, store, device="cpu", progress=False)["trained"].values()) == 0  # failed stays
    summary = run_sweep(spec, store, device="cpu", progress=False, retry_failed=True)
    assert summary["counts"]["done"] == 6


def test_a_broken_device_stops_the_sweep_and_keeps_runs_pending(tmp_path, monkeypatch):
    from depthlab.train import engine

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine, "train_pack", broken)
    store = tmp_path / "s.sqlite"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_sweep(SweepSpec.from_dict(SPEC), store, device="cpu", progress=False)
    assert Store(store).counts()["pending"] == 6


def test_heartbeat_thread_keeps_claims_fresh(tmp_path):
    from depthlab.run.runner import Heartbeat
    from depthlab.results.store import owner_token

    store = Store(tmp_path / "s.sqlite")
    ids = store.add_runs([{"a": 1}], recipe=1)
    owner = owner_token()
    store.claim(ids, owner)
    before = store.running()[0]
    beat = Heartbeat(store, owner, every=0.05)
    beat.hold(0, ids)
    time.sleep(0.3)
    beat.stop()
    after = store.running()[0]
    key = next(k for k in after if "heartbeat" in k)
    assert after[key] > before[key]


# -- recipes, weights, crashed peers, exit codes -------------------------------------------------------------------


def test_a_new_recipe_reports_the_stale_runs_trains_them_again_and_keeps_the_old(tmp_path, monkeypatch):
    from depthlab.train import engine

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    run_sweep(spec, store, device="cpu", progress=False)
    monkeypatch.setattr(engine, "RECIPE", engine.RECIPE + 1)  # the training code changed
    said = []
    summary = run_sweep(spec, store, device="cpu", progress=False, log=said.append)
    assert summary["trained"]["done"] == 6  # nothing reused silently
    assert any(f"6 run(s) of this sweep in the store were trained by an older recipe ({engine.RECIPE - 1}" in s
               for s in said)
    records = Store(store).records()
    assert sorted(r.recipe for r in records) == [engine.RECIPE - 1] * 6 + [engine.RECIPE] * 6  # old ones kept
    assert all(r.env["recipe"] == r.recipe for r in records)
    assert sum(run_sweep(spec, store, device="cpu", progress=False)["trained"].values()) == 0  # now up to date


def test_weights_are_written_before_the_run_is_done(tmp_path, monkeypatch):
    from depthlab.errors import DepthlabError
    from depthlab.results import weights

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict({**SPEC, "grid": {"topology": ["sequential"], "seed": [0]}})

    def full_disk(*args, **kwargs):
        raise DepthlabError("cannot write the weights: No space left on device")

    monkeypatch.setattr(weights, "stage_weights", full_disk)  # where the driver writes them
    with pytest.raises(DepthlabError, match="No space left"):
        run_sweep(spec, store, device="cpu", progress=False, save_weights=True)
    assert Store(store).counts()["done"] == 0 and Store(store).counts()["pending"] == 1  # not done without them
    monkeypatch.undo()
    run_sweep(spec, store, device="cpu", progress=False, save_weights=True)
    (record,) = Store(store).records()
    assert record.status == "done" and weights.has_weights(store, record.run_id)


def test_a_done_run_whose_weights_went_missing_is_trained_again(tmp_path):
    from depthlab.results import weights

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict({**SPEC, "grid": {"topology": ["sequential", "parallel"], "seed": [0]}})
    run_sweep(spec, store, device="cpu", progress=False, save_weights=True)
    first, second = (r.run_id for r in Store(store).records())
    weights.weights_path(store, first).unlink()
    said = []
    summary = run_sweep(spec, store, device="cpu", progress=False, save_weights=True, log=said.append)
    assert summary["trained"]["done"] == 1 and any("no saved weights" in s for s in said)
    assert weights.has_weights(store, first) and weights.has_weights(store, second)


def test_a_running_sweep_takes_back_a_crashed_peers_runs(tmp_path):
    """A peer died holding runs of the sweep (its pid now belongs to a live process: only the heartbeat tells);
    a sweep already running reclaims them when it reaches them, and nothing is left 'running'."""
    import socket
    import sqlite3

    from depthlab.records import run_id
    from depthlab.train import engine

    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    ids = [run_id(c.to_dict(), engine.RECIPE) for c in spec.configs()]
    with Store(store) as s:
        s.add_runs([c.to_dict() for c in spec.configs()], sweep="tiny", recipe=engine.RECIPE)
        s.claim(ids[4:], f"{socket.gethostname()}:1:deadbeef")  # pid 1 is alive: a reused pid
    con = sqlite3.connect(store)
    con.execute("UPDATE runs SET heartbeat_at = 0, claimed_at = 0 WHERE status = 'running'")
    con.commit()
    con.close()
    summary = run_sweep(spec, store, device="cpu", progress=False)
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 6, "diverged": 0, "failed": 0}


def test_release_command_frees_stuck_runs(tmp_path, capsys):
    import socket
    import sqlite3

    store = tmp_path / "s.sqlite"
    with Store(store) as s:
        ids = s.add_runs([{"a": 1}, {"a": 2}, {"a": 3}], sweep="x", recipe=1)
        s.claim(ids[:2], f"{socket.gethostname()}:1:aaaa")  # a live pid, stale heartbeat: dead
        s.claim(ids[2:], f"{socket.gethostname()}:1:bbbb")  # a live pid, fresh heartbeat: alive
    con = sqlite3.connect(store)
    con.execute("UPDATE runs SET heartbeat_at = 0 WHERE run_id IN (?, ?)", ids[:2])
    con.commit()
    con.close()
    assert main(["status", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "dead" in out and "alive" in out and "depthlab release" in out
    assert main(["release", "--store", str(store)]) == 2  # release what?
    assert main(["release", "--store", str(store), "--stale"]) == 0
    assert "released 2 run(s)" in capsys.readouterr().out
    assert main(["release", "--store", str(store), "--run", "0123456789abcdef"]) == 2
    # a runner that is alive keeps its run unless --force (#23: its result would be thrown away)
    assert main(["release", "--store", str(store), "--run", ids[2]]) == 2
    assert "held by a runner that is alive" in capsys.readouterr().err
    assert main(["release", "--store", str(store), "--run", ids[2], "--force"]) == 0
    assert Store(store).counts()["pending"] == 3


def test_a_sweep_with_failed_runs_exits_non_zero(tmp_path, capsys, monkeypatch):
    from depthlab.train import engine

    monkeypatch.setattr(engine, "train_pack", lambda *a, **k: (_ for _ in ()).throw(ValueError("broken")))
    code = main(["run", str(write_spec(tmp_path)), "--store", str(tmp_path / "s.sqlite"), "--quiet"])
    assert code == 1
    out = capsys.readouterr().out
    assert "6 run(s) of sweep tiny failed" in out and "--status failed" in out


def test_an_edited_spec_under_the_same_name_says_so_and_its_orphans_can_be_dropped(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    run_sweep(spec, store, device="cpu", progress=False, limit=2)  # sequential seeds 0 and 1 trained
    edited = SweepSpec.from_dict({**SPEC, "grid": {"topology": ["sequential", "parallel"], "seed": [0, 7]}})
    said = []
    run_sweep(edited, store, device="cpu", progress=False, log=said.append)
    assert any("pending run(s) of this sweep are not in its spec any more" in s and "depthlab drop" in s
               for s in said)
    with Store(store) as s:
        # left by the first version: sequential seed 2, parallel seeds 1 and 2
        assert s.counts("tiny")["pending"] == 3 and s.counts("tiny")["done"] == 5
    assert main(["drop", "--store", str(store), "--sweep", "tiny"]) == 0
    assert "dropped 3 pending run(s)" in capsys.readouterr().out
    with Store(store) as s:
        assert s.counts("tiny") == {"pending": 0, "running": 0, "done": 5, "diverged": 0, "failed": 0}
        assert len(s.records()) == 5  # the dropped runs belonged to no other sweep: gone
    assert main(["drop", "--store", str(store), "--sweep", "nope"]) == 2


def test_an_init_from_naming_no_run_is_refused_before_anything_trains(tmp_path, capsys):
    """#23 bug 6: a missing init_from was not checked before training (nor by the dry run) and failed its pack."""
    spec = write_spec(tmp_path, init_from="0123456789abcdef")
    store = tmp_path / "s.sqlite"
    assert main(["run", str(spec), "--store", str(store), "--dry-run"]) == 2
    assert "init_from: got '0123456789abcdef'" in capsys.readouterr().err
    assert main(["run", str(spec), "--store", str(store), "--quiet"]) == 2
    assert "name no run there: 0123456789abcdef" in capsys.readouterr().err
    assert Store(store).counts().get("done", 0) == 0
