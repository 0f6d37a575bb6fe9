"""Where dataset files live, and fetching them with a checksum.

A fetched file is written to a temporary name in the destination directory, hashed while it streams, and
renamed into place only once its checksum matches: a reader never sees a half-written or unverified file, and a
failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from depthlab.errors import DataError

CHUNK = 1 << 20


def default_data_dir() -> Path:
    """The data directory: $DEPTHLAB_DATA, else ~/.cache/depthlab. Each dataset uses a subdirectory."""
    env = os.environ.get("DEPTHLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "depthlab"


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, md5: str | None, fix: str) -> None:
    """Raise DataError unless `path` exists and (when `md5` is given) has that md5."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file missing. {fix}")
    if md5 is not None:
        got = md5_file(path)
        if got != md5:
            raise DataError(f"{path}: md5 is {got}, expected {md5} (corrupt or not the standard file). {fix}")


def _fetch_one(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    """Download `url` to `dest` via a temporary file in dest's directory; rename only when verified."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 is {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(urls: list[str], dest: Path, md5: str | None, *, timeout: float = 60.0) -> Path:
    """Download the first of `urls` that works and matches `md5` to `dest`. DataError if none does.

    Each URL is a mirror of the same file; a failure (network, HTTP error, checksum) moves on to the next.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch_one(url, dest, md5, timeout)
            return dest
        except DataError as err:
            failures.append(str(err))
        # URLError/OSError: network, HTTP status, timeout; HTTPException: a connection cut mid-file;
        # ValueError: a malformed URL.
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            failures.append(f"{url}: {err}")
    tried = "; ".join(failures) or "no URL given"
    expected = f" (expected md5 {md5})" if md5 is not None else ""
    raise DataError(
        f"{dest}: could not download a verified copy{expected}. Tried: {tried}. "
        f"Fix: check the network or the mirror list, or place the standard file at {dest} yourself."
    )
