"""Datasets stored as the four standard IDX `.gz` files (MNIST's format; Fashion-MNIST is a drop-in copy of it).

Reading, checking, verifying and downloading such a set, for every dataset in that format: what differs between
them (shape, classes, file checksums, mirrors, the name of the cache folder) is read from its registry entry.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from depthlab.data.download import default_data_dir, fetch, verify_file
from depthlab.data.registry import IDX_FILES as SPLIT_FILES, IDX_NAMES as FILES, Entry
from depthlab.errors import DataError, SpecError


# ---------------------------------------------------------------------------------------------- one file


def decompress(path: Path, fix: str) -> bytes:
    """The bytes of an IDX file (gunzipped if the name ends in .gz)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file missing; expected an IDX file. {fix}") from None
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot decompress ({err}); expected a complete gzip IDX file. {fix}") from None


def parse_idx(raw: bytes, ndim: int, path: Path, fix: str) -> np.ndarray:
    """The array in the bytes of an unsigned-byte IDX file, after checking its magic, dims and size."""
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


def read_idx(path: Path, ndim: int, fix: str = "") -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped if the name ends in .gz), checking magic, dims and size."""
    path = Path(path)
    fix = fix or f"Fix: delete {path} and load again (it is downloaded again), or replace it with the standard file."
    return parse_idx(decompress(path, fix), ndim, path, fix)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the inverse of read_idx; used to build test fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def gz_problem(path: Path, ndim: int) -> tuple[str | None, tuple[int, ...]]:
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


# ---------------------------------------------------------------------------------------------- a set of four


def check_split(images: np.ndarray, labels: np.ndarray, where: str, fix: str, entry: Entry) -> None:
    side = entry.shape[1:]
    if images.ndim != 3 or images.shape[1:] != side:
        raise DataError(f"{where}: images have shape {images.shape}; expected (N, {side[0]}, {side[1]}). {fix}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{where}: {labels.shape} labels for {images.shape[0]} images; expected one each. {fix}")
    if labels.size and int(labels.max()) >= entry.num_classes:
        raise DataError(f"{where}: label {int(labels.max())} found; expected labels 0-{entry.num_classes - 1}. "
                        f"{fix}")


def digests(entry: Entry, checksums: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """The digest each file must have: the registry's, where `checksums` does not replace it (None: unchecked)."""
    return {**entry.checksums.files, **(checksums or {})}


def verify_content(path: Path, raw: bytes, entry: Entry, digest: str | None, fix: str) -> None:
    """DataError unless the decompressed bytes `raw` of `path` have `digest` (where the registry's checksums are of
    the decompressed bytes; otherwise the file itself was verified before it was read)."""
    if digest is None or not entry.checksums.decompressed:
        return
    got = hashlib.new(entry.checksums.algorithm, raw).hexdigest()
    if got != digest:
        raise DataError(f"{path}: {entry.checksums.algorithm} of its decompressed bytes is {got}, expected {digest} "
                        f"(corrupt or not the standard {entry.name} file). {fix}")


def _verify_file(path: Path, entry: Entry, digest: str | None, fix: str) -> None:
    """Check a file before it is read: its md5 where the registry's checksums are of the files as stored, else
    only that it exists (its content is checked once decompressed)."""
    verify_file(path, None if entry.checksums.decompressed else digest, fix)


def read_dir(directory: Path, entry: Entry, checksums: dict[str, str | None] | None = None) -> dict[str, np.ndarray]:
    """Read and verify the four IDX gz files in `directory` (see `digests` for `checksums`)."""
    directory = Path(directory)
    sums = digests(entry, checksums)
    out = {}
    for split, (img_name, lab_name) in SPLIT_FILES.items():
        arrays = []
        for name, ndim in ((img_name, 3), (lab_name, 1)):
            path = directory / name
            fix = f"Fix: delete {path} (it is downloaded again) or replace it with the standard {entry.name} file."
            _verify_file(path, entry, sums.get(name), fix)
            raw = decompress(path, fix)
            verify_content(path, raw, entry, sums.get(name), fix)
            arrays.append(parse_idx(raw, ndim, path, fix))
        fix = f"Fix: replace {directory / img_name} and {directory / lab_name} with the standard {entry.name} files."
        check_split(*arrays, f"{directory / img_name}", fix, entry)
        out[f"{split}_images"], out[f"{split}_labels"] = arrays
    return out


