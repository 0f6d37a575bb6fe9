"""The watcher that ends a local Ray's processes with the driver that started them (depthlab.run.ray_reaper), on
real processes: a driver killed outright, and a pid that now names another process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthlab.run.ray_reaper import Reaper, processes_below

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="processes are read from /proc")

# A driver that starts a process which outlives it (as Ray's agents outlive a killed raylet), has the watcher
# watch it, and waits to be killed.
DRIVER = """
import os, subprocess, sys, time
from depthlab.run.ray_reaper import Reaper, processes_below

before = processes_below(os.getpid())
agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
reaper = Reaper(processes_below(os.getpid()) - before)
print(agent.pid, flush=True)
time.sleep(120)
"""


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended and not yet reaped by its new parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_what_a_killed_driver_started_is_stopped_and_nothing_else():
    bystander = sleeper()  # not the driver's: never touched
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        agent = int(driver.stdout.readline())
        assert running(agent)
        driver.kill()  # SIGKILL: nothing of the driver runs after it
        driver.wait(timeout=30)
        deadline = time.monotonic() + 20
        while running(agent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(agent) and running(bystander.pid)
    finally:
        for proc in (driver, bystander):
            proc.kill()
            proc.wait(timeout=30)
        driver.stdout.close()


def test_a_pid_that_names_another_process_now_is_left_alone():
    other = sleeper()
    try:
        reaper = Reaper({(other.pid, start_time(other.pid) + 1)})  # the watched process, started another time
        reaper.close()
        assert running(other.pid)
        watched = Reaper({(other.pid, start_time(other.pid))})
        watched.close()  # closed with the process still running: it is stopped
        assert other.wait(timeout=10) == -signal.SIGTERM
    finally:
        other.kill()
        other.wait(timeout=30)


def test_processes_below_finds_children_and_theirs():
    outer = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
                              "print(p.pid, flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    inner = int(outer.stdout.readline())
    try:
        assert {pid for pid, _ in processes_below(os.getpid())} >= {outer.pid, inner}
        assert processes_below(outer.pid) == {(inner, start_time(inner))}
    finally:
        os.kill(inner, signal.SIGKILL)
        outer.kill()
        outer.wait(timeout=30)
        outer.stdout.close()
