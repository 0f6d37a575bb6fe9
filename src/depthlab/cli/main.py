"""Entry point of the `depthlab` command.

Each command module registers its subcommands with `register(subparsers)` and sets `func` on its parser;
`main` parses and calls it. Errors meant for the user (`DepthlabError`) print one clear line and exit 2.
Ctrl-C, SIGTERM (a batch scheduler's or `kill`'s stop) and SIGHUP (a closed terminal or ssh session) unwind the
same way: a sweep releases the runs it holds, so a restart trains them at once, and everything finished is
already in the store. They exit 130, 143 and 129 (128 + the signal's number, as a shell reports a process the
signal killed); a SIGHUP that was ignored when the command started (`nohup`) stays ignored.

A reader that stops early (`depthlab results | head -1`) ends the command quietly with exit 141, what a shell
reports for a process that SIGPIPE stopped (`set -o pipefail` sees it as usual). A full disk prints one line
naming it and exits 1.

Building the parser stays light, so that `--help`, `status` and `results` start at once: a command module imports
torch, matplotlib and scipy (and the modules that import them) only in the functions that run its commands
(tests/cli/test_startup.py checks).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import select
import signal
import sqlite3
import sys
import threading

from depthlab import __version__, stopping
from depthlab.errors import DepthlabError
from depthlab.stopping import Terminated

# Command modules under depthlab.cli, in the order their commands appear in --help.
COMMAND_MODULES = ["data", "run", "study", "results", "report", "analyse", "kernels", "prune", "shift"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthlab",
        description="Deep and narrow, or shallow and wide? Train residual CNNs that trade depth for width "
        "at equal parameters, by the thousand, and compare them with proper statistics.",
    )
    parser.add_argument("--version", action="version", version=f"depthlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"depthlab.cli.{name}").register(subparsers)
    return parser


def _raise_terminated(signum, frame):
    stopping.request(signum)


# The stop signals that unwind like Ctrl-C, and how the stop is reported.
STOP_SIGNALS = {signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):  # not on Windows
    STOP_SIGNALS[signal.SIGHUP] = "hung up (SIGHUP)"
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


def _install_stop_handlers() -> dict:
    """Make each stop signal raise `Terminated`; returns the previous handlers. A signal ignored at start stays
    ignored: `nohup depthlab run ...` must survive its terminal."""
    previous = {}
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _raise_terminated)
    return previous


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, sqlite3.OperationalError):
        return "database or disk is full" in str(err)
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (a pipe or socket in error): a BrokenPipeError from anything else, a
    socket of a backend say, is a real error and must not pass for a reader that stopped early."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no descriptor: trust the error
        return True


def _quiet_stdout() -> None:
    """Point stdout at devnull: the reader is gone, and the flush at exit would fail (and print) again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a descriptor
        pass
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = _install_stop_handlers() if in_main_thread else {}
    stopping.clear()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except DepthlabError as err:
        print(f"depthlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        what = STOP_SIGNALS.get(stop.signum, "terminated") if isinstance(stop, Terminated) else "interrupted"
        print(f"depthlab: {what}; everything finished so far is saved.", file=sys.stderr)
        return 128 + (stop.signum if isinstance(stop, Terminated) else signal.SIGINT)
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (sqlite3.OperationalError, OSError) as err:
        if not _disk_full(err):
            raise
        if isinstance(err, OSError):
            what = f"cannot write {err.filename}" if err.filename else "cannot write"
            detail = err.strerror
        else:
            what, detail = "cannot write the results store", err
        print(f"depthlab: error: out of disk space: {what} ({detail}); free some space and run the command again",
              file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
