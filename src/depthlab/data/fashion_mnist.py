"""Fashion-MNIST, resolved offline first: Zalando's drop-in replacement for MNIST, in MNIST's IDX format.

Sources, in order (each can be switched off with `sources=`):
  1. cache    - the four IDX gz files in the cache directory (`root`, `root/fashion_mnist`, or
                default_data_dir()/fashion_mnist);
  2. package  - the copy the Debian package `dataset-fashion-mnist` installs (/usr/share/datasets/fashion-mnist);
  3. download - the four files from the mirrors into the cache directory.
Every file is verified by the sha256 of its decompressed bytes: Debian recompresses the .gz files, so their own
checksums differ from upstream's while the IDX bytes inside are the same. The facts (shape, sizes, checksums,
package, mirrors) are its entry in depthlab.data.registry; the IDX format is read by depthlab.data.idx.
"""

from __future__ import annotations

from pathlib import Path

from depthlab.data import idx, registry

SOURCES = idx.SOURCES
ENTRY = registry.entry("fashion_mnist")
MIRRORS_ENV = "DEPTHLAB_FASHION_MNIST_MIRRORS"


def cache_dirs(root: Path | None) -> list[Path]:
    return idx.cache_dirs(root, ENTRY)


def package_dir() -> Path | None:
    """The folder the Debian package installs, when it holds the four files (not yet verified); else None."""
    return idx.find_dir([Path(ENTRY.packages[0].path)])


def found_offline(root: Path | None) -> tuple[Path, str] | None:
    """(the folder of the first offline copy, its source label), or None."""
    found = idx.find_dir(cache_dirs(root))
    if found is not None:
        return found, f"cache:{found}"
    found = package_dir()
    return (found, f"package:{ENTRY.packages[0].name}") if found is not None else None


def locate(root: Path | None = None) -> str | None:
    """Where Fashion-MNIST would come from without a network ("cache:DIR", "package:dataset-fashion-mnist")."""
    found = found_offline(root)
    return found[1] if found else None


def offline_problem(root: Path | None = None) -> str | None:
    """Why the copy `locate` finds cannot be loaded (a cheap look at headers and sizes), or None."""
    found = found_offline(root)
    problem = idx.dir_problem(found[0], ENTRY) if found else None
    return f"{found[0]}: {problem}" if problem else None


def how_to_get(target: Path) -> str:
    package = ENTRY.packages[0]
    return (f"Fix: {package.install} (it installs the files in {package.path}), or put {', '.join(idx.FILES)} in "
            f"{target}, or allow a download where a network exists (from {ENTRY.remote[0]}; ${MIRRORS_ENV} "
            "sets the mirrors).")


def load_fashion_mnist(
    root: Path | None = None,
    download: bool = True,
    *,
    sources=SOURCES,
    mirrors=None,
    checksums: dict[str, str | None] | None = None,
    timeout: float = 60.0,
) -> dict:
    """Load Fashion-MNIST from the first source that has it; one DataError naming what was tried, and the three
    ways to get it, when none does. `checksums` replaces the registry's sha256 of a file's decompressed bytes
    (None: unchecked)."""
    package = ENTRY.packages[0]
    return idx.load_first(
        ENTRY, root, download, sources, title="Fashion-MNIST", installed=package_dir,
        read_installed=lambda found: idx.read_dir(found, ENTRY, checksums),
        not_installed=f"{package.name} is not installed (no files in {package.path})", fix=how_to_get,
        mirrors=mirrors, mirrors_env=MIRRORS_ENV, checksums=checksums, timeout=timeout)
