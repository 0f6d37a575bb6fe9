"""`depthlab shift`: measure trained runs on corrupted test sets with test-time methods, into the store.

For every done run with saved weights, every corruption of its dataset's suite and severity, every seed,
evaluation batch size and method, one row of the store's `shift_results` table (see `depthlab.results.store`).
Rows already there are skipped, and each row is committed as soon as it is measured: a killed `depthlab shift`
resumes where it stopped, with nothing recomputed or duplicated. The corrupted sets are cached on disk
(`depthlab.data.corrupt_cache`), the runs' weights never change (every method works on a copy).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field

import torch

from depthlab import __version__, stopping
from depthlab import precision as precisions
from depthlab.data import corrupt
from depthlab.data.corrupt_cache import corrupted_set
from depthlab.errors import DepthlabError, SpecError
from depthlab.records import RunRecord
from depthlab.shift.methods import METHODS, WITH_ALPHA, Method
from depthlab.shift.stream import measure
from depthlab.results import weights
from depthlab.spec.config import RunConfig
from depthlab.results.store import Store

MNISTC = "mnistc"  # the severity option meaning: each corruption at its MNIST-C benchmark severity


@dataclass
class ShiftPlan:
    runs: list[RunRecord]                               # the done runs with weights to measure
    no_weights: list[RunRecord] = field(default_factory=list)  # done runs without saved weights (skipped)
    unavailable: dict = field(default_factory=dict)     # {(suite, corruption, severity): why it cannot be made}
    todo: list[tuple] = field(default_factory=list)     # (run record, corruption, severity, seed, batch, Method)
    no_bn: dict = field(default_factory=dict)           # {run id: methods left out}: they act on BatchNorm only
    done_before: int = 0                                # rows of the plan already in the store


def parse_severities(text: str) -> list[int] | str:
    """"1-5", "1,3,5", "2" or "mnistc" (each corruption at the one severity of the MNIST-C benchmark)."""
    text = str(text).strip()
    if text == MNISTC:
        return MNISTC
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise SpecError("severity", text, "severities 1-5 as a range (1-5) or a list (1,3,5), or mnistc") from None
    if not out or any(s not in corrupt.SEVERITIES for s in out):
        raise SpecError("severity", text, "severities from 1 to 5 as a range (1-5) or a list (1,3,5), or mnistc")
    return sorted(set(out))


def method_variants(names, alphas, episodic: bool) -> list[Method]:
    """One Method per name, and per α for the methods whose α is a setting."""
    out = []
    for name in names:
        if name not in METHODS:
            raise SpecError("methods", name, ", ".join(METHODS))
        for alpha in (alphas if name in WITH_ALPHA else [None]):
            method = Method(name, episodic=episodic) if alpha is None else Method(name, alpha, episodic)
            if method not in out:
                out.append(method)
    return out


def _corruption_names(suite: str, names) -> list[str]:
    if names in (None, "all") or list(names) == ["all"]:
        return list(corrupt.SUITES[suite])
    for name in names:
        corrupt.corruption(suite, name)  # a bad name is refused with the suite's names
    return list(dict.fromkeys(names))


def _severities(suite: str, name: str, severities) -> list[int]:
    spec = corrupt.corruption(suite, name)
    if severities == MNISTC:
        if suite != "mnist-c":
            raise SpecError("severity", MNISTC, f"1-5 for the {suite} suite (mnistc: the MNIST-C benchmark's "
                            "severity of each corruption, for MNIST-shaped data)")
        return [corrupt.MNISTC_SEVERITY[name]]
    return spec.severities(severities)


def _select_runs(store: Store, run_ids, sweep) -> list[RunRecord]:
    records = store.records(sweep=sweep)
    if not run_ids:
        return [r for r in records if r.status == "done"]
    chosen = []
    for prefix in run_ids:
        matches = [r for r in records if r.run_id.startswith(prefix)]
        if not matches:
            raise DepthlabError(f"--runs {prefix}: no run of the store{' sweep ' + repr(sweep) if sweep else ''} "
                                "has that id (`depthlab results` lists them)")
        if len(matches) > 1:
            raise DepthlabError(f"--runs {prefix} is ambiguous: " + ", ".join(m.run_id for m in matches[:5]))
        if matches[0].status != "done":
            raise DepthlabError(f"run {matches[0].run_id} is {matches[0].status}, not done: only trained runs "
                                "can be measured")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def plan(store: Store, store_path, *, runs=None, sweep=None, corruptions="all", severities=(1, 2, 3, 4, 5),
         methods=("source", "norm", "alpha_bn", "tent"), batch_sizes=(1, 16, 200), alphas=(0.1,), seeds=(0,),
         episodic: bool = False) -> ShiftPlan:
    """The rows to measure: every combination, less those already in the store and those that cannot be made
    here (named in `unavailable`). Refuses bad names and values before anything is measured."""
    variants = method_variants(methods, alphas, episodic)
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise SpecError("batch-size", b, "positive integers, e.g. 1,16,200")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SpecError("seed", s, "integers >= 0")
    selected = _select_runs(store, runs, sweep)
    if not selected:
        where = f" in sweep {sweep!r}" if sweep else ""
        raise DepthlabError(f"no done runs{where} in {store_path}; train a sweep first with `depthlab run SPEC "
                            f"--store {store_path} --save-weights`")
    result = ShiftPlan(runs=[])
    for rec in selected:
        (result.runs if weights.has_weights(store_path, rec.run_id) else result.no_weights).append(rec)
    if not result.runs:
        raise DepthlabError(
            f"none of the {len(selected)} done run(s) has saved weights, and `depthlab shift` measures trained "
            f"models: train with `depthlab run SPEC --store {store_path} --save-weights` (done runs without "
            "weights are trained again to keep them)")
    # every corruption name and severity is checked for every suite before anything runs
    per_suite = {}
    for rec in result.runs:
        suite = corrupt.suite_of(rec.config["dataset"])
        if suite not in per_suite:
            per_suite[suite] = [(n, s) for n in _corruption_names(suite, corruptions)
                                for s in _severities(suite, n, severities)]
    existing = store.shift_keys([r.run_id for r in result.runs])
    for rec in result.runs:
        suite = corrupt.suite_of(rec.config["dataset"])
        for name, severity in per_suite[suite]:
            why = corrupt.unavailable(suite, name, severity)
            if why:
                result.unavailable[(suite, name, severity)] = why
                continue
            for seed in seeds:
                for batch in batch_sizes:
                    for method in variants:
                        if method.name != "source" and rec.config.get("norm", "batch") != "batch":
                            result.no_bn.setdefault(rec.run_id, set()).add(method.stored_name)
                            continue  # norm, alpha_bn, tent, core act on BatchNorm: a copy of source, or nothing
                        key = (rec.run_id, name, severity, method.stored_name, batch, method.alpha, seed)
                        if key in existing:
                            result.done_before += 1
                        else:
                            result.todo.append((rec, name, severity, seed, batch, method))
    return result


def environment(device: torch.device, precision: str) -> dict:
    return {"depthlab": __version__, "torch": torch.__version__, "device": str(device), "host": socket.gethostname(),
            "threads": torch.get_num_threads(), "corrupt_version": corrupt.CORRUPT_VERSION, "precision": precision}


def _examples_of(store: Store, run_id: str) -> set[int]:
    return {r["examples"] for r in store.shift_rows([run_id])}


def run_shift(store_path, *, device="cpu", data_root=None, examples: int | None = None, progress: bool = True,
              log=None, threads: int | None = None, precision: str = "fp32", workers: int | None = None,
              **selection) -> dict:
    """Measure every row of `plan(...)` (the keyword `selection`) that the store lacks; returns a summary.
    `examples`: the first N test examples of each run's test split (all when None); `threads`: torch's CPU
    threads while measuring (default on a CPU: 1, since a stream of small batches gains nothing from intra-op
    threads and, on a busy machine, loses much to their synchronisation); `precision`: what the networks compute
    in (`depthlab.precision`; recorded in each row's env, not part of its key); `workers`: runs measured side by
    side on a CPU, each in a process of its own (default: as many as torch's intra-op threads, up to
    `depthlab.run.workers.CPU_WORKERS`, as training's packs; see `_side_by_side`).
    What a row holds does not depend on `workers`: each run is measured as it would be alone."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise SpecError("examples", examples, "a positive integer (the first N test examples), or all")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise SpecError("threads", threads, "a positive integer")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpecError("workers", workers, "a positive integer")
    from depthlab.run.runner import resolve_device
    from depthlab.run.workers import CPU_WORKERS

    device = resolve_device(device) if isinstance(device, str) else device
    if workers is None:  # as training's packs: one per intra-op thread, up to CPU_WORKERS; a GPU is fed by one
        workers = min(CPU_WORKERS, torch.get_num_threads()) if device.type == "cpu" else 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if device.type == "cpu" else before))
    try:
        return _run(store_path, device, data_root, examples, progress, log, selection,
                    precisions.resolve(precision, device), workers if device.type == "cpu" else 1)
    finally:
        torch.set_num_threads(before)


