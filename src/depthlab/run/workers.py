"""Packs trained side by side on a CPU: W worker threads in one process, each with its share of the cores.

Why: the demo's layers (16 channels on 14×14 maps, batches of 100) are too small for one operator to keep two
cores busy. A training step on one intra-op thread runs almost as fast as on two, so two packs trained at once,
one per core, get through more model-samples than one pack on both: 1.14× in the training steps of the demo's
shapes (median of three rounds of `bench/cpu_throughput.py`, two AVX-512 cores, bf16; single shapes 1.05-1.5×).
End to end the demo gains less, 12.9 s against 13.3 s: its evaluations and start-up do not overlap as well.
(Before freed memory was kept, depthlab.run.allocator, two workers also hid page faults: 14.0 s against 16.5 s.)
PyTorch releases the GIL inside its operators, so threads suffice: one process keeps one copy of the data and
pays start-up once.

What a run learns does not depend on it: each pack trains as it would alone, float32 weights are the same bit
for bit on one intra-op thread or two, and evaluations' sums agree to float32 round-off
(tests/sweep/test_workers.py); bf16 results differ at round-off, as bf16 does between machines. Seeded models are
built one at a time (depthlab.models.rng). Each run records `threads` (intra-op threads) and `workers` in its env.

On a GPU one worker feeds the device (packing is what fills it; more are refused). With more than two cores the
default stays at two workers, each with half the cores: measured on two cores only, so `--workers N` lets a
machine choose.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterable

import torch

from depthlab.errors import DepthlabError

CPU_WORKERS = 2  # packs a CPU trains at once by default (with at least two cores and two packs to train)


class Stopped(BaseException):
    """Raised in a worker by `check` once the sweep is stopping (Ctrl-C, a stop signal or another worker's
    error): a BaseException, so that the handlers that record a failed pack let it through."""


def default_workers(device: torch.device, runs: int, asked: int | None = None) -> int:
    """How many packs train at once: `asked`, else CPU_WORKERS on a CPU with two cores or more (torch's
    intra-op threads), else one; never more than there are runs to train."""
    if asked is not None:
        if asked < 1:
            raise ValueError(f"workers must be at least 1, not {asked}")
        if asked > 1 and device.type != "cpu":
            raise DepthlabError(f"--workers {asked}: side by side is for CPUs; on {device.type} one worker's "
                                "packs fill the device (give --max-pack instead)")
        return max(1, min(asked, runs))
    if device.type != "cpu":
        return 1
    return max(1, min(CPU_WORKERS, torch.get_num_threads(), runs))


def threads_per_worker(workers: int) -> int:
    """The intra-op threads each of `workers` trains with: torch's threads shared out, at least one each."""
    return max(1, torch.get_num_threads() // workers)


@contextmanager
def intra_op_threads(threads: int):
    """Torch's intra-op threads set to `threads` for the duration, then restored. Set before the workers
    start: each thread takes the count on its first parallel operator."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class Workers:
    """`run(items, work)` calls `work(item)` for every item, in order of the shared iterator `items`, on
    `workers` threads (in the calling thread itself when there is one worker).

    The calling thread only waits, so that Ctrl-C and stop signals land in it; it then sets the stop, waits for
    the workers to reach their next `check()` (a training step: work calls it often) and re-raises. The first
    exception a worker raises stops the others the same way and is re-raised in the calling thread."""

    def __init__(self, workers: int):
        self.workers = workers
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []

    def check(self) -> None:
        """Raise `Stopped` in a worker once the sweep is stopping."""
        if self._stop.is_set():
            raise Stopped()

    def run(self, items: Iterable, work: Callable) -> None:
        if self.workers == 1:
            for item in items:
                work(item)
            return
        iterator = iter(items)
        ended = [threading.Event() for _ in range(self.workers)]
        # Not daemons, and waited for through events: a thread still inside torch when the interpreter exits
        # aborts it (pytorch/pytorch#38228), and a Thread.join() that Ctrl-C interrupts may report a running
        # thread as ended (CPython's _wait_for_tstate_lock race).
        threads = []
        try:  # a stop may land while a thread starts: the started ones must be stopped too
            for i, end in enumerate(ended):
                thread = threading.Thread(target=self._work, args=(iterator, work, end), name=f"depthlab-worker-{i}")
                threads.append(thread)
                thread.start()
            for end in ended:
                while not end.wait(0.2):  # a bare wait() would hold Ctrl-C back until the worker ends
                    pass
        except BaseException:
            self._stop.set()  # a thread that began too late to be waited for stops before its first item
            _wait_through_stops([end for thread, end in zip(threads, ended) if thread.ident is not None])
            raise
        if self._errors:
            raise self._errors[0]

    def _work(self, iterator, work: Callable, ended: threading.Event) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:  # a generator is not thread-safe, and the items may be made lazily
                    item = next(iterator, _END)
                if item is _END:
                    return
                self.check()  # stopped while this worker waited for its item
                work(item)
        except Stopped:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread, which re-raises it
            with self._lock:
                self._errors.append(err)
            self._stop.set()
        finally:
            ended.set()


_END = object()


def _wait_through_stops(ended: list[threading.Event]) -> None:
    """Wait until these workers have ended, whatever more Ctrl-C presses come meanwhile: the caller gives their
    runs back next, which must not happen while one of them still trains (it would claim again)."""
    for end in ended:
        while True:
            try:
                if end.wait(0.2):
                    break
            except KeyboardInterrupt:
                continue
