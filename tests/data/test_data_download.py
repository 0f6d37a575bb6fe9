import hashlib

import pytest

from depthlab.data.download import default_data_dir, fetch, md5_file, verify_file
from depthlab.errors import DataError


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("DEPTHLAB_DATA")
    assert default_data_dir().name == "depthlab"


def test_fetch_verifies_and_renames(tmp_path, serve):
    (tmp_path / "srv").mkdir()
    payload = b"hello" * 1000
    (tmp_path / "srv" / "f.bin").write_bytes(payload)
    url = serve(tmp_path / "srv")
    dest = tmp_path / "cache" / "f.bin"
    fetch([url + "f.bin"], dest, hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]  # no temporary left


def test_fetch_falls_back_to_next_mirror(tmp_path, serve):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(b"data")
    url = serve(tmp_path / "srv")
    dest = tmp_path / "cache" / "f.bin"
    fetch([url + "missing.bin", "http://127.0.0.1:9/f.bin", url + "f.bin"], dest, md5_file(tmp_path / "srv" / "f.bin"))
    assert dest.read_bytes() == b"data"


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, serve):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(b"not what was expected")
    url = serve(tmp_path / "srv")
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(DataError) as err:
        fetch([url + "f.bin"], dest, "0" * 32)
    msg = str(err.value)
    assert str(dest) in msg and "0" * 32 in msg and "Fix" in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_verify_file(tmp_path):
    f = tmp_path / "a"
    with pytest.raises(DataError, match="missing"):
        verify_file(f, None, "Fix: x")
    f.write_bytes(b"abc")
    verify_file(f, hashlib.md5(b"abc").hexdigest(), "Fix: x")
    with pytest.raises(DataError, match="expected 0+"):
        verify_file(f, "0" * 32, "Fix: x")
