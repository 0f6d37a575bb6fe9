"""Fashion-MNIST: the loader on generated IDX files (cache, Debian's folder, download), its checksums of the
decompressed bytes both ways, one error naming the three ways to get it, and the real Debian copy where installed."""

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from depthlab.cli.main import main
from depthlab.data import fashion_mnist, idx, load, locate, registry
from depthlab.errors import DataError

ENTRY = registry.entry("fashion_mnist")
DEBIAN = Path(ENTRY.packages[0].path)
DEAD_URL = "http://127.0.0.1:9/"


def content_sums(directory: Path) -> dict[str, str]:
    """sha256 of each file's decompressed bytes: what the registry holds for Fashion-MNIST."""
    return {name: hashlib.sha256(gzip.decompress((directory / name).read_bytes())).hexdigest() for name in idx.FILES}


@pytest.fixture
def no_debian_copy(tmp_path, monkeypatch):
    """Fashion-MNIST's package folder moved to an empty one: the Debian copy may be installed on this machine."""
    package = dataclasses.replace(ENTRY.packages[0], path=str(tmp_path / "no-package"))
    monkeypatch.setattr(fashion_mnist, "ENTRY", dataclasses.replace(ENTRY, packages=(package,)))


@pytest.fixture
def registry_sums(monkeypatch):
    """use(sums): make `sums` the registry's checksums of Fashion-MNIST, as the loader reads them."""

    def use(sums):
        checksums = dataclasses.replace(ENTRY.checksums, files=sums)
        monkeypatch.setattr(fashion_mnist, "ENTRY", dataclasses.replace(fashion_mnist.ENTRY, checksums=checksums))

    return use


def test_the_registry_holds_its_facts():
    assert (ENTRY.shape, ENTRY.num_classes, ENTRY.sizes) == ((1, 28, 28), 10, (60_000, 10_000))
    assert ENTRY.flip_ok is False and ENTRY.suite is None and ENTRY.cache == "fashion_mnist"
    assert ENTRY.checksums.algorithm == "sha256" and ENTRY.checksums.decompressed
    assert sorted(ENTRY.checksums.files) == sorted(idx.FILES)
    assert ENTRY.packages[0].install == "apt-get install dataset-fashion-mnist"
    assert str(DEBIAN) == "/usr/share/datasets/fashion-mnist"


def test_a_generated_cache_loads(tmp_path, make_mnist_files, no_debian_copy):
    make_mnist_files(tmp_path / "fashion_mnist", n_train=40, n_test=10)
    sums = content_sums(tmp_path / "fashion_mnist")
    assert locate("fashion_mnist", tmp_path) == f"cache:{tmp_path / 'fashion_mnist'}"
    ds = load("fashion_mnist", root=tmp_path, checksums=sums)  # root/fashion_mnist is found
    assert ds.source == f"cache:{tmp_path / 'fashion_mnist'}" and ds.name == "fashion_mnist"
    assert ds.train_x.shape == (40, 1, 28, 28) and ds.train_x.dtype == torch.uint8 and ds.test_x.shape[0] == 10
    assert ds.train_y.tolist() == [i % 10 for i in range(40)] and ds.num_classes == 10
    assert ds.flip_ok is False and ds.complete is False  # 40 + 10 examples, not the standard 60,000 + 10,000
    images = idx.read_idx(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz", 3)
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), images)


def test_the_default_data_dir_is_its_cache(tmp_path, make_mnist_files, no_debian_copy):
    make_mnist_files(tmp_path / "data_home" / "fashion_mnist")  # $DEPTHLAB_DATA is tmp_path/data_home
    ds = load("fashion_mnist", checksums=content_sums(tmp_path / "data_home" / "fashion_mnist"))
    assert ds.source == f"cache:{tmp_path / 'data_home' / 'fashion_mnist'}"


