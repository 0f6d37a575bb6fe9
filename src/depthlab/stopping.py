"""Stops asked for by a signal (Ctrl-C, SIGTERM, SIGHUP) that a long command must honour.

`depthlab` turns each stop signal into a `Terminated` exception raised in the main thread, so that a sweep
unwinds like Ctrl-C and gives back the runs it holds. Python runs a signal handler between bytecodes, and an
exception raised while a finaliser (a generator's close, a `__del__`) runs is printed and dropped: the stop
would be lost and the sweep would train on. So the handler also records the stop here, and the training loop
calls `check()` at safe points (every epoch, every pack), which raises it again.
"""

from __future__ import annotations

import signal

_requested: int | None = None


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM or SIGHUP), raised in the main thread so that it unwinds like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = int(signum)


def request(signum: int) -> None:
    """Record a stop and raise it (the signal handler)."""
    global _requested
    _requested = int(signum)
    raise Terminated(signum)


def check() -> None:
    """Raise the recorded stop, if any (a no-op otherwise)."""
    if _requested is not None:
        raise Terminated(_requested)


def clear() -> None:
    global _requested
    _requested = None