def _run(store_path, device, data_root, examples, progress, log, selection, precision: str, workers: int = 1,
         data=None) -> dict:
    from tqdm import tqdm

    from depthlab.run.runner import DataCache

    store = Store.existing(store_path)
    try:
        the_plan = plan(store, store_path, **selection)
        _log_skipped(the_plan, store_path, log)
        summary = {"done_before": the_plan.done_before, "runs": len(the_plan.runs),
                   "no_weights": len(the_plan.no_weights), "unavailable": len(the_plan.unavailable),
                   "device": str(device)}
        bar = tqdm(total=len(the_plan.todo), desc="shift", unit="row", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        try:
            if workers > 1 and len(_runs_of(the_plan.todo)) > 1:
                job = dict(device=str(device), data_root=data_root, examples=examples, precision=precision,
                           selection=selection)
                return {**summary, **_side_by_side(store_path, the_plan.todo, workers, job, bar)}
            data = data or DataCache(device, data_root)
            return {**summary, **_measure_rows(store, store_path, the_plan.todo, data, examples, device,
                                               precision, data_root, log, bar)}
        finally:
            bar.close()
    finally:
        store.close()


def _measure_rows(store, store_path, todo, data, examples, device, precision: str, data_root, log, bar) -> dict:
    """Measure `todo`'s rows in order, each committed as soon as it is measured; {"written", "diverged"}."""
    env = environment(device, precision)
    written, diverged = 0, 0
    loaded: dict = {}  # the current run's (model, x, y, mean, std, n)
    sets: dict = {}    # the current run's corrupted sets, by (corruption, severity, seed)
    for rec, name, severity, seed, batch, method in todo:
        stopping.check()
        if loaded.get("rid") != rec.run_id:
            loaded, sets = _load_run(store, store_path, data, rec, examples, device), {}
        if (name, severity, seed) not in sets:
            bar.set_postfix_str(f"{rec.run_id[:8]} {name} s{severity}", refresh=False)
            images = corrupted_set(loaded["x"].cpu().numpy(), loaded["dataset"], name, severity, seed,
                                   root=data_root, log=log)
            sets = {(name, severity, seed): torch.from_numpy(images).to(device)}  # one set at a time
        result = measure(loaded["model"], sets[(name, severity, seed)], loaded["y"], loaded["mean"],
                         loaded["std"], method, batch, seed, precision)
        if store.add_shift_result(_row(loaded, name, severity, seed, batch, method, result, env)):
            written += 1
            diverged += result["status"] == "diverged"
        bar.update(1)
    return {"written": written, "diverged": diverged}


def _runs_of(todo) -> list[str]:
    """The run ids of `todo`, in its order."""
    return list(dict.fromkeys(rec.run_id for rec, *_ in todo))


def _side_by_side(store_path, todo, workers: int, job: dict, bar) -> dict:
    """`todo`'s runs measured `workers` at a time, each run's rows in one task of a process pool.

    Processes, not threads: a stream of batch-1 steps (TENT, alpha-BN) is mostly Python between small operators
    and holds the GIL, so two threads gain little where two processes on two cores measure nearly twice the rows
    (the study's robustness lever: bench/study_quick.py). Each process measures on one intra-op thread, as a
    single one does, so a row does not depend on how many ran beside it. The pool is spawned (no fork of a
    process that holds torch's threads), its processes ignore Ctrl-C and stop signals, and this process waits
    for them in short steps so that a stop lands here: it then terminates the pool. Rows are committed one by
    one, so a stop loses only the rows being measured, as it does without workers."""
    import multiprocessing

    runs = _runs_of(todo)
    rows = {rid: sum(rec.run_id == rid for rec, *_ in todo) for rid in runs}
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(runs)), initializer=_ignore_stops)
    total = {"written": 0, "diverged": 0}
    try:
        pending = {rid: pool.apply_async(_measure_one_run, (str(store_path), rid, job)) for rid in runs}
        while pending:
            stopping.check()
            for rid in [r for r, res in pending.items() if res.ready()]:
                outcome = pending.pop(rid).get()
                if "error" in outcome:
                    raise (DepthlabError if outcome["depthlab"] else RuntimeError)(outcome["error"])
                total["written"] += outcome["written"]
                total["diverged"] += outcome["diverged"]
                bar.update(rows[rid])
            if pending:
                next(iter(pending.values())).wait(0.2)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return total


