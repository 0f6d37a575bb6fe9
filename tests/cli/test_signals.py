"""Stop signals against a real `depthlab run`: SIGHUP (a closed terminal) unwinds like SIGTERM, unless `nohup`
made the command ignore it."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

# the runs train with `--precision auto`: as on either kind of CPU (tests/conftest.py)
pytestmark = pytest.mark.auto_precision

SPEC = {"name": "long", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 512,
                                     "test_subset": 32, "width": 2, "stem_stride": 2, "batch_size": 32,
                                     "epochs": 100_000},
        "grid": {"seed": [0, 1]}}


def depthlab(*args):
    return [sys.executable, "-m", "depthlab.cli.main", *map(str, args)]


def statuses(store) -> list[str]:
    """Run statuses read straight from the file (read-only; empty while the store is being created)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return [row[0] for row in db.execute("SELECT status FROM runs")]
    except sqlite3.Error:
        return []


def start_training(tmp_path, **popen) -> tuple[subprocess.Popen, str]:
    """A real `depthlab run` of a sweep too long to finish, returned once a run is 'running' (or it exited)."""
    spec, store = tmp_path / "long.yaml", tmp_path / "s.sqlite"
    spec.write_text(yaml.safe_dump(SPEC))
    proc = subprocess.Popen(depthlab("run", spec, "--store", store, "--quiet", "--no-compare"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **popen)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and "running" not in statuses(store):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1].decode()
    return proc, store


def stopped(proc: subprocess.Popen) -> bytes:
    """The stderr of `proc` once it exits; a failure (and the process killed) if it does not within a minute."""
    try:
        return proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running a minute after the signal; stderr: {proc.communicate()[1].decode()[-2000:]}")


def test_sighup_releases_the_held_runs_and_exits_129(tmp_path):
    proc, store = start_training(tmp_path)
    os.kill(proc.pid, signal.SIGHUP)
    err = stopped(proc)
    assert proc.returncode == 129, err.decode()
    assert "hung up (SIGHUP); everything finished so far is saved" in err.decode()
    assert set(statuses(store)) == {"pending"}  # nothing left 'running': the runner put its claims back


def test_nohup_keeps_sighup_ignored(tmp_path):
    proc, store = start_training(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    os.kill(proc.pid, signal.SIGHUP)  # ignored: only the SIGTERM after it stops the run
    os.kill(proc.pid, signal.SIGTERM)
    err = stopped(proc)
    assert proc.returncode == 143, err.decode()
    assert set(statuses(store)) == {"pending"}
