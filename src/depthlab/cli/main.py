"""Entry point of the `depthlab` command.

Each command module registers its subcommands with `register(subparsers)` and sets `func` on its parser;
`main` parses and calls it. Errors meant for the user (`DepthlabError`) print one clear line and exit 2.
Ctrl-C and SIGTERM (a batch scheduler's or `kill`'s stop) unwind the same way: a sweep releases the runs it
holds, so a restart trains them at once, and everything finished is already in the store.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from depthlab import __version__
from depthlab.errors import DepthlabError

# Command modules under depthlab.cli, in the order their commands appear in --help.
COMMAND_MODULES = ["data", "run", "results", "report", "analyse"]


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except DepthlabError as err:
        print(f"depthlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"depthlab: {'terminated' if isinstance(stop, Terminated) else 'interrupted'}; everything finished "
              "so far is saved.", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
