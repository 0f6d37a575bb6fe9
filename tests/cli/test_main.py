"""The `depthlab` entry point: one clear line and an exit code for ordinary failures, never a traceback."""

import errno
import os
import sqlite3
import subprocess
import sys

import pytest

import depthlab.cli.data as data_cli
from depthlab.cli.main import main


def depthlab(*args):
    return [sys.executable, "-m", "depthlab.cli.main", *map(str, args)]


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(depthlab(*args), capture_output=True, text=True, timeout=120, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("depthlab: error: "), proc.stderr
    return lines[0]


def test_a_directory_as_the_spec_is_one_clear_error(tmp_path):
    proc = run_cli("run", tmp_path, "--store", tmp_path / "s.sqlite", "--dry-run")
    assert proc.returncode == 2
    assert "is a directory, not a spec file" in one_error_line(proc)


@pytest.mark.parametrize("content, says", [(bytes(range(128, 256)) * 4, "not a text file"),
                                           (b"\x00\x01\x02grid: {}\n", "a binary file")], ids=["not-utf8", "nul"])
def test_a_binary_spec_is_one_clear_error(tmp_path, content, says):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    proc = run_cli("run", path, "--store", tmp_path / "s.sqlite", "--dry-run")
    assert proc.returncode == 2
    assert says in one_error_line(proc) and str(path) in proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    # the reader of stdout is gone before anything is written: every write fails with EPIPE (`| head -1`)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(depthlab("data", "list"), stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == b"" and proc.returncode == 141  # 128 + SIGPIPE, as a shell reports it


@pytest.mark.parametrize("error, says", [
    (sqlite3.OperationalError("database or disk is full"), "cannot write the results store (database or disk is full)"),
    (OSError(errno.ENOSPC, "No space left on device", "/store.weights/abc.pt"),
     "cannot write /store.weights/abc.pt (No space left on device)"),
], ids=["sqlite-full", "enospc"])
def test_a_full_disk_is_one_clear_line(monkeypatch, capsys, error, says):
    def full(args):
        raise error

    monkeypatch.setattr(data_cli, "cmd_list", full)
    assert main(["data", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("depthlab: error: out of disk space: ") and says in err


def test_other_database_errors_are_not_called_a_full_disk(monkeypatch):
    def broken(args):
        raise sqlite3.OperationalError("no such table: runs")

    monkeypatch.setattr(data_cli, "cmd_list", broken)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        main(["data", "list"])


@pytest.mark.parametrize("option, value, says", [
    ("--limit", "-1", "argument --limit: must be >= 1, got -1"),
    ("--max-pack", "0", "argument --max-pack: must be >= 1, got 0"),
    ("--name", "", "argument --name: a non-empty string"),
    ("--name", "x" * 201, "at most 200 characters"),
    ("--eval-every", "0", "argument --eval-every: must be >= 1, got 0"),
], ids=["limit-negative", "max-pack-zero", "name-empty", "name-long", "eval-every-zero"])
def test_run_refuses_bad_numbers_and_names(tmp_path, option, value, says):
    proc = run_cli("run", "smoke", "--store", tmp_path / "s.sqlite", option, value)
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "s.sqlite").exists()  # refused before anything was opened or trained


@pytest.mark.parametrize("command", [["run"], ["prune"], ["lesion"], ["erf"]])
def test_help_gives_defaults_of_options_but_not_of_flags(command, capsys):
    """A flag's stored default is not its default behaviour: `--no-complexity` once read "(default: True)"."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "(default: " in text  # options that take a value still give theirs


def test_no_help_gives_a_default_twice():
    """`--eval-every`'s help once read "(default: 1) (default: 1)": a help that states its default, formatted by
    a formatter that adds it too."""
    import argparse
    import re

    from depthlab.cli.main import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())
        assert not re.search(r"(\(default: [^()]*\)) \1", text), name
