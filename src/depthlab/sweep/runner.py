"""The sweep runner: spec → runs in the store → packs → engine → results in the store.

Every run (a config trained by the engine's `RECIPE`) is added to the store as `pending` first. A runner then
repeatedly claims a pack (only runs still pending are claimed, so two runners never train one run), trains it,
and writes each run's result in its own transaction, its weights (when kept) before it is marked done. On a CPU
a runner does this in two worker threads at once (depthlab.sweep.workers), sharing its store connection, data
and progress bar. A killed runner's runs are reclaimed by the next runner, or by one already running, before it
claims a pack (`Store.reclaim_stale`): nothing finished is trained twice or lost; what was interrupted restarts
from scratch.
Results of an older recipe stay in the store; the runner says how many and trains their configs again.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from depthlab import precision as precisions
from depthlab import stopping
from depthlab.errors import DepthlabError, SpecError
from depthlab.records import run_id
from depthlab.sweep import engine, weights
from depthlab.sweep.allocator import keep_freed_memory
from depthlab.sweep.config import RunConfig
from depthlab.sweep.engine import RunResult, train_pack_splitting
from depthlab.sweep.packs import (calibrate, calibration_key, default_pack_size, groups, make_packs, max_pack_size,
                                  split, spread, worth_calibrating)
from depthlab.sweep.progress import SweepProgress
from depthlab.sweep.spec import SweepSpec
from depthlab.sweep.store import Store, owner_token
from depthlab.sweep.workers import Workers, default_workers, intra_op_threads, threads_per_worker


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", name, "auto or cpu (no CUDA device is visible here)")
    return torch.device(name)


def rid(config: RunConfig) -> str:
    """The run id of `config` trained by the engine's current recipe."""
    return run_id(config.to_dict(), engine.RECIPE)


@dataclass
class SweepPlan:
    total: int            # runs in the spec
    finished: int         # already done/diverged/failed in the store
    todo: list            # RunConfigs still to train (pending or interrupted)
    packs: list           # todo grouped into packs (at the calibrated size, or the cap where none is known yet)
    precision: str = "fp32"  # what the runs train in: fp32 or bf16 (auto resolved for the device)
    sizes: dict = dataclasses.field(default_factory=dict)  # {pack key: calibrated pack size} known to the store
    uncalibrated: int = 0  # shapes without a measured pack size: measured when they first train, if worth it
    workers: int = 1      # packs trained side by side (depthlab.sweep.workers)
    threads: int = 1      # torch's intra-op threads for each of them
    superseded: dict = dataclasses.field(default_factory=dict)  # {older recipe: finished runs of these configs}
    reopened: int = 0     # done runs put back to pending: their weights were asked for and are missing
    orphans: int = 0      # pending runs of the sweep that the spec no longer lists (an edited spec)


class DataCache:
    """Datasets loaded once per runner and kept on the device (as uint8); shared by its worker threads."""

    def __init__(self, device: torch.device, root=None):
        self.device, self.root, self._cache = device, root, {}
        self._lock = threading.Lock()

    def get(self, config: RunConfig):
        with self._lock:  # two workers asking for one dataset load it once
            return self._get(config)

    def _get(self, config: RunConfig):
        from depthlab.data import load

        key = (config.dataset, config.val_split, config.train_subset, config.test_subset)
        if key not in self._cache:
            data = load(config.dataset, val_split=config.val_split, train_subset=config.train_subset,
                        device=self.device, root=self.root)
            if config.test_subset is not None:
                data = dataclasses.replace(data, test_x=data.test_x[:config.test_subset],
                                           test_y=data.test_y[:config.test_subset])
            self._cache[key] = data
        return self._cache[key]


