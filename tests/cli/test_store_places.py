"""Stores in places that are not plain writable folders: a read-only folder (or mount), where SQLite cannot create
the files a WAL database reads through, and a store reached through a symlink.

Permission bits do not stop root, so the read commands run in a process that obeys them: as root, one whose
capabilities are dropped (root without CAP_DAC_OVERRIDE is refused a write to a 0555 folder like anyone else);
as any other user, a plain process."""

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from depthlab.results import weights
from depthlab.results.store import Store
from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec

PR_CAPBSET_DROP = 24  # prctl(2): drop a capability from the bounding set, which an exec'd root process keeps
FINAL = dict(train_loss=0.5, val_loss=0.6, train_acc=0.8, val_acc=0.75, test_loss=0.61, test_acc=0.74)
READ_COMMANDS = (["status"], ["results"], ["summary"], ["compare", "--n-boot", "50"])

# Runs in the child: first prove that permission bits bind it, then run each read command in this one process
# (one start-up for all), printing a JSON line of their exit codes, outputs and errors.
CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys
    folder, store, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        open(os.path.join(folder, "probe"), "w").close()
        os.unlink(os.path.join(folder, "probe"))
        print("CAN_WRITE")
        sys.exit(0)
    except OSError:
        pass
    from depthlab.cli.main import main
    out = []
    for argv in commands:
        o, e = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            code = main([*argv, "--store", store])
        out.append([code, o.getvalue(), e.getvalue()])
    print(json.dumps(out))
""")


def _without_capabilities():
    """preexec_fn: as root, an exec'd child without capabilities (permission bits bind it)."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux; elsewhere the child says CAN_WRITE
    for cap in range(64 if prctl else 0):
        prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def read_in_read_only_folder(store, commands=READ_COMMANDS) -> list:
    """[exit code, stdout, stderr] of each command run on `store` with its folder made read-only (0555), by a
    process that obeys permission bits; the folder is made writable again afterwards."""
    folder = store.parent
    for name in os.listdir(folder):
        os.chmod(folder / name, 0o644)
    os.chmod(folder, 0o555)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(store), json.dumps(commands)],
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=_without_capabilities if os.geteuid() == 0 else None)
    finally:
        os.chmod(folder, 0o755)
    if done.stdout.strip() == "CAN_WRITE":
        pytest.skip("permission bits do not bind this user, even without capabilities: no read-only folder here")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fill(path, seeds):
    """Runs of a pair per seed (sequential and parallel), finished, through the store's API."""
    with Store(path) as store:
        finish_pairs(store, seeds)


def finish_pairs(store, seeds, owner="t:1:x"):
    configs = [dict(dataset="synthetic", topology=t, blocks=2, width=4, seed=s) for s in seeds
               for t in ("sequential", "parallel")]
    ids = store.claim(store.add_runs(configs, sweep="s", recipe=2), owner)
    for i, rid in enumerate(ids):
        store.finish(rid, owner, status="done", final={**FINAL, "val_loss": 0.6 + 0.01 * i}, history=[{}],
                     params=100, q=2.0, seconds=1.0, env={})


def killed_writer(path, seeds):
    """Finish more runs in a process killed before it closes the store: they stay in the write-ahead log."""
    code = (f"import os, signal, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            "from depthlab.results.store import Store; from test_store_places import finish_pairs; "
            f"finish_pairs(Store({str(path)!r}), {list(seeds)!r}); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


def contents(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def exported_runs(result) -> int:
    code, out, err = result
    assert code == 0, err
    return len(out.strip().splitlines()) - 1  # the CSV's header


def test_read_commands_work_in_a_read_only_folder_and_change_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "s.sqlite"
    fill(store, range(3))
    before = contents(folder)
    assert list(before) == ["s.sqlite"]  # closed cleanly: no write-ahead log, nothing for SQLite to read it with
    results = read_in_read_only_folder(store)
    for argv, (code, out, err) in zip(READ_COMMANDS, results):
        assert code == 0 and "error" not in err, (argv, err)
    assert exported_runs(results[1]) == 6
    assert contents(folder) == before


def test_results_still_in_the_write_ahead_log_are_read_and_the_log_is_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "s.sqlite"
    fill(store, range(2))
    killed_writer(store, range(2, 4))  # 4 more runs, only in s.sqlite-wal
    assert {"s.sqlite-wal", "s.sqlite-shm"} <= set(os.listdir(folder))
    results = read_in_read_only_folder(store, [["results"]])
    assert exported_runs(results[0]) == 8  # read through the log's index (-shm), which SQLite can read here
    (folder / "s.sqlite-shm").unlink()  # without it, SQLite cannot read the log in a read-only folder
    before = contents(folder)
    status, results = read_in_read_only_folder(store, [["status"], ["results"]])
    assert status[0] == 0 and [line.split() for line in status[1].splitlines() if line.startswith("s ")] == [
        ["s", "0", "0", "8", "0", "0", "8"]]  # pending running done diverged failed total
    assert exported_runs(results) == 8  # merged in a private copy: nothing is missing
    notes = [line for line in results[2].splitlines() if "s.sqlite-wal" in line]
    assert len(notes) == 1 and "not in the store file" in notes[0]
    assert contents(folder) == before


def test_a_write_ahead_log_holding_nothing_new_is_not_mentioned(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "s.sqlite"
    fill(store, range(2))
    code = (f"import os, signal; from depthlab.results.store import Store; s = Store({str(store)!r}); "
            "s.save_cost('k', {'flops': 1}); s.checkpoint(); os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code], timeout=60)  # written, checkpointed, killed before closing
    assert (folder / "s.sqlite-wal").stat().st_size > 0
    (folder / "s.sqlite-shm").unlink(missing_ok=True)
    (code, out, err), = read_in_read_only_folder(store, [["results"]])
    assert code == 0 and len(out.strip().splitlines()) == 5 and err == ""


SPEC = {"name": "l", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64, "test_subset": 32,
                                  "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0]}}


def test_a_store_opened_through_a_symlink_and_through_its_target_is_one_store(tmp_path):
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "runs.sqlite"
    link = tmp_path / "runs.sqlite"
    link.symlink_to(target)
    spec = SweepSpec.from_dict(SPEC)
    first = run_sweep(spec, link, device="cpu", progress=False, save_weights=True)
    assert first["trained"]["done"] == 2
    again = run_sweep(spec, target, device="cpu", progress=False, save_weights=True)
    assert again["trained"]["done"] == 0  # the weights were found: nothing retrained
    assert not os.path.exists(f"{link}.weights")  # one weights folder, beside the real file
    for rec in Store(link, readonly=True).records():
        assert weights.weights_path(link, rec.run_id) == weights.weights_path(target, rec.run_id)
        assert weights.has_weights(target, rec.run_id)