def dir_problem(directory: Path, entry: Entry) -> str | None:
    """Why the four IDX files in `directory` cannot be loaded, judged from their headers and sizes (cheap: no
    checksum, nothing decompressed beyond the headers); None when they look complete."""
    directory = Path(directory)
    for img_name, lab_name in SPLIT_FILES.values():
        img_problem, img_dims = gz_problem(directory / img_name, 3)
        lab_problem, lab_dims = gz_problem(directory / lab_name, 1)
        for name, problem in ((img_name, img_problem), (lab_name, lab_problem)):
            if problem:
                return f"{name}: {problem}"
        if img_dims[1:] != entry.shape[1:]:
            return f"{img_name}: images of {img_dims[1:]}; expected {entry.shape[1]}x{entry.shape[2]}"
        if lab_dims[0] != img_dims[0]:
            return f"{lab_name}: {lab_dims[0]} labels for {img_dims[0]} images"
    return None


def cache_dirs(root: Path | None, entry: Entry) -> list[Path]:
    """Where the cache source looks: `root` itself or `root/<cache>`, else default_data_dir()/<cache>."""
    if root is None:
        return [default_data_dir() / entry.cache]
    return [Path(root), Path(root) / entry.cache]


def find_dir(dirs: list[Path]) -> Path | None:
    """The first of `dirs` holding all four IDX files (not yet verified), or None."""
    for d in dirs:
        if all((d / name).is_file() for name in FILES):
            return d
    return None


def download(directory: Path, entry: Entry, mirrors: list[str], checksums=None, timeout: float = 60.0) -> None:
    """Fetch the missing IDX files into `directory`, all or nothing.

    They are downloaded into a staging directory and moved into place only when every one verified (as
    stored, or once decompressed: `Checksums.decompressed`), so a failure leaves the cache as it was.
    """
    directory = Path(directory)
    sums = digests(entry, checksums)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if not missing:
        return
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".download-"))
    content = entry.checksums.decompressed
    try:
        for name in missing:
            path = fetch([m + name for m in mirrors], staging / name, None if content else sums[name], timeout=timeout)
            if content:
                fix = f"Fix: check the mirrors, or put the standard file in {directory} yourself."
                verify_content(path, decompress(path, fix), entry, sums[name], fix)
        for name in missing:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def mirror_list(mirrors, env: str, entry: Entry) -> list[str]:
    """Mirrors from the argument, else $`env` (comma or space separated), else the registry's."""
    if mirrors is None:
        mirrors = os.environ.get(env, "").replace(",", " ").split() or entry.remote
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def to_result(arrays: dict[str, np.ndarray], source: str) -> dict:
    """The raw splits `depthlab.data.datasets.load` expects: N×1×H×W uint8 images and int64 labels."""
    def images(a):
        return torch.from_numpy(a).unsqueeze(1)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return dict(train_x=images(arrays["train_images"]), train_y=labels(arrays["train_labels"]),
                test_x=images(arrays["test_images"]), test_y=labels(arrays["test_labels"]), source=source)


SOURCES = ("cache", "package", "download")  # where an IDX dataset is looked for, in this order


def load_first(entry: Entry, root: Path | None, allow_download: bool, sources, *, title: str,
               installed: Callable[[], Path | None], read_installed: Callable[[Path], dict[str, np.ndarray]],
               not_installed: str, fix: Callable[[Path], str], mirrors=None, mirrors_env: str = "",
               checksums: dict[str, str | None] | None = None, timeout: float = 60.0) -> dict:
    """The raw splits of an IDX dataset from the first of `sources` that has it: its four files in the cache
    directory, the copy an installed package ships (`installed()` finds it, `read_installed` reads it), or a
    download into the cache (verified). One DataError naming what was tried and `fix(cache dir)` otherwise."""
    sources = (sources,) if isinstance(sources, str) else tuple(sources)
    for s in sources:
        if s not in SOURCES:
            raise SpecError("sources", s, ", ".join(SOURCES))
    tried, dirs = [], cache_dirs(root, entry)
    if "cache" in sources:
        found = find_dir(dirs)
        if found is not None:
            return to_result(read_dir(found, entry, checksums), f"cache:{found}")
        tried.append(f"cache: no complete set of the four IDX gz files in {' or '.join(map(str, dirs))}")
    if "package" in sources:
        path = installed()
        if path is not None:
            return to_result(read_installed(path), f"package:{entry.packages[0].name}")
        tried.append(f"package: {not_installed}")
    if "download" in sources and allow_download:
        try:
            download(dirs[0], entry, mirror_list(mirrors, mirrors_env, entry), checksums, timeout)
        except DataError as err:
            tried.append(f"download: {str(err).rstrip('.')}")
        else:
            return to_result(read_dir(dirs[0], entry, checksums), f"download:{dirs[0]}")
    elif "download" in sources:
        tried.append("download: not allowed (download=False)")
    raise DataError(f"{title}: not found. Tried: {'; '.join(tried)}. {fix(dirs[0])}")