def plan(spec: SweepSpec, store: Store | None, device: torch.device, limit: int | None = None,
         max_pack: int | None = None, add: bool = True, retry_failed: bool = False, store_path=None,
         save_weights: bool = False, precision: str = "fp32", workers: int | None = None) -> SweepPlan:
    """What a run of `spec` against `store` would train; with `add`, its runs are added to the store first
    (with `retry_failed`, its failed runs are put back to pending; with `save_weights`, its done runs whose
    weights file under `store_path` is missing are put back to pending, to be trained again with them).
    Packs take the pack sizes the store has calibrated for `device`, `precision` and the intra-op threads of
    each of `workers` (None: the default; see depthlab.sweep.packs and depthlab.sweep.workers)."""
    precision = precisions.resolve(precision, device) if device.type != "meta" else precision
    configs = spec.configs()
    if not configs:
        raise DepthlabError(f"sweep {spec.name!r} has no runs: its grid is empty or `exclude` removes every run")
    ids = [rid(c) for c in configs]
    reopened = 0
    if add and store is not None:
        store.add_runs([c.to_dict() for c in configs], sweep=spec.name, recipe=engine.RECIPE)
        if retry_failed:
            store.retry(ids)
    status = store.statuses(ids) if store is not None else {}
    if add and store is not None and save_weights and store_path is not None:
        missing = [i for i in ids if status.get(i) == "done" and not weights.has_weights(store_path, i)]
        reopened = store.reopen(missing, "weights were asked for (--save-weights) and are missing; trained again")
        status = store.statuses(ids)
    superseded = store.older_recipes([c.to_dict() for c in configs], engine.RECIPE) if store is not None else {}
    orphans = len(store.pending_outside(spec.name, ids)) if store is not None else 0
    todo = [c for c, i in zip(configs, ids) if status.get(i, "pending") in ("pending", "running")]
    finished = len(configs) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    workers = default_workers(device, len(todo), workers)
    sizes, uncalibrated, threads = {}, 0, threads_per_worker(workers)
    for members in groups(todo) if device.type == "cpu" else ():
        key = calibration_key(members[0], device, precision, threads)
        size = store.pack_size(key) if store is not None else None
        if size is not None:
            sizes[members[0].pack_key()] = size
        elif len(members) > 1 and max_pack_size(members[0], device, max_pack) > 1:
            uncalibrated += 1
    return SweepPlan(total=len(configs), finished=finished, todo=todo,
                     packs=make_packs(todo, device, max_pack, sizes, precision, defaults=True, workers=workers),
                     precision=precision, sizes=sizes, uncalibrated=uncalibrated, workers=workers, threads=threads,
                     superseded=superseded, reopened=reopened, orphans=orphans)


def pack_size(members: list[RunConfig], the_plan: SweepPlan, store: Store, dataset, device: torch.device,
              max_pack: int | None, log, interrupt=None) -> int:
    """The pack size of a group of same-shape runs: the store's calibrated size; else, on a CPU with more than one
    run waiting, measured now and saved when the runs are work enough to repay it, or the default size when they
    are not (depthlab.sweep.packs); else (a GPU) the cap."""
    cap = max_pack_size(members[0], device, max_pack, the_plan.precision)
    default = default_pack_size(device, the_plan.precision, cap)
    key = members[0].pack_key()
    if key in the_plan.sizes:
        return min(the_plan.sizes[key], cap)
    if device.type != "cpu" or len(members) == 1 or cap == 1:
        return default
    cache = calibration_key(members[0], device, the_plan.precision, the_plan.threads)
    size = store.pack_size(cache)  # a peer runner may have measured it meanwhile
    if size is None and not worth_calibrating(members, int(dataset.train_x.shape[0]), cap):
        return default
    if size is None:
        try:  # up to the cap, not to the runs waiting: a later sweep of the shape reuses the measurement
            size, rates = calibrate(members[0], dataset, device, the_plan.precision, cap, interrupt=interrupt)
        except Exception as err:  # noqa: BLE001 - a measurement that fails costs speed, not results
            if is_device_error(err):
                raise
            log(f"pack size of {describe_shape(members[0])} not measured ({type(err).__name__}: {err}); "
                f"packs of {default}")
            return default
        if cap == max_pack_size(members[0], device, precision=the_plan.precision):  # every size was tried
            store.save_pack_size(cache, size, rates)
        log(f"pack size {size} for {describe_shape(members[0])} ({the_plan.precision}; model-samples/s by pack "
            "size: " + ", ".join(f"{s}: {r:,.0f}" for s, r in rates.items()) + ")")
    return min(size, cap)


def describe_shape(config: RunConfig) -> str:
    return f"{config.topology} {config.branch} blocks={config.blocks} width={config.width} kernel={config.kernel}"


