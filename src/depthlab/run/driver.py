"""The driver of a sweep: claim a pack → train it → record its runs → give back what is held, whatever trains it.

A sweep's packs train in this process (depthlab.run.runner: worker threads, each on its share of the cores) or
as Ray tasks (depthlab.run.ray_backend: a GPU or a CPU core each, on any machine). Only where a pack trains
differs, so what the store guarantees is kept here, once, for both:

- a pack's runs are claimed before it trains: only pending ones, so two runners never train one run, after a
  crashed peer's stale claims on them are taken back; their heartbeats stay fresh while it trains;
- each epoch's metrics are added to the run's history as the epoch ends (also a heartbeat), and each result is
  written in its own transaction, its weights (when kept) before the row: a run is never done without them;
- with a TensorBoard directory, each epoch of a held run is also written there as it ends (depthlab.run.tensorboard),
  here in the process that drives the sweep, whichever backend trains;
- a pack that fails is recorded failed, with the history it had, and the sweep goes on; a broken device
  (`is_device_error`), a stop (Ctrl-C, a stop signal) or any other error ends the sweep, and every run still
  held goes back to pending (`Driver.run`).

An executor is an object with `run(driver)`: it trains the packs of `driver.plan`, each as `driver.claim(slot,
configs)` (train only the configs it returns), then, as training goes, `driver.epoch(config, metrics)` and
`driver.split(configs, sizes)`, and at the end `driver.finished(slot, results)` or, from the except clause,
`driver.failed(slot, configs, err)`. A slot is whatever trains one pack at a time (a worker thread, a Ray task).
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback

import torch

from depthlab import stopping
from depthlab.records import run_id
from depthlab.train import engine
from depthlab.results import weights
from depthlab.spec.config import RunConfig
from depthlab.train.engine import RunResult
from depthlab.run.progress import SweepProgress
from depthlab.results.store import Store, owner_token


def rid(config: RunConfig) -> str:
    """The run id of `config` trained by the engine's current recipe."""
    return run_id(config.to_dict(), engine.RECIPE)


def record(store: Store, owner: str, result: RunResult, store_path=None) -> bool:
    """Write a result; False (and nothing written) when the run is no longer this owner's. The weights are
    written aside first, then moved into place inside the row's transaction once the run is known to be this
    owner's: a run is never done without the weights that were asked for, and a runner that lost its claim never
    writes over the file of the runner that holds it now."""
    run = rid(result.config)
    staged, env = None, result.env
    if result.state_dict is not None and store_path is not None:
        staged = weights.stage_weights(store_path, run, result.config, result.state_dict, spec=result.spec)
        env = {**env, "weights_sha256": weights.file_digest(staged)}  # checked before the file is used

    def into_place():
        staged.replace(weights.weights_path(store_path, run))

    try:
        return store.finish(run, owner, status=result.status, final=result.final, history=result.history,
                            params=result.params, q=result.q, seconds=result.seconds, env=env,
                            error=result.error, train_seconds=result.train_seconds,
                            then=into_place if staged is not None else None)
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)  # moved into place, or not this owner's to write


def pack_id(run_ids: list[str]) -> str:
    """The id of a pack: a short hash of its runs' ids. Recorded in each run's env, so that the time its models
    share (`seconds`, `train_seconds`) can be counted once per pack and split among them."""
    return hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:12]


def is_device_error(err: BaseException) -> bool:
    """A broken accelerator (illegal address, device-side assert, cuDNN/cuBLAS failure): every later pack would
    fail the same way, so the sweep stops and the runs go back to pending instead of being marked failed."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(err, accelerator_error):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("CUDA error", "CUDNN_STATUS", "cuDNN error", "CUBLAS_STATUS", "device-side"))


class Heartbeat:
    """Keeps the claimed runs' heartbeats fresh while packs train (epochs can outlast the stale timeout).
    `hold(worker, ids)` sets the runs a worker (a thread, a Ray task: any key) holds; each beat covers every
    worker's."""

    def __init__(self, store: Store, owner: str, every: float = 60.0):
        self.store, self.owner, self.every = store, owner, every
        self._held: dict = {}  # worker -> the run ids it holds
        self._lock = threading.Lock()  # two workers' updates must not lose one another's runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def hold(self, worker, ids: list[str]) -> None:
        with self._lock:  # a new dict, which _beat reads without the lock; a worker that holds nothing is dropped
            self._held = {w: held for w, held in {**self._held, worker: list(ids)}.items() if held}

    def _beat(self):
        while not self._stop.wait(self.every):
            ids = [i for held in self._held.values() for i in held]
            if ids:
                try:
                    self.store.heartbeat(ids, self.owner)
                except Exception:  # noqa: BLE001 - a missed beat is retried at the next tick
                    pass

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


