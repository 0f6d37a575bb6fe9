"""CIFAR-10 from the standard `cifar-10-batches-py` pickles, downloaded (checksum-verified) when missing.

The batches are Python pickles; they are read with an unpickler that only builds numpy arrays and plain
containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from depthlab.data import registry
from depthlab.data.download import default_data_dir, fetch, verify_file
from depthlab.errors import DataError

ENTRY = registry.entry("cifar10")  # its shape, classes, sizes, archive URL and md5, cache folder
URL = ENTRY.remote[0]
ARCHIVE = "cifar-10-python.tar.gz"
MD5 = ENTRY.checksums.files[ARCHIVE]
URL_ENV = "DEPTHLAB_CIFAR10_URL"
DIRNAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
MARKERS = (*TRAIN_FILES, TEST_FILE, "batches.meta")  # any of these marks a batches directory

# What a CIFAR batch pickle may reference: numpy array reconstruction (numpy 1 and 2 names) and bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
        return super().find_class(module, name)


def _fix(path: Path) -> str:
    return (
        f"Fix: delete {path.parent} and load again with download allowed, or re-extract {URL} "
        f"(md5 {MD5}) so that {path.parent} holds the standard files."
    )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch pickle -> (images N×3×32×32 uint8, labels N int64), validated."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file missing; expected a CIFAR-10 batch pickle. {_fix(path)}") from None
    except Exception as err:  # a truncated or foreign pickle raises many kinds
        raise DataError(
            f"{path}: cannot unpickle ({type(err).__name__}: {err}); expected a complete CIFAR-10 batch "
            f"(truncated or corrupt file?). {_fix(path)}"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: holds {keys}; expected a dict with b'data' and b'labels'. {_fix(path)}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype}{data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' is {got}; expected uint8 (N, 3072) (rows of 3×32×32). {_fix(path)}")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: b'labels' is not a list of integers. {_fix(path)}") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape} labels for {data.shape[0]} images; expected one each. {_fix(path)}")
    if labels.size and (labels.min() < 0 or labels.max() >= ENTRY.num_classes):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}; expected "
                        f"0..{ENTRY.num_classes - 1}. {_fix(path)}")
    return data.reshape(-1, *ENTRY.shape), labels


def candidate_dirs(root: Path | None) -> list[Path]:
    """Where the batches may be: `root` itself, `root/cifar-10-batches-py`, `root/cifar10[/...]`;
    without root, default_data_dir()/cifar10[/cifar-10-batches-py]."""
    if root is None:
        base = default_data_dir() / ENTRY.cache
        return [base, base / DIRNAME]
    root = Path(root)
    return [root, root / DIRNAME, root / ENTRY.cache, root / ENTRY.cache / DIRNAME]


def find_dir(root: Path | None) -> Path | None:
    for d in candidate_dirs(root):
        if any((d / name).is_file() for name in MARKERS):
            return d
    return None


def cache_problem(directory: Path) -> str | None:
    """Why the batches in `directory` cannot be loaded, judged cheaply (no unpickling): a missing file, or one
    that does not start and end as a pickle does (truncated or foreign); None when they look complete."""
    directory = Path(directory)
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (directory / name).is_file()]
    if missing:
        return f"incomplete: {', '.join(missing)} missing"
    for name in (*TRAIN_FILES, TEST_FILE):
        try:
            with open(directory / name, "rb") as f:
                head = f.read(2)
                f.seek(-1, os.SEEK_END)
                tail = f.read(1)
        except OSError as err:  # too short to seek back one byte, or unreadable
            return f"{name}: unreadable ({err.strerror or err})"
        if head[:1] != b"\x80" or tail != b".":  # PROTO opcode first, STOP opcode last
            return f"{name}: not a complete pickle (truncated or corrupt)"
    return None


def offline_problem(root: Path | None = None) -> str | None:
    """Why the copy `locate` finds cannot be loaded (a cheap look at the files), or None."""
    found = find_dir(root)
    if found is not None:
        problem = cache_problem(found)
        return f"{found}: {problem}" if problem else None
    archive = _placed_archive(root)
    if archive is not None:
        try:
            with open(archive, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return f"{archive}: not a gzip archive"
        except OSError as err:
            return f"{archive}: unreadable ({err.strerror or err})"
    return None


def locate(root: Path | None = None) -> str | None:
    found = find_dir(root)
    if found is not None:
        return f"cache:{found}"
    archive = _placed_archive(root)
    return f"archive:{archive}" if archive is not None else None


def extract_safely(archive: Path, directory: Path) -> Path:
    """Extract the CIFAR archive into directory/cifar-10-batches-py, refusing links, absolute paths, '..'
    and anything outside that folder; extraction goes to a staging folder that is renamed when complete."""
    archive, directory = Path(archive), Path(directory)
    fix = f"Fix: delete {archive} and download again from {URL}."
    dest = directory / DIRNAME
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    parts = PurePosixPath(m.name).parts
                    if m.name.startswith("/") or ".." in parts or not parts or parts[0] != DIRNAME:
                        raise DataError(f"{archive}: member {m.name!r} lies outside {DIRNAME}/; refusing it. {fix}")
                    if not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: member {m.name!r} is a link or device; refusing it. {fix}")
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **extra)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"{archive}: cannot extract ({err}); expected a gzip tar archive. {fix}") from None
        if not (staging / DIRNAME).is_dir():
            raise DataError(f"{archive}: has no {DIRNAME}/ folder. {fix}")
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        os.replace(staging / DIRNAME, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def download_cifar10(directory: Path, url: str | None = None, md5: str | None = MD5, timeout: float = 60.0) -> Path:
    """Fetch and verify the archive, extract it into directory/cifar-10-batches-py, then drop the archive."""
    directory = Path(directory)
    url = url or os.environ.get(URL_ENV) or URL
    archive = fetch([url], directory / ARCHIVE, md5, timeout=timeout)
    try:
        return extract_safely(archive, directory)
    finally:
        archive.unlink(missing_ok=True)


def _placed_archive(root: Path | None) -> Path | None:
    """An archive the user put in the dataset directory (offline installs): extracted, never deleted."""
    directory = Path(root) if root is not None else default_data_dir() / ENTRY.cache
    return directory / ARCHIVE if (directory / ARCHIVE).is_file() else None


def load_cifar10(
    root: Path | None = None,
    download: bool = True,
    *,
    url: str | None = None,
    md5: str | None = MD5,
    timeout: float = 60.0,
) -> dict:
    found = find_dir(root)
    if found is not None:
        source = f"cache:{found}"
    else:
        target = Path(root) if root is not None else default_data_dir() / ENTRY.cache
        archive = _placed_archive(root)
        if archive is not None:
            fix = f"Fix: delete {archive} (and load again to download it), or replace it with the standard archive."
            verify_file(archive, md5, fix)
            found = extract_safely(archive, target)
            source = f"archive:{archive}"
        elif not download:
            raise DataError(
                f"CIFAR-10: no {DIRNAME} batches in {' or '.join(map(str, candidate_dirs(root)))}; expected "
                f"data_batch_1..5 and test_batch. Fix: put {URL} (as {ARCHIVE}) or its extracted folder in "
                f"{target}, pass the directory that holds them as root (--root), or allow a download."
            )
        else:
            found = download_cifar10(target, url, md5, timeout)
            source = f"download:{found}"
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (found / name).is_file()]
    if missing:
        raise DataError(f"{found}: incomplete CIFAR-10 copy, missing {', '.join(str(found / m) for m in missing)}; "
                        f"expected data_batch_1..5 and test_batch. {_fix(found / missing[0])}")
    train = [read_batch(found / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(found / TEST_FILE)
    return dict(
        train_x=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=torch.from_numpy(test_x.copy()),  # the unpickled array may be read-only
        test_y=torch.from_numpy(test_y),
        source=source,
    )
