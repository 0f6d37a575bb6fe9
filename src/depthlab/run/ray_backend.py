"""The Ray backend: packs trained as Ray tasks (one GPU, or one CPU core, each), for many GPUs or machines.

This process drives the sweep with the local backend's driver (depthlab.run.driver): it claims a pack, submits
it, and records what the task streams back (each epoch as it ends, then the results), so workers need no access
to the SQLite file and the store's guarantees (no run trained twice, nothing finished lost, every held run given
back on a stop) hold exactly as with the local backend. Errors are handled as there too: a pack that fails is
recorded failed and the sweep goes on; a broken device, or data a worker cannot load, stops the sweep. Stops too:
Ray's own SIGTERM handler (an exit with status 15) is replaced by the one the driver had, so that a SIGTERM gives
the held runs back and exits 143 with the usual line, and a local Ray that the driver started ends with it even
when it is killed outright (depthlab.run.ray_reaper).
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass

import torch

from depthlab import stopping
from depthlab.errors import DepthlabError
from depthlab.spec.config import RunConfig
from depthlab.run.driver import Driver
from depthlab.run.ray_reaper import Reaper, processes_below
from depthlab.run.runner import open_sweep, starting_models
from depthlab.train.engine import check_eval_every
from depthlab.choices import LAYOUTS, check
from depthlab.run.tensorboard import open_board
from depthlab.spec.grid import SweepSpec
from depthlab.run.workers import Stopped

_DATA = {}  # per worker process: datasets already loaded onto its device
RAY_GPU_MAX_PACK = 64


def _train_task(config_dicts: list[dict], device: str, data_root, cpu_threads: int, compile: bool = False,
                keep_weights: bool = False, initial=None, precision: str = "auto", complexity: bool = True,
                eval_every: int = 1, layout: str = "auto"):
    """Body of the Ray task, a generator: load (or reuse) the dataset, train the pack, and yield what the driver
    records as it happens: ("loaded",), ("epoch", i, metrics) after each epoch of the i-th config, ("split",
    sizes) after an out-of-memory error, then ("results", results)."""
    from depthlab.train.engine import train_pack_splitting
    from depthlab.run.runner import DataCache

    if device == "cpu":
        torch.set_num_threads(cpu_threads)
    configs = [RunConfig.from_dict(c) for c in config_dicts]
    cache = _DATA.setdefault((device, str(data_root)), DataCache(torch.device(device), data_root))
    dataset = cache.get(configs[0])
    yield ("loaded",)
    yield from _streamed(lambda on_epoch, on_split, interrupt: train_pack_splitting(
        configs, dataset, device=device, compile=compile, keep_weights=keep_weights, initial=initial,
        precision=precision, layout=layout, complexity=complexity, eval_every=eval_every, on_epoch=on_epoch,
        on_split=on_split, interrupt=interrupt))


def _streamed(train):
    """The events of `train(on_epoch, on_split, interrupt)` as they come, then ("results", what it returned);
    what it raises is raised here. It trains in a thread of its own, since a callback cannot yield; closing the
    generator (a cancelled task) stops it at its next step."""
    events, stop = queue.Queue(), threading.Event()

    def interrupt():
        if stop.is_set():
            raise Stopped()

    def body():
        try:
            events.put(("results", train(lambda i, metrics: events.put(("epoch", i, metrics)),
                                         lambda sizes: events.put(("split", sizes)), interrupt)))
        except BaseException as err:  # noqa: BLE001 - handed to the generator, which raises it
            events.put(("raised", err))

    thread = threading.Thread(target=body, name="depthlab-ray-pack", daemon=True)
    thread.start()
    try:
        while True:
            event = _next_event(events)
            if event[0] == "raised":
                raise event[1]
            yield event
            if event[0] == "results":
                return
    finally:
        stop.set()
        thread.join()


def _next_event(events: queue.Queue):
    while True:  # with a timeout: a cancel (KeyboardInterrupt) must not wait for the next epoch
        try:
            return events.get(timeout=0.5)
        except queue.Empty:
            continue


@dataclass
class _Pack:
    slot: int
    configs: list
    loaded: bool = False  # its task has loaded the data


class RayExecutor:
    """Packs trained as Ray tasks, `slots` at a time; each task streams its events (`_train_task`) and this
    process hands them to the driver as they arrive."""

    def __init__(self, ray, device: str, slots: int, data_root, *, compile: bool, precision: str,
                 complexity: bool, eval_every: int = 1, layout: str = "auto"):
        self.ray, self.device, self.slots, self.data_root = ray, device, slots, data_root
        self.options = {"compile": compile, "precision": precision, "complexity": complexity,
                        "eval_every": eval_every, "layout": layout}
        self.task = ray.remote(num_gpus=1 if device == "cuda" else 0, num_cpus=1, max_retries=0)(_train_task)
        self.in_flight: dict = {}  # a task's stream of events -> its _Pack
        self._slots = itertools.count()

    def run(self, driver: Driver) -> None:
        pending = list(driver.plan.packs)
        try:
            while pending or self.in_flight:
                while pending and len(self.in_flight) < self.slots:
                    self.submit(driver, pending.pop(0))
                if self.in_flight:
                    ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
                    for stream in ready:
                        self.take(driver, stream)
                stopping.check()  # a stop whose exception was lost (see depthlab.stopping)
        except BaseException:
            for stream in self.in_flight:  # the driver gives their runs back: nothing would record them
                finished, _ = self.ray.wait([stream], num_returns=1, timeout=0)
                if not finished:  # cancelling a task that is ending (a pack that just raised too) can abort
                    self.ray.cancel(stream)  # Ray's driver: "Tried to complete task that was not pending"
            raise

    def submit(self, driver: Driver, configs: list[RunConfig]) -> None:
        slot = next(self._slots)
        configs = driver.claim(slot, configs)
        if not configs:
            return
        try:  # the driver reads the weights a fine-tune starts from: workers may not see the store
            initial = starting_models(configs, driver.store_path, None)
        except Exception as err:  # noqa: BLE001 - a pack that cannot start fails, as in the local backend
            driver.failed(slot, configs, err)
            return
        stream = self.task.remote([c.to_dict() for c in configs], self.device, self.data_root, 1,
                                  keep_weights=driver.save_weights, initial=initial, **self.options)
        self.in_flight[stream] = _Pack(slot, configs)

    def take(self, driver: Driver, stream) -> None:
        """Hand the next event of a task to the driver: the end of an epoch, a split, the results, an error."""
        pack = self.in_flight[stream]
        try:
            event, *args = self.ray.get(next(stream))
        except Exception as err:  # noqa: BLE001 - the task failed: see `lost`
            del self.in_flight[stream]
            self.lost(driver, pack, err)
            return
        if event == "loaded":
            pack.loaded = True
        elif event == "epoch":
            driver.epoch(pack.configs[args[0]], args[1])
        elif event == "split":
            driver.split(pack.configs, args[0])
        else:
            del self.in_flight[stream]
            driver.finished(pack.slot, args[0])

    def lost(self, driver: Driver, pack: _Pack, err: Exception) -> None:
        """A task that raised `err` (call it from the except clause): judged as the local backend judges what
        the pack raised; an error the task raised loading the data stops the sweep, as it does there."""
        cause = getattr(err, "cause", None) or err  # a RayTaskError carries what the task raised
        if isinstance(err, self.ray.exceptions.RayTaskError) and not pack.loaded:
            raise cause
        driver.failed(pack.slot, pack.configs, cause)


def start_ray(ray, address, num_cpus, device: str) -> tuple[str, int]:
    """Ray started (here, unless it already is or `address` names a cluster) and the workers' device resolved:
    (device, how many packs train at once)."""
    if not ray.is_initialized():
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)  # Ray's exits at once, with status 15 and nothing given back
    resources = ray.cluster_resources()
    if device == "auto":
        device = "cuda" if resources.get("GPU", 0) >= 1 else "cpu"
    if device == "cuda" and resources.get("GPU", 0) < 1:
        raise DepthlabError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    return device, int(resources.get("GPU", 1)) if device == "cuda" else max(1, int(resources.get("CPU", 1)))


def _reaper(before: set) -> Reaper | None:
    """A watcher of the processes this one has started since `before`, those of the local Ray that `ray.init`
    started, and of theirs; None when there are none (a cluster joined, or no /proc to read them from)."""
    started = processes_below(os.getpid()) - before
    return Reaper(started | processes_below(*(pid for pid, _ in started))) if started else None


def run_sweep_ray(spec: SweepSpec, store_path, *, device="auto", limit=None, max_pack=None, address=None,
                  data_root=None, progress=True, num_cpus=None, compile=False, save_weights=False,
                  retry_failed=False, log=None, precision="auto", complexity=True, eval_every: int = 1,
                  tensorboard=None, layout: str = "auto") -> dict:
    """`depthlab.run.runner.run_sweep` with every pack trained as a Ray task, on the cluster at `address` (None:
    the one this process is connected to, else a local one started for the sweep, with `num_cpus`). The
    TensorBoard logs (`tensorboard`) are written here, by the driver, from the epochs the tasks stream."""
    try:
        import ray
    except ImportError:
        raise DepthlabError("the ray backend needs Ray: pip install 'depthlab[ray]'") from None
    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_eval_every(eval_every)
    check("layout", layout, LAYOUTS)
    board = open_board(tensorboard, spec.name, log)  # refused before Ray starts or the store is touched
    started_here = not ray.is_initialized()
    before, reaper = processes_below(os.getpid()) if started_here else set(), None
    try:
        device, slots = start_ray(ray, address, num_cpus, device)
        reaper = _reaper(before) if started_here else None
        # Pack sizes are planned for the workers' device, which the driver may not have: on GPU workers a fixed
        # cap (an out-of-memory error still splits a pack on the worker), on CPU workers the CPU cap (the
        # driver's calibrations measured other threads, maybe another CPU).
        if device == "cuda" and max_pack is None:
            max_pack = RAY_GPU_MAX_PACK
        store, the_plan = open_sweep(spec, store_path, torch.device("meta"), log, limit=limit, max_pack=max_pack,
                                     retry_failed=retry_failed, save_weights=save_weights, precision=precision,
                                     layout=layout)
        if reaper is not None:
            reaper.refresh()  # what Ray's processes have started since: agents that a slow raylet started late
        driver = Driver(spec.name, store, the_plan, store_path=store_path, log=log, save_weights=save_weights,
                        title=f"{spec.name} on ray ({slots} {device} slots)", progress=progress, tensorboard=board)
        summary = driver.run(RayExecutor(ray, device, slots, data_root, compile=compile, precision=precision,
                                         complexity=complexity, eval_every=eval_every, layout=layout))
    finally:
        if started_here:
            ray.shutdown()
        if reaper is not None:
            reaper.close()  # and it stops what the shutdown left
    return {**summary, "precision": precision if precision != "auto" else "auto precision (per worker)",
            "device": f"{device} via ray ({slots} slots)"}
