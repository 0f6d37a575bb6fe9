"""Running a study: the designs' cost, rounds of training until every contrast is decided or at its seed cap, the
robustness lever, then the answer (`depthlab.study.decide`).

A study adds orchestration, not a second pipeline: its runs are one sweep (`study NAME`) trained by the sweep runner
(or the Ray backend) into the store like any other, so a run another sweep already trained is not trained again,
and a killed study resumes where it stopped. The store keeps the study's spec and the round it reached (the seeds
each design has been given), so that a restart continues the same rounds; the robustness lever's measurements are
`depthlab shift` rows, resumable the same way.
"""

from __future__ import annotations

import sys
import time

from depthlab.choices import LAYOUTS, check
from depthlab.errors import DepthlabError
from depthlab.study import decide
from depthlab.study.levels import LAYOUT
from depthlab.study.design import StudySpec, designs as make_designs, lever_designs, study_sweep

SHIFT_ALPHAS = (0.1,)  # alpha-BN's weight on the batch statistics ((1 - α) source + α batch): the paper's default


def skipped_levers(spec: StudySpec) -> dict[str, str]:
    """{lever: why it is not studied} for levers the dataset or the spec rule out."""
    from depthlab.data import registry

    out = {}
    if "shift" in spec.levers and registry.entry(spec.dataset).suite is None:
        out["shift"] = (f"{spec.dataset} has no corruption suite (the datasets with one: "
                        f"{', '.join(registry.with_suite())})")
    if "shift" in spec.levers and "depth" not in spec.levers:
        out["shift"] = "the robustness lever measures the depth lever's designs: add depth to --levers"
    return out


def check_recorded(store, spec: StudySpec, store_path) -> dict:
    """The study's recorded state ({"round", "seeds"}), after refusing a recorded study of the same name whose
    design differs (its runs would be read as this design's)."""
    recorded = store.study(spec.name)
    if recorded is None:
        return {"round": 0, "seeds": {}, "layout": None}
    before = _as_read(recorded["spec"])
    if before != spec.to_dict():
        changed = sorted(k for k in set(before) | set(spec.to_dict()) if before.get(k) != spec.to_dict().get(k))
        raise DepthlabError(f"study {spec.name!r} in {store_path} was run with another design (it differs in "
                            f"{', '.join(changed)}); give this one another name (--name), or write the recorded "
                            f"design with `depthlab study --store {store_path} --name {spec.name} --write-spec "
                            "FILE` and run that file")
    return {"round": recorded["round"], "seeds": dict(recorded["state"].get("seeds", {})),
            "layout": recorded["state"].get("layout")}


def _as_read(recorded: dict) -> dict:
    """A recorded study spec as this version reads it: a field added since takes its default (the level's value),
    as the spec file would give it."""
    try:
        return StudySpec.from_dict(recorded).to_dict()
    except DepthlabError:
        return recorded


def run_study(spec: StudySpec, store_path, *, device="auto", backend: str = "local", ray_address=None,
              precision: str = "auto", data_root=None, progress: bool = True, log=None,
              train: bool = True, layout: str | None = None) -> dict:
    """Run (or resume) the study into the store at `store_path` and return its result (`decide.study_result`).
    `train=False` reads what the store holds and trains nothing (`depthlab study --no-train`). Its runs train,
    and their cost is measured, in the activations' `layout` (None: the one the study was run in, recorded with
    it, else `depthlab.study.levels.LAYOUT`); the result names the layouts its runs trained in."""
    from depthlab import precision as precisions
    from depthlab.results.store import Store, check_store_path
    from depthlab.run.runner import resolve_device

    log = log or (lambda msg: print(msg, file=sys.stderr))
    check_store_path(store_path)
    if layout is not None:
        check("layout", layout, LAYOUTS)
    started = time.perf_counter()
    designs = make_designs(spec)  # refuses a budget no design of a lever can meet, before anything runs
    skipped = skipped_levers(spec)
    local = resolve_device(device) if backend == "local" else None
    seconds = {"training": 0.0, "cost": 0.0, "shift": 0.0}
    with Store(store_path) as store:
        state = check_recorded(store, spec, store_path)
        layout = state["layout"] = layout or state["layout"] or LAYOUT
        cost_device = local if local is not None else resolve_device("cpu")
        resolved = precisions.resolve(precision, cost_device)
        seeds = state["seeds"]
        if train:
            clock = time.perf_counter()
            costs = _costs(store, designs, cost_device, resolved, layout, log)
            seconds["cost"] = time.perf_counter() - clock
            seeds = _rounds(spec, designs, costs, store, store_path, state, dict(
                device=device, backend=backend, ray_address=ray_address, precision=precision, data_root=data_root,
                progress=progress, log=log, eval_every=spec.eval_every, layout=layout), seconds)
            if "shift" in spec.levers and "shift" not in skipped:
                clock = time.perf_counter()
                _shift(spec, designs, store, store_path, cost_device, resolved, data_root, progress, log)
                seconds["shift"] = time.perf_counter() - clock
            store.save_study(spec.name, spec.to_dict(), state["round"], {"seeds": seeds, "phase": "done",
                                                                          "layout": layout})
        else:
            costs = {d.key: store.cost(_cost_key(d, cost_device, resolved, layout)) for d in designs}
        records = store.records(sweep=spec.sweep)
        shift_rows = store.shift_rows([r.run_id for r in records]) if "shift" in spec.levers else []
    seconds["total"] = time.perf_counter() - started
    env = dict(device=str(cost_device), precision=resolved, layout=_layouts(records),
               inference_precision=precisions.for_inference(precision, cost_device),
               seconds={k: round(v, 1) for k, v in seconds.items()})
    return decide.study_result(spec, designs, records, costs, shift_rows, skipped=skipped, env=env)


