"""Corrupted test sets on disk: made once by `depthlab.data.corrupt`, kept as uint8 with a checksum.

A set is named by what determines it: the dataset, the corruption, its severity, the seed, a digest of the clean
images it was made from (so another subset or copy is another set) and the corruption code's version. Each set
is two files in `cache_dir()`: NAME.npy (uint8 N×C×H×W) and NAME.json (what it is, and the sha256 of the .npy).
The .npy is written first and the .json last, each under a temporary name renamed into place, so a killed
process never leaves a set that looks complete. A set whose checksum fails is made again. A writer holds a lock
on its temporary file (`.NAME.npy.XXXX.part`) while it writes; the lock dies with the process, even with a
SIGKILL, so the next use removes the parts that no process holds (and that are not fresh: a part is locked just
after it is created), and never a part another process is still writing.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from depthlab.data import corrupt
from depthlab.data.download import default_data_dir
from depthlab.errors import DataError
from depthlab.outputs import replaced

try:
    import fcntl
except ImportError:  # not POSIX: whether a part's writer is alive cannot be told, so parts are kept
    fcntl = None

STALE_PART_SECONDS = 60  # a part no writer holds is a killed writer's once it is this old (created, not yet locked)


def cache_dir(root=None) -> Path:
    """Where corrupted sets live: ROOT/corrupt/sets (ROOT: `root`, $DEPTHLAB_DATA or ~/.cache/depthlab)."""
    return Path(root if root is not None else default_data_dir()) / "corrupt" / "sets"


def images_digest(images: np.ndarray) -> str:
    """16 hex digits of the sha256 of the images' shape and bytes."""
    digest = hashlib.sha256(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:16]


def set_name(dataset: str, name: str, severity: int, seed: int, digest: str) -> str:
    return f"{dataset}-{name}-s{severity}-seed{seed}-{digest}-v{corrupt.CORRUPT_VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    """`write(binary file)` into a file beside `path`, renamed over it once complete (depthlab.outputs.replaced:
    the usual file mode, not mkstemp's 0600), holding the temporary file's lock while it writes."""
    with replaced(path) as temp, open(temp, "wb") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes, or when this process dies
        write(f)


def _remove_stale_parts(folder: Path) -> None:
    """Remove the temporary files of writers killed mid-write: the parts older than STALE_PART_SECONDS whose lock
    no process holds."""
    if fcntl is None or not folder.is_dir():
        return
    for part in folder.glob(".*.part"):
        try:
            if time.time() - part.stat().st_mtime < STALE_PART_SECONDS:
                continue
            with open(part, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is at work
                part.unlink()
        except OSError:  # removed meanwhile by another process, or a read-only folder: nothing to do
            continue


def problem(meta_path: Path) -> str | None:
    """Why the set described by `meta_path` cannot be used (unreadable, missing data, checksum), or None."""
    try:
        meta = json.loads(meta_path.read_text())
        data = meta_path.with_suffix(".npy")
        if not data.is_file():
            return f"{data.name} is missing"
        got = _sha256(data)
        return None if got == meta["sha256"] else f"sha256 of {data.name} is {got[:12]}..., expected " \
                                                     f"{meta['sha256'][:12]}..."
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{meta_path.name} is unreadable ({err})"


def corrupted_set(images: np.ndarray, dataset: str, name: str, severity: int, seed: int, root=None,
                  log=None) -> np.ndarray:
    """The corrupted copy of `images` (uint8 N×C×H×W): read from the cache when a verified copy is there,
    otherwise made (and cached). `log` hears about a damaged copy being made again."""
    images = np.ascontiguousarray(images)
    suite = corrupt.suite_of(dataset)
    folder = cache_dir(root)
    base = set_name(dataset, name, severity, seed, images_digest(images))
    meta_path, data_path = folder / f"{base}.json", folder / f"{base}.npy"
    _remove_stale_parts(folder)
    if meta_path.is_file():
        why = problem(meta_path)
        if why is None:
            return np.load(data_path, allow_pickle=False)
        if log:
            log(f"corrupted set {base}: {why}; making it again")
    out = corrupt.corrupt_images(images, suite, name, severity, seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(data_path, lambda f: np.save(f, out, allow_pickle=False))
        meta = dict(dataset=dataset, suite=suite, corruption=name, severity=int(severity), seed=int(seed),
                    source_digest=images_digest(images), shape=list(out.shape), dtype="uint8",
                    version=corrupt.CORRUPT_VERSION, sha256=_sha256(data_path))
        _write_atomic(meta_path, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    except OSError as err:  # a read-only data directory: the set is still good for this process
        if log:
            log(f"cannot cache the corrupted set {base} in {folder}: {err.strerror or err}")
    return out


def cached_sets(root=None) -> list[dict]:
    """Every cached set's description plus "problem" (None when its checksum verifies), sorted by name."""
    folder = cache_dir(root)
    out = []
    for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta.update(name=meta_path.stem, problem=problem(meta_path))
        out.append(meta)
    return out


def verify_cache(root=None) -> list[dict]:
    """The cached sets (see `cached_sets`); DataError naming every damaged one and the fix."""
    sets = cached_sets(root)
    bad = [s for s in sets if s["problem"]]
    if bad:
        raise DataError("damaged corrupted sets in " + str(cache_dir(root)) + ": "
                        + "; ".join(f"{s['name']}: {s['problem']}" for s in bad)
                        + ". Fix: delete those files; `depthlab shift` makes them again")
    return sets
