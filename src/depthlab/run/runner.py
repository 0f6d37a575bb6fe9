"""The sweep runner: spec → runs in the store → packs → engine → results in the store.

Every run (a config trained by the engine's `RECIPE`) is added to the store as `pending` first. A runner then
repeatedly claims a pack (only runs still pending are claimed, so two runners never train one run), trains it,
and writes each run's result in its own transaction, its weights (when kept) before it is marked done. That
claim → train → record loop is depthlab.run.driver's, shared with the Ray backend; here packs train in this
process (`LocalExecutor`): on a CPU two at once, in worker threads (depthlab.run.workers) that share the
runner's store connection, data and progress bar. A killed runner's runs are reclaimed by the next runner, or by
one already running, before it claims a pack (`Store.reclaim_stale`): nothing finished is trained twice or lost;
what was interrupted restarts from scratch.
Results of an older recipe stay in the store; the runner says how many and trains their configs again.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from dataclasses import dataclass

import torch

from depthlab import precision as precisions
from depthlab import stopping
from depthlab.choices import LAYOUTS, check
from depthlab.errors import DepthlabError, SpecError
from depthlab.train import engine
from depthlab.results import weights
from depthlab.run.allocator import keep_freed_memory
from depthlab.run.tensorboard import open_board
from depthlab.spec.config import RunConfig
from depthlab.run.driver import Driver, Heartbeat, is_device_error, rid  # noqa: F401 - Heartbeat: its old home
from depthlab.train.engine import train_pack_splitting
from depthlab.train.packs import (calibrate, calibration_key, default_pack_size, groups, make_packs, max_pack_size,
                                  split, spread, worth_calibrating)
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store
from depthlab.run.workers import Workers, default_workers, intra_op_threads, threads_per_worker


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device", name, "auto or cpu (no CUDA device is visible here)")
    return torch.device(name)


@dataclass
class SweepPlan:
    total: int            # runs in the spec
    finished: int         # already done/diverged/failed in the store
    todo: list            # RunConfigs still to train (pending or interrupted)
    packs: list           # todo grouped into packs (at the calibrated size, or the cap where none is known yet)
    precision: str = "fp32"  # what the runs train in: fp32 or bf16 (auto resolved for the device)
    layout: str = "auto"     # their activations' layout (depthlab.choices.LAYOUTS; auto: the engine's default)
    sizes: dict = dataclasses.field(default_factory=dict)  # {pack key: calibrated pack size} known to the store
    uncalibrated: int = 0  # shapes without a measured pack size: measured when they first train, if worth it
    workers: int = 1      # packs trained side by side (depthlab.run.workers)
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
         save_weights: bool = False, precision: str = "fp32", workers: int | None = None,
         layout: str = "auto") -> SweepPlan:
    """What a run of `spec` against `store` would train; with `add`, its runs are added to the store first
    (with `retry_failed`, its failed runs are put back to pending; with `save_weights`, its done runs whose
    weights file under `store_path` is missing are put back to pending, to be trained again with them).
    Packs take the pack sizes the store has calibrated for `device`, `precision`, `layout` and the intra-op
    threads of each of `workers` (None: the default; see depthlab.train.packs and depthlab.run.workers)."""
    precision = precisions.resolve(precision, device) if device.type != "meta" else precision
    configs = spec.configs()
    if not configs:
        raise DepthlabError(f"sweep {spec.name!r} has no runs: its grid is empty or `exclude` removes every run")
    check_starts(configs, store, store_path)
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
        key = calibration_key(members[0], device, precision, threads, layout)
        size = store.pack_size(key) if store is not None else None
        if size is not None:
            sizes[members[0].pack_key()] = size
        elif len(members) > 1 and max_pack_size(members[0], device, max_pack) > 1:
            uncalibrated += 1
    return SweepPlan(total=len(configs), finished=finished, todo=todo,
                     packs=make_packs(todo, device, max_pack, sizes, precision, defaults=True, workers=workers),
                     precision=precision, layout=layout, sizes=sizes, uncalibrated=uncalibrated, workers=workers,
                     threads=threads, superseded=superseded, reopened=reopened, orphans=orphans)


def check_starts(configs: list[RunConfig], store: Store | None, store_path) -> None:
    """Refuse, before anything trains, a run whose `init_from` names a run neither the store holds nor has saved
    weights of (a typo, or another store's run): it would fail its whole pack once it started."""
    starts = sorted({c.init_from for c in configs if c.init_from})
    if not starts:
        return
    known = store.statuses(starts) if store is not None else {}
    unknown = [r for r in starts if r not in known
               and (store_path is None or not weights.has_weights(store_path, r))]
    if unknown:
        where = store_path if store_path is not None else "the store"
        raise SpecError("init_from", unknown[0], f"the id of a run in {where} whose weights were saved "
                        f"(`depthlab run SPEC --store {where} --save-weights`); {len(unknown)} init_from id(s) "
                        "name no run there: " + ", ".join(unknown[:5]))


def pack_size(members: list[RunConfig], the_plan: SweepPlan, store: Store, dataset, device: torch.device,
              max_pack: int | None, log, interrupt=None) -> int:
    """The pack size of a group of same-shape runs: the store's calibrated size; else, on a CPU with more than one
    run waiting, measured now and saved when the runs are work enough to repay it, or the default size when they
    are not (depthlab.train.packs); else (a GPU) the cap."""
    cap = max_pack_size(members[0], device, max_pack, the_plan.precision)
    default = default_pack_size(device, the_plan.precision, cap)
    key = members[0].pack_key()
    if key in the_plan.sizes:
        return min(the_plan.sizes[key], cap)
    if device.type != "cpu" or len(members) == 1 or cap == 1:
        return default
    cache = calibration_key(members[0], device, the_plan.precision, the_plan.threads, the_plan.layout)
    size = store.pack_size(cache)  # a peer runner may have measured it meanwhile
    if size is None and not worth_calibrating(members, int(dataset.train_x.shape[0]), cap):
        return default
    if size is None:
        try:  # up to the cap, not to the runs waiting: a later sweep of the shape reuses the measurement
            size, rates = calibrate(members[0], dataset, device, the_plan.precision, cap, interrupt=interrupt,
                                    layout=the_plan.layout)
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


def _packs(the_plan: SweepPlan, store: Store, data: DataCache, device, max_pack, log, interrupt=None):
    """The plan's runs in packs, a group of same-shape runs at a time, each group's pack size decided (and, on a
    CPU, measured) just before its first pack trains."""
    shapes = groups(the_plan.todo)
    for members in shapes:
        stopping.check()
        size = pack_size(members, the_plan, store, data.get(members[0]), device, max_pack, log, interrupt)
        yield from split(members, size, spread(shapes, the_plan.workers))


def open_sweep(spec: SweepSpec, store_path, device: torch.device, log, **options) -> tuple[Store, SweepPlan]:
    """The store at `store_path`, a dead runner's claims taken back, and the plan of `spec` against it (its runs
    added; `options` as `plan` takes them), said to the user: how every backend starts a sweep."""
    store = Store(store_path)
    reclaimed = store.reclaim_stale()
    if reclaimed:
        log(f"{reclaimed} interrupted run(s) from a stopped runner will be trained again")
    the_plan = plan(spec, store, device, store_path=store_path, **options)
    for line in describe_plan(the_plan, store_path, spec.name):
        log(line)
    return store, the_plan


class LocalExecutor:
    """Packs trained in this process, `plan.workers` at a time on worker threads (depthlab.run.workers), each
    on its share of torch's intra-op threads; they share the driver's store connection and the runner's data."""

    def __init__(self, data: DataCache, device: torch.device, *, max_pack, compile: bool, complexity: bool,
                 eval_every: int = 1):
        self.data, self.device, self.max_pack = data, device, max_pack
        self.compile, self.complexity, self.eval_every = compile, complexity, eval_every

    def run(self, driver: Driver) -> None:
        pool = Workers(driver.plan.workers)
        packs = _packs(driver.plan, driver.store, self.data, self.device, self.max_pack, driver.log, pool.check)
        with intra_op_threads(driver.plan.threads):
            pool.run(packs, lambda configs: self.train(driver, configs, pool.check))

    def train(self, driver: Driver, configs: list[RunConfig], interrupt) -> None:
        """Claim and train one pack on this worker thread (`interrupt` stops it at its next step)."""
        slot = threading.get_ident()
        configs = driver.claim(slot, configs)
        if not configs:
            return
        dataset = self.data.get(configs[0])  # a data error stops the sweep; its runs go back to pending
        try:
            results = train_pack_splitting(
                configs, dataset, device=self.device, compile=self.compile, keep_weights=driver.save_weights,
                precision=driver.plan.precision, layout=driver.plan.layout, complexity=self.complexity,
                eval_every=self.eval_every,
                initial=starting_models(configs, driver.store_path, dataset),
                on_epoch=lambda i, metrics: driver.epoch(configs[i], metrics),
                on_split=lambda sizes: driver.split(configs, sizes), interrupt=interrupt)
        except Exception as err:  # noqa: BLE001 - a failed pack is recorded, the sweep goes on
            driver.failed(slot, configs, err)  # a device error is raised again: it stops the sweep
            return
        driver.finished(slot, results)


def run_sweep(spec: SweepSpec, store_path, *, device="auto", limit: int | None = None, max_pack: int | None = None,
              compile: bool = False, save_weights: bool = False, data_root=None, progress: bool = True,
              retry_failed: bool = False, log=None, precision: str = "auto", complexity: bool = True,
              workers: int | None = None, tensorboard=None, eval_every: int = 1, layout: str = "auto") -> dict:
    """Train every unfinished run of `spec` into the store at `store_path` at `precision` (auto, fp32, bf16; see
    depthlab.precision) in the activations' `layout` (auto, channels_last, nchw; see engine.use_channels_last),
    with or without the geometric complexity, `workers` packs at a time (None: two on a CPU with two cores or
    more, one on a GPU; see depthlab.run.workers), each trained run's epochs written as
    TensorBoard scalars under `tensorboard`/RUN_ID when a directory is given (depthlab.run.tensorboard), the
    validation split measured every `eval_every`-th epoch and the last (how a run is computed, like the
    precision and the layout: recorded in its environment, not part of its id). Returns a summary dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    engine.check_eval_every(eval_every)  # before the store is touched
    check("layout", layout, LAYOUTS)
    board = open_board(tensorboard, spec.name, log)  # refused before the store is touched
    device = resolve_device(device) if isinstance(device, str) else device
    store, the_plan = open_sweep(spec, store_path, device, log, limit=limit, max_pack=max_pack,
                                 retry_failed=retry_failed, save_weights=save_weights, precision=precision,
                                 workers=workers, layout=layout)
    driver = Driver(spec.name, store, the_plan, store_path=store_path, log=log, save_weights=save_weights,
                    title=f"{spec.name} ({the_plan.finished}/{the_plan.total} done before)", progress=progress,
                    env={"workers": the_plan.workers}, tensorboard=board)
    if device.type == "cpu":
        keep_freed_memory()  # a step's activations keep their pages from one step to the next
    summary = driver.run(LocalExecutor(DataCache(device, data_root), device, max_pack=max_pack, compile=compile,
                                       complexity=complexity, eval_every=eval_every))
    return {**summary, "precision": the_plan.precision, "device": str(device), "workers": the_plan.workers}