def starting_models(configs: list[RunConfig], store_path, dataset) -> list | None:
    """For the configs that start from a trained run (`init_from`): that run's model, rewired to the config's
    topology; None for the others (and None for all when none does)."""
    if not any(c.init_from for c in configs):
        return None
    from depthlab.models import regroup

    out = []
    for config in configs:
        if config.init_from is None:
            out.append(None)
            continue
        if store_path is None:
            raise DepthlabError(f"init_from {config.init_from}: the weights to start from live next to a store")
        model, source, _ = weights.load_trained(store_path, config.init_from, dataset)
        out.append(regroup(model, config.topology).train())
    return out


def describe_plan(the_plan: SweepPlan, store_path="STORE", sweep: str = "NAME") -> list[str]:
    """What the plan changes besides training, in sentences for the user."""
    lines = []
    for recipe, n in sorted(the_plan.superseded.items()):
        lines.append(f"{n} run(s) of this sweep in the store were trained by an older recipe ({recipe}; the engine "
                     f"is at recipe {engine.RECIPE}): they are kept, and their configs are trained again")
    if the_plan.orphans:
        lines.append(f"{the_plan.orphans} pending run(s) of this sweep are not in its spec any more (was it edited "
                     "under the same name?): they stay pending and this run does not train them; drop them with "
                     f"`depthlab drop --store {store_path} --sweep '{sweep}'`")
    if the_plan.reopened:
        lines.append(f"{the_plan.reopened} done run(s) had no saved weights although --save-weights was asked for: "
                     "trained again to keep them")
    return lines


def record(store: Store, owner: str, result: RunResult, store_path=None) -> bool:
    """Write a result; False (and nothing written) when the run is no longer this owner's. Weights first
    (atomically), then the row: a run is never done without the weights that were asked for."""
    run = rid(result.config)
    if result.state_dict is not None and store_path is not None:
        weights.save_weights(store_path, run, result.config, result.state_dict)
    return store.finish(run, owner, status=result.status, final=result.final, history=result.history,
                        params=result.params, q=result.q, seconds=result.seconds, env=result.env,
                        error=result.error, train_seconds=result.train_seconds)


def is_device_error(err: BaseException) -> bool:
    """A broken accelerator (illegal address, device-side assert, cuDNN/cuBLAS failure): every later pack would
    fail the same way, so the sweep stops and the runs go back to pending instead of being marked failed."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(err, accelerator_error):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("CUDA error", "CUDNN_STATUS", "cuDNN error", "CUBLAS_STATUS", "device-side"))


def _packs(the_plan: SweepPlan, store: Store, data: DataCache, device, max_pack, log, interrupt=None):
    """The plan's runs in packs, a group of same-shape runs at a time, each group's pack size decided (and, on a
    CPU, measured) just before its first pack trains."""
    shapes = groups(the_plan.todo)
    for members in shapes:
        stopping.check()
        size = pack_size(members, the_plan, store, data.get(members[0]), device, max_pack, log, interrupt)
        yield from split(members, size, spread(shapes, the_plan.workers))


class Heartbeat:
    """Keeps the claimed runs' heartbeats fresh while packs train (epochs can outlast the stale timeout).
    `hold(worker, ids)` sets the runs a worker holds; each beat covers every worker's."""

    def __init__(self, store: Store, owner: str, every: float = 60.0):
        self.store, self.owner, self.every = store, owner, every
        self._held: dict[int, list[str]] = {}
        self._lock = threading.Lock()  # two workers' updates must not lose one another's runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def hold(self, worker: int, ids: list[str]) -> None:
        with self._lock:
            self._held = {**self._held, worker: list(ids)}  # a new dict: _beat reads it without the lock

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


