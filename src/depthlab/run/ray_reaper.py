"""A local Ray ends with the process that started it, however that process ends.

`ray.init()` in a process that finds no cluster starts one: its GCS, its raylet, and the agents the raylet starts
(dashboard agent, runtime-env agent). Killed outright (SIGKILL, the out-of-memory killer), the driver takes the GCS
and the raylet with it (Ray sets them to die with their parent), but not the agents: they see the raylet gone and
hang on their way out, and stay running (Ray 2.x). So the driver starts this watcher beside Ray and tells it the
processes Ray started; it reads the driver's pipe until its end, which comes however the driver ends, and then
stops those that still run: SIGTERM, then SIGKILL after GRACE_SECONDS. A process is named by its pid and its start
time, so a pid the system has since given to another process is left alone.

Processes are read from /proc (Linux); elsewhere none are found and no watcher starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_SECONDS = 2.0

Process = tuple[int, int]  # (pid, start time in clock ticks after boot)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a running process, from /proc/PID/stat; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (command) ": the command may hold spaces
    if fields[0] == "Z":  # a zombie has ended: nothing to stop
        return None
    return int(fields[1]), int(fields[19])


def processes_below(*roots: int) -> set[Process]:
    """The processes descended from the processes `roots` (children, theirs, ...), each with its start time."""
    parents = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat
    found, frontier = set(), list(roots)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and (pid, start) not in found:
                found.add((pid, start))
                frontier.append(pid)
    return found


class Reaper:
    """The watcher of `processes` that a driver started, and of the processes they start (`refresh` adds those
    started since); `close` once they have been stopped the usual way (it stops any left)."""

    def __init__(self, processes: set[Process]):
        # run as a file (it imports only the standard library): found wherever depthlab was imported from; in a
        # session of its own, so that the terminal's Ctrl-C or a kill of the driver's process group spares it
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True, text=True)
        self.roots = set(processes)
        self._send(self.roots)

    def refresh(self) -> None:
        self._send(processes_below(*(pid for pid, _ in self.roots)))

    def _send(self, processes: set[Process]) -> None:
        try:
            self.proc.stdin.write(json.dumps(sorted(processes)) + "\n")
            self.proc.stdin.flush()
        except OSError:  # the watcher has gone (killed): the sweep goes on without it
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=GRACE_SECONDS + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop(processes: set[Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each of `processes` that still runs, then SIGKILL those still running after `grace` seconds."""
    alive = lambda: [pid for pid, start in processes if (_stat(pid) or (0, None))[1] == start]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except OSError:  # ended meanwhile
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def main() -> None:
    """The watcher: each line of stdin adds processes to watch; at its end (the driver closed it, or ended), stop
    them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ended by its pipe only
    watched: set[Process] = set()
    for line in sys.stdin:
        watched.update(tuple(p) for p in json.loads(line))
    stop(watched)


if __name__ == "__main__":
    main()
