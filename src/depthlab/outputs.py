"""Files a command writes for the user (CSV, JSON, Parquet, the HTML report, figures, a merged model): never over
a results store, its journal files or its weights, and never half-written.

`check_out(out, store)` refuses, before anything is read or computed, an output path that is the store itself,
its `-wal`, `-shm` or `-journal` file, anything inside its weights folder, an existing directory or a special file
(a device, a pipe, a socket): one line naming the path and what it is. `replaced(out)` gives a temporary file in
the same folder and renames it over `out` only once it is complete, so a kill, a full disk or a failing writer
leaves the previous file as it was (a rename within a folder is atomic on POSIX).
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from depthlab.errors import DepthlabError

STORE_SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's files beside a store
WEIGHTS_SUFFIX = ".weights"  # the store's folder of saved weights (depthlab.results.weights)


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def store_part(out, store) -> str | None:
    """What of `store` the path `out` names ("the results store", "its write-ahead log", "its weights folder"),
    or None. Compared after resolving links, so a relative path or a symlink to the store is caught too."""
    target, base = _real(out), _real(store)
    if target == base:
        return "the results store"
    for suffix in STORE_SIDE_FILES:
        if target == base + suffix:
            return f"the results store's {suffix[1:]} file"
    weights = base + WEIGHTS_SUFFIX
    if target == weights or target.startswith(weights + os.sep):
        return "the results store's weights folder"
    return None


def check_out(out, store=None, *, what: str = "--out") -> str:
    """`out` as a path string, or DepthlabError (exit 2) when writing there would destroy data or cannot give a
    file: the store or its files (`store_part`), an existing directory, or a special file."""
    path = os.fspath(out)
    if store is not None:
        part = store_part(path, store)
        if part is not None:
            raise DepthlabError(f"{what} {path} is {part} ({os.fspath(store)}); writing there would destroy "
                                f"results: choose another file")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise DepthlabError(f"{what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DepthlabError(f"{what} {path} is a directory; give a file name inside it")
    if not stat.S_ISREG(mode):
        raise DepthlabError(f"{what} {path} is a special file (a device, pipe or socket), not a file to write")
    return path


@contextmanager
def replaced(out) -> Iterator[Path]:
    """A temporary path beside `out` to write to; renamed over `out` when the block ends without an error, removed
    otherwise (the previous `out`, if any, is untouched). A new file gets the usual mode (0666 less the umask)."""
    out = Path(os.fspath(out))
    # an OSError (a read-only folder, a full disk) reaches the caller as it is: each says what it was writing
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        _settle_mode(temp, out)
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _settle_mode(temp: Path, out: Path) -> None:
    """mkstemp makes 0600 files; the output gets the mode the old file had, else what open() would give."""
    try:
        mode = stat.S_IMODE(os.stat(out).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(temp, mode)
