"""Stores given by mistake, stores that may not be written, and broken weights files: one clear line each, and
nothing lost or changed."""

import os
import sqlite3

import pytest

from depthlab.cli.main import main
from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

SPEC = {"name": "r", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64, "test_subset": 32,
                                  "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "r.sqlite"
    run_sweep(SweepSpec.from_dict(SPEC), path, device="cpu", progress=False, save_weights=True)
    return path


@pytest.mark.parametrize("where", ["", ":memory:", "file:x?mode=memory&cache=shared"])
def test_a_store_that_would_keep_nothing_is_refused_before_training(where, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--dry-run"]):
        assert main(["run", "smoke", "--store", where, "--quiet", *extra]) == 2
        assert "must be a file path" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_read_commands_work_on_a_store_that_cannot_be_written_and_change_nothing(store, old_store, tmp_path,
                                                                                     capsys):
    copy = tmp_path / "ro.sqlite"
    copy.write_bytes(store.read_bytes())
    os.chmod(copy, 0o444)
    before = copy.read_bytes()
    try:
        for argv in (["status"], ["results"], ["compare", "--n-boot", "200"], ["summary"],
                     ["report", "--out", str(tmp_path / "r.html")]):
            assert main([*argv, "--store", str(copy)]) == 0, argv
            capsys.readouterr()
    finally:
        os.chmod(copy, 0o644)
    assert copy.read_bytes() == before
    # a store of an older schema is read through a migrated in-memory copy: the file itself is not migrated
    old = old_store
    before = old.read_bytes()
    for argv in (["status"], ["results"], ["compare", "--n-boot", "200"], ["summary"],
                 ["report", "--out", str(tmp_path / "old.html")]):
        assert main([*argv, "--store", str(old)]) == 0, argv
        capsys.readouterr()
    assert old.read_bytes() == before
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == 0
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for argv in (["status"], ["results"], ["compare"]):
        assert main([*argv, "--store", str(empty)]) == 2
        assert "empty file" in capsys.readouterr().err
    assert empty.stat().st_size == 0  # a read command never turns a file into a store


def test_a_foreign_database_with_a_runs_table_is_refused_unchanged(tmp_path, capsys):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (run_id TEXT, config TEXT, status TEXT, history TEXT, final TEXT, "
                "train_loss REAL, val_loss REAL, train_acc REAL, val_acc REAL, test_loss REAL, test_acc REAL)")
    con.commit()
    con.close()
    before = path.read_bytes()
    assert main(["run", "smoke", "--store", str(path), "--quiet"]) == 2
    assert "not a depthlab results store" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_truncated_weights_file_is_one_clear_error(store, capsys):
    run = Store(store).records()[0].run_id
    weights = store.parent / f"{store.name}.weights" / f"{run}.pt"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved[: len(saved) // 2])
        assert main(["lesion", "--store", str(store), "--run", run, "--no-plain", "--quiet"]) == 2
        err = capsys.readouterr().err
        # the checksum recorded with the run refuses it before torch reads it (#23 bug 9)
        assert "its checksum is not the one recorded" in err and "Traceback" not in err
    finally:
        weights.write_bytes(saved)