def _ignore_stops() -> None:
    """A pool process leaves Ctrl-C and stop signals to the process that waits for it (`_side_by_side`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_POOL_DATA: dict = {}  # a pool process's datasets, kept from one run to the next (a run's task loads none again)


def _measure_one_run(store_path: str, run_id: str, job: dict) -> dict:
    """In a pool process: one run's rows of the plan, as `_run` measures them alone. Errors come back as text
    (an exception class with its own arguments may not survive pickling)."""
    from depthlab.run.runner import DataCache

    try:
        device = torch.device(job["device"])
        torch.set_num_threads(1)
        key = (job["device"], job["data_root"])
        data = _POOL_DATA.setdefault(key, DataCache(device, job["data_root"]))
        selection = {**job["selection"], "runs": [run_id]}
        summary = _run(store_path, device, job["data_root"], job["examples"], False, lambda msg: None, selection,
                       job["precision"], 1, data)
        return {"written": summary["written"], "diverged": summary["diverged"]}
    except BaseException as err:  # noqa: BLE001 - handed back to the waiting process, which raises it
        return {"error": str(err) or type(err).__name__, "depthlab": isinstance(err, DepthlabError)}


def _log_skipped(the_plan: ShiftPlan, store_path, log) -> None:
    """What the plan leaves out, and why: runs without weights, corruptions that cannot be made, rows done."""
    if the_plan.no_weights:
        log(f"{len(the_plan.no_weights)} done run(s) have no saved weights and are skipped; to measure them, "
            f"train with `depthlab run SPEC --store {store_path} --save-weights`")
    if the_plan.no_bn:
        methods = sorted(set().union(*the_plan.no_bn.values()))
        log(f"{len(the_plan.no_bn)} run(s) have no BatchNorm (norm none or group): {', '.join(methods)} act on BN "
            "statistics and are not measured on them (source is)")
    for (suite, name, severity), why in sorted(the_plan.unavailable.items()):
        log(f"skipped {suite} {name} severity {severity}: {why}")
    if the_plan.done_before:
        log(f"{the_plan.done_before} measurement(s) already in the store: kept, not measured again")


def _load_run(store: Store, store_path, data, rec, examples, device) -> dict:
    """A run's trained model on `device` and the first `examples` of its test split (all when None); refused
    when the run's rows already in the store were measured on another number of examples."""
    rid = rec.run_id
    config = RunConfig.from_dict(rec.config)
    ds = data.get(config)
    model, _, _ = weights.load_trained(store_path, rid, ds)
    n = len(ds.test_x) if examples is None else min(examples, len(ds.test_x))
    before = _examples_of(store, rid) - {n}
    if before:
        raise DepthlabError(
            f"run {rid} was measured on {', '.join(map(str, sorted(before)))} test examples before, "
            f"and this call would use {n}: rows of one run must share their stream; pass "
            f"--examples {min(before)} (or use another store)")
    return dict(rid=rid, model=model.to(device), x=ds.test_x[:n], y=ds.test_y[:n], mean=ds.mean, std=ds.std,
                dataset=config.dataset)


def _row(loaded: dict, name: str, severity: int, seed: int, batch: int, method: Method, result: dict,
         env: dict) -> dict:
    """The `shift_results` row of one measurement: its key, what it measured, the method's settings, the env."""
    return dict(run_id=loaded["rid"], corruption=name, severity=severity, method=method.stored_name,
                batch_size=batch, alpha=method.alpha, seed=seed, **result,
                settings=dict(label=method.label, episodic=method.episodic, lr=method.lr,
                              suite=corrupt.suite_of(loaded["dataset"]),
                              variance="biased" if method.name == "tent" else "unbiased"),
                env=env)
