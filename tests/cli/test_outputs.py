"""What a command writes with --out: never over the results store, its journal files or its weights folder, never
a directory or a special file, and never half-written (a failing writer leaves the earlier file as it was)."""

import hashlib
import os
import stat

import pytest

from depthlab.cli.main import main
from depthlab.errors import DepthlabError
from depthlab.outputs import check_out, replaced
from depthlab.spec.config import RunConfig
from depthlab.results.store import Store


@pytest.fixture
def store(tmp_path):
    """A real store (SQLite, WAL) with a few runs, its weights folder holding one file."""
    path = tmp_path / "s.sqlite"
    configs = [RunConfig(dataset="synthetic", topology=t, seed=0).to_dict() for t in ("sequential", "parallel")]
    with Store(path) as s:
        s.add_runs(configs, sweep="w", recipe=2)
    weights = tmp_path / "s.sqlite.weights"
    weights.mkdir()
    (weights / "0123abcd.pt").write_bytes(b"trained weights")
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", [["results", "--format", "csv"], ["results", "--format", "parquet"],
                                     ["report"], ["plot", "scatter-val"]])
@pytest.mark.parametrize("target", ["{store}", "{store}-wal", "{store}.weights/0123abcd.pt", "{store}.weights"])
def test_out_over_the_store_or_its_files_is_refused_and_nothing_changes(store, command, target, capsys):
    out = target.format(store=store)
    before = {p: digest(p) for p in store.parent.rglob("*") if p.is_file()}
    assert main([*command, "--store", str(store), "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results store" in err[0] and "choose another file" in err[0], err
    assert {p: digest(p) for p in store.parent.rglob("*") if p.is_file()} == before


def test_the_store_is_recognised_through_a_relative_path_and_a_symlink(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.sqlite"
    link.symlink_to(store)
    for out in ("s.sqlite", "./s.sqlite.weights/x.pt", str(link)):
        with pytest.raises(DepthlabError, match="results store"):
            check_out(out, store)
    assert check_out("other.csv", store) == "other.csv"


def test_a_directory_or_a_special_file_is_one_clear_line(store, tmp_path, capsys):
    assert main(["results", "--store", str(store), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["results", "--store", str(store), "--out", str(fifo)]) == 2
    assert "special file" in capsys.readouterr().err


def test_a_failing_writer_leaves_the_earlier_file_and_no_temporary_one(tmp_path):
    out = tmp_path / "runs.csv"
    out.write_text("the earlier export\n")
    with pytest.raises(RuntimeError):
        with replaced(out) as temp:
            temp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "the earlier export\n" and os.listdir(tmp_path) == ["runs.csv"]
    with replaced(out) as temp:
        temp.write_text("the new export\n")
    assert out.read_text() == "the new export\n" and os.listdir(tmp_path) == ["runs.csv"]


def test_a_new_output_gets_the_usual_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.csv"
        with replaced(fresh) as temp:
            temp.write_text("x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # not mkstemp's 0600
        fresh.chmod(0o640)
        with replaced(fresh) as temp:
            temp.write_text("y")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    finally:
        os.umask(umask)


def test_a_failed_parquet_export_keeps_the_earlier_file(store, tmp_path, monkeypatch, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "runs.parquet"
    assert main(["results", "--store", str(store), "--format", "parquet", "--out", str(out)]) == 0
    good = digest(out)

    def broken(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", broken)
    assert main(["results", "--store", str(store), "--format", "parquet", "--out", str(out)]) in (1, 2)
    assert digest(out) == good and sorted(os.listdir(tmp_path)) == sorted(["runs.parquet", "s.sqlite",
                                                                             "s.sqlite.weights"] + [
        n for n in os.listdir(tmp_path) if n.startswith("s.sqlite-")])
    assert "runs.parquet" in capsys.readouterr().err