class Driver:
    """One pass of sweep `name` over `the_plan` (a depthlab.run.runner.SweepPlan) against `store`, the store
    at `store_path` (see the module's docstring). `save_weights`: the trained weights are kept next to the store;
    `title`: the progress bar's; `env`: added to every run's env (what the executor decides and the engine
    cannot see, e.g. the worker threads); `tensorboard`: a depthlab.run.tensorboard.Board that the epochs of the
    runs trained here are written to, or None."""

    def __init__(self, name: str, store: Store, the_plan, *, store_path, log, save_weights: bool = False,
                 title: str = "", progress: bool = True, env: dict | None = None, tensorboard=None):
        self.name, self.store, self.plan, self.store_path, self.log = name, store, the_plan, store_path, log
        self.save_weights, self.env, self.tensorboard = save_weights, dict(env or {}), tensorboard
        self.bar = SweepProgress(the_plan.todo, title or name, enabled=progress)
        self.owner = owner_token()
        self.trained = {"done": 0, "diverged": 0, "failed": 0}
        self._lock = threading.Lock()  # the progress bar and the counts are shared by local worker threads
        self._heartbeat: Heartbeat | None = None

    def run(self, executor) -> dict:
        """Train the plan's packs with `executor`; on a stop or an error every run still held goes back to
        pending and the exception goes on. Returns the summary; the backend adds where the runs trained."""
        started = time.perf_counter()
        self._heartbeat = Heartbeat(self.store, self.owner)
        try:
            executor.run(self)
        except BaseException:
            # every run of the plan this owner holds, not only those a slot reported: a stop can land between a
            # claim and its `hold`
            self.store.release([rid(c) for c in self.plan.todo], self.owner)
            raise
        finally:
            self._heartbeat.stop()
            self.bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        counts = self.store.counts(self.name)
        self.store.close()
        return {"sweep": self.name, "total": self.plan.total, "trained": self.trained, "counts": counts,
                "seconds": time.perf_counter() - started}

    def claim(self, slot, configs: list[RunConfig]) -> list[RunConfig]:
        """Claim the pack's runs that are still pending and return them, held by `slot` until `finished` or
        `failed`; the others are another runner's, and leave the progress bar."""
        stopping.check()  # a stop whose exception was lost (see depthlab.stopping)
        ids = [rid(c) for c in configs]
        self.store.reclaim_stale(ids)  # a peer that crashed while holding some of them
        claimed = set(self.store.claim(ids, self.owner))
        with self._lock:
            for config, i in zip(configs, ids):
                if i not in claimed:
                    self.bar.elsewhere(config)
        self._heartbeat.hold(slot, [i for i in ids if i in claimed])
        return [c for c, i in zip(configs, ids) if i in claimed]

    def epoch(self, config: RunConfig, metrics: dict) -> None:
        """An epoch of a held run ended: its metrics join the run's history (a heartbeat too), and its
        TensorBoard log while the run is still this owner's."""
        run = rid(config)
        held = self.store.record_epoch(run, self.owner, metrics)
        with self._lock:
            self.bar.epoch(config)
        if held and self.tensorboard is not None:
            self.tensorboard.epoch(run, config, metrics)
        stopping.check()

    def split(self, configs: list[RunConfig], sizes) -> None:
        """A pack ran out of memory and trains again in two halves: its runs start over."""
        self.log(f"out of memory: pack split into {sizes[0]} + {sizes[1]}")
        with self._lock:
            self.bar.restart(configs)
        self._end_logs(configs)

    def finished(self, slot, results: list[RunResult]) -> None:
        """A pack's results, each written in its own transaction (weights first, when kept)."""
        self._heartbeat.hold(slot, [])
        pack = pack_id([rid(r.config) for r in results])
        for result in results:
            result.env = {**result.env, **self.env, "pack": pack}
            recorded = record(self.store, self.owner, result, self.store_path if self.save_weights else None)
            if not recorded:
                self.log(f"run {rid(result.config)} was reclaimed by another runner; result dropped")
            with self._lock:
                if recorded:
                    self.trained[result.status] = self.trained.get(result.status, 0) + 1
                self.bar.finished(result.config, result.status)
        self._end_logs([r.config for r in results])
        self.store.checkpoint()  # a backup of the .sqlite file alone then holds every pack finished so far

    def failed(self, slot, configs: list[RunConfig], err: BaseException) -> None:
        """A pack raised `err` (call it from the except clause, for the traceback): its runs are recorded failed,
        with the history they had, and the sweep goes on. A device error is raised again: it stops the sweep."""
        if is_device_error(err):
            raise err
        self._heartbeat.hold(slot, [])
        message = f"{type(err).__name__}: {err}"
        self.log(f"pack of {len(configs)} failed: {message}")
        for config in configs:
            self.store.fail(rid(config), self.owner, message + "\n" + traceback.format_exc(limit=5))
        with self._lock:
            self.trained["failed"] += len(configs)
            for config in configs:
                self.bar.finished(config, "failed")
        self._end_logs(configs)

    def _end_logs(self, configs: list[RunConfig]) -> None:
        """These runs finished, failed or start over: their TensorBoard writers are closed."""
        if self.tensorboard is not None:
            for config in configs:
                self.tensorboard.end(rid(config))
