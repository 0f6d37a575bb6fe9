"""Broken dataset copies: `data list` says a corrupt copy is corrupt, a partial CIFAR copy is marked or refused,
and a damaged zarr archive gives its one error without pages of asyncio noise."""

import gzip
import subprocess
import sys
import zipfile

import pytest

from depthlab.cli.main import main
from depthlab.data import cifar, load, mnist
from depthlab.data.idx import FILES
from depthlab.data.mnist import package_path
from depthlab.errors import DataError


def listed(capsys, name: str, *argv) -> str:
    assert main(["data", "list", *argv]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name + " "))


def test_a_good_cache_looks_fine(tmp_path, make_mnist_files, make_cifar_dir):
    from depthlab.data.datasets import offline_problem

    make_mnist_files(tmp_path / "m")
    assert mnist.cache_problem(tmp_path / "m") is None
    assert cifar.cache_problem(make_cifar_dir(tmp_path / "c")) is None
    assert offline_problem("mnist") is None and offline_problem("synthetic") is None


def test_data_list_says_a_garbage_mnist_cache_is_corrupt(tmp_path, capsys):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in FILES:
        (d / name).write_bytes(b"garbage, not a gzip file")
    line = listed(capsys, "mnist", "--root", str(tmp_path))
    assert "no: corrupt copy" in line and "train-images-idx3-ubyte.gz: not a gzip file" in line
    assert "depthlab data verify mnist" in line


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated or damaged"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"12345")),
     "not an unsigned-byte IDX file with 3 dims"),
    (lambda p: p.write_bytes(b"\x1f\x8b"), "too short for a gzip file"),
], ids=["truncated", "wrong-header", "tiny"])
def test_a_damaged_idx_file_is_named(tmp_path, make_mnist_files, damage, says):
    make_mnist_files(tmp_path)
    damage(tmp_path / "t10k-images-idx3-ubyte.gz")
    problem = mnist.cache_problem(tmp_path)
    assert problem.startswith("t10k-images-idx3-ubyte.gz: ") and says in problem


def test_data_list_says_a_damaged_cifar_copy_is_corrupt(tmp_path, make_cifar_dir, capsys):
    d = make_cifar_dir(tmp_path)
    assert listed(capsys, "cifar10", "--root", str(tmp_path)).endswith(f"yes (cache:{d})")
    raw = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    assert "no: corrupt copy" in listed(capsys, "cifar10", "--root", str(tmp_path))
    assert cifar.cache_problem(d) == "data_batch_2: not a complete pickle (truncated or corrupt)"
    (d / "data_batch_3").unlink()
    (d / "test_batch").unlink()
    assert cifar.cache_problem(d) == "incomplete: data_batch_3, test_batch missing"


def test_an_incomplete_cifar_copy_is_refused_naming_every_missing_file(tmp_path, make_cifar_dir):
    d = make_cifar_dir(tmp_path)
    (d / "data_batch_4").unlink()
    (d / "data_batch_5").unlink()
    with pytest.raises(DataError, match="incomplete CIFAR-10 copy, missing") as err:
        load("cifar10", root=d, download=False)
    assert str(d / "data_batch_4") in str(err.value) and str(d / "data_batch_5") in str(err.value)


def test_a_partial_copy_is_marked_on_the_dataset(tmp_path, make_cifar_dir, mnist_package):
    make_cifar_dir(tmp_path, per_batch=10)  # every file there, 50 train images instead of 50000
    partial = load("cifar10", root=tmp_path, download=False)
    assert partial.complete is False and "partial copy" in repr(partial)
    assert mnist_package.complete is True and "partial" not in repr(mnist_package)
    assert load("synthetic", n_train=20, n_test=10).complete is True  # generated as asked: nothing missing


def test_a_corrupt_zarr_archive_gives_one_error_line(tmp_path):
    # flip bytes inside one chunk of a copy of the real archive: its zip directory stays intact
    data = bytearray(package_path().read_bytes())
    with zipfile.ZipFile(package_path()) as archive:
        offset = archive.getinfo("train_images/c/5/0/0").header_offset
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + \
        int.from_bytes(data[offset + 28:offset + 30], "little")
    data[start + 1000:start + 1100] = bytes(b ^ 0xFF for b in data[start + 1000:start + 1100])
    bad = tmp_path / "mnist.zarr.zip"
    bad.write_bytes(bytes(data))
    code = ("import sys; from pathlib import Path; import depthlab.data.mnist as m; "
            f"m.package_path = lambda: Path({str(bad)!r}); from depthlab.cli.main import main; "
            "sys.exit(main(['data', 'verify', 'mnist', '--no-download']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("depthlab: error: ") and "Bad CRC-32" in lines[0], proc.stderr
