"""The Ray backend: packs trained as Ray tasks (one GPU, or one CPU core, each), for many GPUs or machines.

The driver owns the store: it claims a pack, submits it, keeps its runs' heartbeats fresh while the task runs,
and records the results it gets back, so workers need no access to the SQLite file and the store's guarantees
(no run trained twice, nothing finished lost) hold exactly as with the local backend.
"""

from __future__ import annotations

import sys
import time

import torch

from depthlab.errors import DepthlabError
from depthlab.sweep.config import RunConfig
from depthlab.sweep.progress import SweepProgress
from depthlab.sweep.runner import describe_plan, plan, record, rid, starting_models
from depthlab.sweep.spec import SweepSpec
from depthlab.sweep.store import Store, owner_token

_DATA = {}  # per worker process: datasets already loaded onto its device
RAY_GPU_MAX_PACK = 64


def _train_task(config_dicts: list[dict], device: str, data_root, cpu_threads: int, compile: bool = False,
                keep_weights: bool = False, initial=None, precision: str = "auto", complexity: bool = True):
    """Body of the Ray task: load (or reuse) the dataset, train the pack, return the results."""
    from depthlab.sweep.engine import train_pack_splitting
    from depthlab.sweep.runner import DataCache

    if device == "cpu":
        torch.set_num_threads(cpu_threads)
    configs = [RunConfig.from_dict(c) for c in config_dicts]
    cache = _DATA.setdefault((device, str(data_root)), DataCache(torch.device(device), data_root))
    return train_pack_splitting(configs, cache.get(configs[0]), device=device, compile=compile,
                                keep_weights=keep_weights, initial=initial, precision=precision,
                                complexity=complexity)


def in_flight_ids(in_flight: dict) -> list[str]:
    return [rid(c) for configs in in_flight.values() for c in configs]


def run_sweep_ray(spec: SweepSpec, store_path, *, device="auto", limit=None, max_pack=None, address=None,
                  data_root=None, progress=True, num_cpus=None, compile=False, save_weights=False,
                  retry_failed=False, log=None, precision="auto", complexity=True) -> dict:
    try:
        import ray
    except ImportError:
        raise DepthlabError("the ray backend needs Ray: pip install 'depthlab[ray]'") from None
    log = log or (lambda msg: print(msg, file=sys.stderr))
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    resources = ray.cluster_resources()
    if device == "auto":
        device = "cuda" if resources.get("GPU", 0) >= 1 else "cpu"
    if device == "cuda" and resources.get("GPU", 0) < 1:
        raise DepthlabError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    slots = int(resources.get("GPU", 1)) if device == "cuda" else max(1, int(resources.get("CPU", 1)))
    task = ray.remote(num_gpus=1 if device == "cuda" else 0, num_cpus=1, max_retries=0)(_train_task)

    store = Store(store_path)
    store.reclaim_stale()
    # Pack sizes are planned for the workers' device, which the driver may not have: on GPU workers a fixed cap
    # (an out-of-memory error still splits a pack on the worker), on CPU workers the CPU cap (the driver's
    # calibrations measured other threads, maybe another CPU).
    if device == "cuda" and max_pack is None:
        max_pack = RAY_GPU_MAX_PACK
    the_plan = plan(spec, store, torch.device("meta"), limit, max_pack, retry_failed=retry_failed,
                    store_path=store_path, save_weights=save_weights, precision=precision)
    for line in describe_plan(the_plan, store_path, spec.name):
        log(line)
    owner = owner_token()
    pending = list(the_plan.packs)
    in_flight: dict = {}  # ray ObjectRef -> the pack's configs
    trained = {"done": 0, "diverged": 0, "failed": 0}
    bar = SweepProgress(the_plan.todo, f"{spec.name} on ray ({slots} {device} slots)", enabled=progress)
    started = time.perf_counter()
    try:
        while pending or in_flight:
            while pending and len(in_flight) < slots:
                configs = pending.pop(0)
                ids = [rid(c) for c in configs]
                store.reclaim_stale(ids)  # a peer that crashed while holding some of them
                claimed = set(store.claim(ids, owner))
                for config, i in zip(configs, ids):
                    if i not in claimed:  # another runner has it
                        bar.elsewhere(config)
                configs = [c for c, i in zip(configs, ids) if i in claimed]
                if configs:
                    try:  # the driver reads the weights a fine-tune starts from: workers may not see the store
                        initial = starting_models(configs, store_path, None)
                    except DepthlabError as err:
                        for config in configs:
                            store.fail(rid(config), owner, str(err))
                            bar.finished(config, "failed")
                        trained["failed"] += len(configs)
                        continue
                    ref = task.remote([c.to_dict() for c in configs], device, data_root, 1, compile, save_weights,
                                      initial, precision, complexity)
                    in_flight[ref] = configs
            if not in_flight:
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=30)
            store.heartbeat(in_flight_ids(in_flight), owner)
            for ref in ready:
                configs = in_flight.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - a failed task fails its runs, the sweep goes on
                    for config in configs:
                        store.fail(rid(config), owner, f"ray task failed: {err}")
                        bar.finished(config, "failed")
                    trained["failed"] += len(configs)
                    log(f"pack of {len(configs)} failed on ray: {err}")
                else:
                    for result in results:
                        if record(store, owner, result, store_path if save_weights else None):
                            trained[result.status] = trained.get(result.status, 0) + 1
                        bar.finished(result.config, result.status)
    except BaseException:
        store.release(in_flight_ids(in_flight), owner)
        raise
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    counts = store.counts(spec.name)
    store.close()
    return {"sweep": spec.name, "precision": precision if precision != "auto" else "auto precision (per worker)",
            "total": the_plan.total, "trained": trained, "counts": counts,
            "seconds": time.perf_counter() - started, "device": f"{device} via ray ({slots} slots)"}