def test_the_checksums_are_of_the_decompressed_bytes_both_ways(tmp_path, make_mnist_files, registry_sums,
                                                               no_debian_copy):
    d = tmp_path / "fashion_mnist"
    make_mnist_files(d, n_train=30, n_test=10)
    registry_sums(content_sums(d))
    # recompressed, as Debian does: other .gz bytes, the same IDX bytes inside, still the standard file
    name = "train-images-idx3-ubyte.gz"
    raw = gzip.decompress((d / name).read_bytes())
    recompressed = gzip.compress(raw, compresslevel=1, mtime=12345)
    assert recompressed != (d / name).read_bytes()
    (d / name).write_bytes(recompressed)
    assert load("fashion_mnist", root=tmp_path, download=False).n_train == 30
    # one pixel changed: the file is still a valid IDX file, and refused by its checksum
    flipped = bytearray(raw)
    flipped[100] ^= 0xFF
    (d / name).write_bytes(gzip.compress(bytes(flipped)))
    with pytest.raises(DataError) as err:
        load("fashion_mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(d / name) in msg and "sha256 of its decompressed bytes is" in msg
    assert hashlib.sha256(raw).hexdigest() in msg and "Fix: delete" in msg and "\n" not in msg


def test_the_real_checksums_refuse_generated_files(tmp_path, make_mnist_files, no_debian_copy):
    make_mnist_files(tmp_path / "fashion_mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: sha256 of its decompressed bytes") as err:
        load("fashion_mnist", root=tmp_path)
    assert ENTRY.checksums.files["train-images-idx3-ubyte.gz"] in str(err.value)


def test_a_package_folder_is_the_second_source(tmp_path, make_mnist_files, registry_sums, monkeypatch):
    folder = tmp_path / "usr-share"
    make_mnist_files(folder, n_train=20, n_test=10)
    package = dataclasses.replace(ENTRY.packages[0], path=str(folder))
    monkeypatch.setattr(fashion_mnist, "ENTRY", dataclasses.replace(ENTRY, packages=(package,)))
    registry_sums(content_sums(folder))
    assert locate("fashion_mnist", tmp_path / "empty") == "package:dataset-fashion-mnist"
    ds = load("fashion_mnist", root=tmp_path / "empty", download=False)
    assert ds.source == "package:dataset-fashion-mnist" and ds.n_train == 20
    with pytest.raises(DataError, match=r"not found\. Tried: cache: no complete set of the four IDX gz files in "):
        load("fashion_mnist", root=tmp_path / "empty", sources=("cache",))  # the package source switched off


def test_a_damaged_copy_is_listed_as_corrupt(tmp_path, make_mnist_files, no_debian_copy, capsys):
    d = tmp_path / "fashion_mnist"
    make_mnist_files(d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("fashion_mnist "))
    assert "no: corrupt copy" in line and "t10k-labels-idx1-ubyte.gz: not a gzip file" in line


def test_download_verifies_the_decompressed_bytes(tmp_path, serve, make_mnist_files, registry_sums,
                                                  no_debian_copy):
    make_mnist_files(tmp_path / "srv", n_train=30, n_test=10)
    sums = content_sums(tmp_path / "srv")
    registry_sums(sums)
    url = serve(tmp_path / "srv")
    cache = tmp_path / "cache"
    ds = load("fashion_mnist", root=cache, mirrors=[DEAD_URL, url])  # the first mirror refuses
    assert ds.source == f"download:{cache}" and ds.n_train == 30
    assert sorted(p.name for p in cache.iterdir()) == sorted(idx.FILES)  # no staging folder left
    registry_sums({**sums, "t10k-labels-idx1-ubyte.gz": "0" * 64})  # the last file fails: none may stay
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: sha256 of its decompressed bytes"):
        load("fashion_mnist", root=tmp_path / "cache2", mirrors=[url])
    assert not (tmp_path / "cache2").exists() or list((tmp_path / "cache2").rglob("*")) == []


def test_absent_one_error_names_the_three_ways(tmp_path, no_debian_copy, capsys):
    with pytest.raises(DataError) as err:
        load("fashion_mnist")  # no cache, no package, and the mirrors refuse connections
    msg = str(err.value)
    target = tmp_path / "data_home" / "fashion_mnist"
    assert msg.startswith("Fashion-MNIST: not found. Tried: cache:") and "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert f"put {', '.join(idx.FILES)} in {target}" in msg
    assert "allow a download where a network exists" in msg and "download:" in msg
    assert list(tmp_path.joinpath("data_home").rglob("*.gz")) == []
    assert main(["data", "verify", "fashion_mnist", "--no-download"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "download: not allowed" in err_lines[0]
    assert "apt-get install dataset-fashion-mnist" in err_lines[0]


@pytest.mark.skipif(not all((DEBIAN / name).is_file() for name in idx.FILES),
                    reason=f"the Debian package dataset-fashion-mnist is not installed (no files in {DEBIAN})")
def test_the_real_debian_copy(capsys):
    ds = load("fashion_mnist", sources=("package",))
    assert ds.source == "package:dataset-fashion-mnist" and ds.complete
    assert ds.train_x.shape == (60_000, 1, 28, 28) and ds.test_x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10 and torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert main(["data", "verify", "fashion_mnist", "--no-download"]) == 0
    assert "package:dataset-fashion-mnist" in capsys.readouterr().out
