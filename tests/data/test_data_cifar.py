import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from depthlab.data import load, locate
from depthlab.data.cifar import read_batch
from depthlab.errors import DataError


def test_loads_generated_batches(tmp_path, make_cifar_dir):
    d = make_cifar_dir(tmp_path, per_batch=50)
    for root in (d, tmp_path):  # the directory itself, or a parent holding cifar-10-batches-py
        ds = load("cifar10", root=root, download=False)
        assert ds.source == f"cache:{d}"
        assert ds.train_x.shape == (250, 3, 32, 32) and ds.train_x.dtype == torch.uint8
        assert ds.test_x.shape == (50, 3, 32, 32)
        assert ds.train_y.dtype == torch.int64 and 0 <= int(ds.train_y.min()) and int(ds.train_y.max()) < 10
        assert ds.flip_ok is True and ds.num_classes == 10 and len(ds.mean) == 3
    # Row-major C,H,W layout, batches in order 1..5.
    with open(d / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    img = ds.train_x[50 + 7]
    row = batch[b"data"][7]
    assert int(img[2, 5, 9]) == int(row[2 * 1024 + 5 * 32 + 9])
    assert ds.train_y[50:100].tolist() == batch[b"labels"]


def test_default_dir_from_env(tmp_path, make_cifar_dir):
    make_cifar_dir(tmp_path / "data_home" / "cifar10")  # $DEPTHLAB_DATA/cifar10/cifar-10-batches-py
    assert locate("cifar10") is not None
    assert load("cifar10", download=False).n_train == 250


def test_truncated_pickle(tmp_path, make_cifar_dir):
    d = make_cifar_dir(tmp_path)
    raw = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError) as err:
        load("cifar10", root=d, download=False)
    msg = str(err.value)
    assert str(d / "data_batch_3") in msg and "truncated" in msg and "Fix" in msg


def test_wrong_data_shape(tmp_path, make_cifar_dir):
    d = make_cifar_dir(tmp_path)
    batch = {b"data": np.zeros((50, 1024), np.uint8), b"labels": [0] * 50, b"batch_label": b"x", b"filenames": []}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: b'data' is uint8\(50, 1024\); expected uint8 \(N, 3072\)"):
        load("cifar10", root=d, download=False)


def test_wrong_labels(tmp_path):
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 12, 3]}
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="labels span 0..12"):
        read_batch(tmp_path / "b")
    batch[b"labels"] = [0, 1]
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"\(2,\) labels for 4 images"):
        read_batch(tmp_path / "b")


def test_missing_file(tmp_path, make_cifar_dir):
    d = make_cifar_dir(tmp_path)
    (d / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        load("cifar10", root=d, download=False)
    assert str(d / "data_batch_4") in str(err.value) and "missing" in str(err.value) and "Fix" in str(err.value)


def test_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "victim"),))

    (tmp_path / "victim").write_text("still here")
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load posix.remove|refusing to load os.remove|refusing"):
        read_batch(tmp_path / "b")
    assert (tmp_path / "victim").exists()


def test_not_found_offline(tmp_path):
    with pytest.raises(DataError, match="no cifar-10-batches-py batches in") as err:
        load("cifar10", root=tmp_path, download=False)
    assert "Fix" in str(err.value)


def _tarball(path, src_dir, extra=None):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src_dir, arcname="cifar-10-batches-py")
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_from_loopback(tmp_path, serve, make_cifar_dir):
    src = make_cifar_dir(tmp_path / "build", per_batch=20)
    (tmp_path / "srv").mkdir()
    md5 = _tarball(tmp_path / "srv" / "cifar.tgz", src)
    url = serve(tmp_path / "srv") + "cifar.tgz"
    cache = tmp_path / "cache"
    ds = load("cifar10", root=cache, url=url, md5=md5)
    assert ds.source == f"download:{cache / 'cifar-10-batches-py'}" and ds.n_train == 100
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # archive and staging gone
    assert load("cifar10", root=cache, download=False).source.startswith("cache:")


def test_download_checksum_mismatch_leaves_nothing(tmp_path, serve, make_cifar_dir):
    src = make_cifar_dir(tmp_path / "build", per_batch=5)
    (tmp_path / "srv").mkdir()
    _tarball(tmp_path / "srv" / "cifar.tgz", src)
    url = serve(tmp_path / "srv") + "cifar.tgz"
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: could not download a verified copy"):
        load("cifar10", root=cache, url=url)  # the standard md5 cannot match the generated archive
    assert list(cache.rglob("*")) == []


def test_unsafe_archive_refused(tmp_path, serve, make_cifar_dir):
    src = make_cifar_dir(tmp_path / "build", per_batch=5)
    (tmp_path / "srv").mkdir()
    evil = tarfile.TarInfo("cifar-10-batches-py/../../escaped.txt")
    evil.size = 3
    md5 = _tarball(tmp_path / "srv" / "cifar.tgz", src, extra=[(evil, b"bad")])
    url = serve(tmp_path / "srv") + "cifar.tgz"
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="escaped.txt"):
        load("cifar10", root=cache, url=url, md5=md5)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert list(cache.rglob("*")) == []

    link = tarfile.TarInfo("cifar-10-batches-py/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    md5 = _tarball(tmp_path / "srv" / "cifar.tgz", src, extra=[(link, None)])
    with pytest.raises(DataError, match="link or device"):
        load("cifar10", root=cache, url=url, md5=md5)
    assert list(cache.rglob("*")) == []



def test_placed_archive_is_verified_and_extracted_offline(tmp_path, make_cifar_dir):
    src = make_cifar_dir(tmp_path / "build", per_batch=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    md5 = _tarball(cache / "cifar-10-python.tar.gz", src)
    assert locate("cifar10", cache) == f"archive:{cache / 'cifar-10-python.tar.gz'}"
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: md5 is"):
        load("cifar10", root=cache, download=False)  # not the standard archive's md5
    assert not (cache / "cifar-10-batches-py").exists()
    ds = load("cifar10", root=cache, download=False, md5=md5)
    assert ds.source.startswith("archive:") and ds.n_train == 20
    assert (cache / "cifar-10-python.tar.gz").exists()  # the user's file is kept
    assert load("cifar10", root=cache, download=False).source == f"cache:{cache / 'cifar-10-batches-py'}"