def _layouts(records) -> str | None:
    """The layouts the study's runs trained in ("channels_last", "nchw", or both, comma-separated), as recorded
    with each run; None before any run recorded one."""
    flags = {(r.env or {}).get("channels_last") for r in records} - {None}
    return ", ".join(sorted("channels_last" if flag else "nchw" for flag in flags)) or None


def _cost_key(d, device, precision: str, layout: str) -> str:
    import torch

    from depthlab.study.cost import cost_key

    return cost_key(d.config(0), device, precision, torch.get_num_threads(), layout)


def _costs(store, designs, device, precision: str, layout: str, log) -> dict:
    """{design key: cost} measured on this machine (only those the store lacks)."""
    from depthlab.records import config_id
    from depthlab.study.cost import costs

    measured = costs(store, [d.config(0) for d in designs], device, precision, log=log, layout=layout)
    return {d.key: measured.get(config_id(d.config(0).to_dict())) for d in designs}


def _rounds(spec: StudySpec, designs, costs: dict, store, store_path, state: dict, how: dict,
            seconds: dict) -> dict:
    """Train round after round until no open contrast can grow; returns the seeds reached. Each round's seeds are
    recorded before it trains, so that a killed round is resumed, not re-decided."""
    seeds = state["seeds"]
    while True:
        store.save_study(spec.name, spec.to_dict(), state["round"], {"seeds": seeds, "phase": "training",
                                                                      "layout": state["layout"]})
        sweep = study_sweep(spec, seeds, costs)
        how["log"](f"study {spec.name}: round {state['round'] + 1}, {len(sweep.configs())} runs of "
                   f"{len({d.key for d in designs})} designs")
        clock = time.perf_counter()
        summary = _train(sweep, store_path, **how)
        seconds["training"] += time.perf_counter() - clock
        if summary.get("counts", {}).get("failed"):
            how["log"](f"study {spec.name}: {summary['counts']['failed']} run(s) failed; see `depthlab results "
                       f"--store {store_path} --sweep '{spec.sweep}' --status failed`")
        result = decide.study_result(spec, designs, store.records(sweep=spec.sweep), costs, [])  # as answered
        grown = decide.next_seeds(spec, seeds, result)
        if grown is None:
            return seeds
        how["log"](f"study {spec.name}: {sum(grown[k] != seeds.get(k, spec.seeds) for k in grown)} design(s) of "
                   "undecided contrasts get more seeds")
        seeds = grown
        state["round"] += 1


def _train(sweep, store_path, *, device, backend, ray_address, precision, data_root, progress, log,
           eval_every: int, layout: str) -> dict:
    """Train the sweep's missing runs, with their weights (the robustness lever and later analyses load them) and
    without the geometric complexity (the study does not read it; it would count as time outside training)."""
    if backend == "ray":
        from depthlab.run.ray_backend import run_sweep_ray

        return run_sweep_ray(sweep, store_path, device=device, address=ray_address, data_root=data_root,
                             progress=progress, save_weights=True, precision=precision, log=log, complexity=False,
                             eval_every=eval_every, layout=layout)
    from depthlab.run.runner import run_sweep

    return run_sweep(sweep, store_path, device=device, save_weights=True, data_root=data_root, progress=progress,
                     precision=precision, log=log, complexity=False, eval_every=eval_every, layout=layout)


def shift_corruptions(spec: StudySpec) -> tuple[str, list[str], object]:
    """(suite, the corruptions the robustness lever measures, their severities): the first `shift_corruptions`
    of the dataset's suite that can be made here, at the MNIST-C benchmark's severity for MNIST-shaped data and
    at severity 3 (the middle) for the others."""
    from depthlab.data import corrupt
    from depthlab.shift.runner import MNISTC

    suite = corrupt.suite_of(spec.dataset)
    severity = MNISTC if suite == "mnist-c" else (3,)
    names = []
    for name in corrupt.SUITES[suite]:
        level = corrupt.MNISTC_SEVERITY[name] if severity == MNISTC else 3
        if corrupt.unavailable(suite, name, level) is None:
            names.append(name)
    return suite, names[:spec.shift_corruptions] if spec.shift_corruptions else names, severity


def _shift(spec: StudySpec, designs, store, store_path, device, precision: str, data_root, progress, log) -> None:
    """The robustness lever: every done run of the frontier's designs on the chosen corruptions, in the precision
    the study evaluates in (`depthlab.precision.for_inference`: float32 on a CPU; each row records its own)."""
    from depthlab import precision as precisions
    from depthlab.shift.runner import run_shift

    frontier = {d.key for b in spec.budgets for d in lever_designs(designs, "depth", b)}
    runs = [r.run_id for r in store.records(sweep=spec.sweep, status="done") if decide.design_key(r.config) in frontier]
    if not runs:
        return
    _, names, severities = shift_corruptions(spec)
    run_shift(store_path, device=device, data_root=data_root, examples=spec.shift_examples, progress=progress,
              log=log, precision=precisions.for_inference(precision, device), runs=runs, corruptions=names,
              severities=severities, methods=spec.shift_methods, batch_sizes=spec.shift_batch_sizes,
              alphas=SHIFT_ALPHAS)