def run_sweep(spec: SweepSpec, store_path, *, device="auto", limit: int | None = None, max_pack: int | None = None,
              compile: bool = False, save_weights: bool = False, data_root=None, progress: bool = True,
              retry_failed: bool = False, log=None, precision: str = "auto", complexity: bool = True,
              workers: int | None = None) -> dict:
    """Train every unfinished run of `spec` into the store at `store_path` at `precision` (auto, fp32, bf16; see
    depthlab.precision), with or without the geometric complexity, `workers` packs at a time (None: two on a CPU
    with two cores or more, one on a GPU; see depthlab.sweep.workers). Returns a summary dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    device = resolve_device(device) if isinstance(device, str) else device
    store = Store(store_path)
    reclaimed = store.reclaim_stale()
    if reclaimed:
        log(f"{reclaimed} interrupted run(s) from a stopped runner will be trained again")
    the_plan = plan(spec, store, device, limit, max_pack, retry_failed=retry_failed, store_path=store_path,
                    save_weights=save_weights, precision=precision, workers=workers)
    for line in describe_plan(the_plan, store_path, spec.name):
        log(line)
    owner = owner_token()
    data = DataCache(device, data_root)
    trained = {"done": 0, "diverged": 0, "failed": 0}
    bar = SweepProgress(the_plan.todo, f"{spec.name} ({the_plan.finished}/{the_plan.total} done before)",
                        enabled=progress)
    if device.type == "cpu":
        keep_freed_memory()  # a step's activations keep their pages from one step to the next
    count = the_plan.workers
    pool = Workers(count)
    lock = threading.Lock()  # the progress bar and the counts are shared by the workers
    started = time.perf_counter()
    heartbeat = Heartbeat(store, owner)

    def train(pack_configs):
        stopping.check()  # a stop whose exception was lost (see depthlab.stopping)
        worker = threading.get_ident()
        ids = [rid(c) for c in pack_configs]
        store.reclaim_stale(ids)  # a peer that crashed while holding some of them
        claimed = set(store.claim(ids, owner))
        with lock:
            for config, i in zip(pack_configs, ids):
                if i not in claimed:  # another runner has it
                    bar.elsewhere(config)
        pack_configs = [c for c, i in zip(pack_configs, ids) if i in claimed]
        if not pack_configs:
            return
        pack_ids = [rid(c) for c in pack_configs]
        heartbeat.hold(worker, pack_ids)
        dataset = data.get(pack_configs[0])  # a data error stops the sweep; its runs go back to pending

        def on_epoch(i, metrics):
            store.record_epoch(pack_ids[i], owner, metrics)
            with lock:
                bar.epoch(pack_configs[i])
            stopping.check()

        def on_split(sizes):
            log(f"out of memory: pack split into {sizes[0]} + {sizes[1]}")
            with lock:
                bar.restart(pack_configs)

        try:
            results = train_pack_splitting(
                pack_configs, dataset, device=device, compile=compile, keep_weights=save_weights,
                precision=the_plan.precision, complexity=complexity,
                initial=starting_models(pack_configs, store_path, dataset),
                on_epoch=on_epoch, on_split=on_split, interrupt=pool.check)
        except Exception as err:  # noqa: BLE001 - a failed pack is recorded, the sweep goes on
            if is_device_error(err):
                raise
            message = f"{type(err).__name__}: {err}"
            log(f"pack of {len(pack_configs)} failed: {message}")
            for run in pack_ids:
                store.fail(run, owner, message + "\n" + traceback.format_exc(limit=5))
            with lock:
                trained["failed"] += len(pack_ids)
                for config in pack_configs:
                    bar.finished(config, "failed")
            return
        heartbeat.hold(worker, [])
        for result in results:
            result.env = {**result.env, "workers": count}
            recorded = record(store, owner, result, store_path if save_weights else None)
            if not recorded:
                log(f"run {rid(result.config)} was reclaimed by another runner; result dropped")
            with lock:
                if recorded:
                    trained[result.status] = trained.get(result.status, 0) + 1
                bar.finished(result.config, result.status)

    try:
        with intra_op_threads(the_plan.threads):
            pool.run(_packs(the_plan, store, data, device, max_pack, log, pool.check), train)
    except BaseException:
        store.release([rid(c) for c in the_plan.todo], owner)
        raise
    finally:
        heartbeat.stop()
        bar.close()
    counts = store.counts(spec.name)
    store.close()
    return {"sweep": spec.name, "precision": the_plan.precision, "total": the_plan.total, "trained": trained,
            "counts": counts, "seconds": time.perf_counter() - started, "device": str(device), "workers": count}
