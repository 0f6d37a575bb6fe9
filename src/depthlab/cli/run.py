"""`depthlab run`: train a sweep (a YAML spec or a preset) into a results store, then print the comparison."""

from __future__ import annotations

import argparse
import dataclasses
import os

from depthlab import choices
from depthlab.cli.args import Defaults, add_layout, add_precision, positive_int
from depthlab.errors import DepthlabError, SpecError
from depthlab.spec.grid import PRESETS, check_name
from depthlab.results.store import DEFAULT_STORE

# A dry run of a bigger grid counts its runs from the grid's list lengths instead of expanding and hashing each.
DRY_RUN_EXPAND = 20_000
CROP_NOTE = 2  # a crop that keeps more than this many times its density says so


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="train a sweep (spec file or preset) into a results store",
        description="Train every run of a sweep that the store does not hold yet, a pack of same-shape models at a "
        "time, then print the deep-vs-shallow comparison. Safe to stop and restart: finished runs are kept and "
        "never trained twice; interrupted ones restart. Several `depthlab run` processes may share one store.",
        formatter_class=Defaults)
    p.add_argument("spec", nargs="?", default="demo",
                   help=f"a YAML sweep spec, or a preset: {', '.join(PRESETS)}")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite results file (created if missing)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="give FIELD this value in every run (repeatable; a list such as blocks=[2,4] varies it, so a "
                   "per-block hidden is hidden=[[8,16]]); "
                   "the sweep is named with its overrides (a short hash of them when they are long; see --name)")
    p.add_argument("--name", type=_sweep_name, default=None,
                   help="the sweep's name in the store, instead of the spec's name and its [overrides] suffix")
    p.add_argument("--device", default="auto", choices=choices.DEVICES, help="where to train")
    p.add_argument("--limit", type=positive_int, default=None, help="train at most N runs in this invocation")
    p.add_argument("--dry-run", action="store_true", help="print the number of runs and packs; train nothing")
    p.add_argument("--backend", default="local", choices=choices.BACKENDS,
                   help="local: this process; ray: packs as Ray tasks (an existing or a new local Ray instance)")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (backend ray)")
    p.add_argument("--max-pack", type=positive_int, default=None, help="at most this many models per pack")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="packs trained at once in this process, each on its share of torch's threads (local "
                   "backend; default: 2 on a CPU with two or more, 1 on a GPU). Small networks do not keep two "
                   "cores busy within one operator: two packs side by side train about 1.1x faster. Recorded per run")
    add_precision(p, help="auto: bf16 autocast where the device computes bf16 natively (CUDA; CPUs with AVX-512 "
                  "BF16, AMX or Arm BF16), fp32 elsewhere; fp32 reproduces the engine's float32 training. Recorded "
                  "per run (not part of its identity: a finished run is not trained again in another precision)")
    add_layout(p)
    p.add_argument("--no-complexity", dest="complexity", action="store_false",
                   help="skip each run's geometric complexity (10 backward passes over 128 examples at the end; "
                   "recorded as null, and as complexity: false in the run's environment)")
    p.add_argument("--compile", action="store_true", help="torch.compile each pack (CUDA; slower to start)")
    p.add_argument("--save-weights", action="store_true",
                   help="keep each trained model's weights next to the store (STORE.weights/RUN_ID.pt)")
    p.add_argument("--data-root", default=None, help="dataset directory (default: $DEPTHLAB_DATA or "
                   "~/.cache/depthlab); CIFAR-10 is read from here")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write each run's per-epoch metrics (losses, accuracies, epoch times) as TensorBoard "
                   "scalars under DIR/RUN_ID as its epochs end, with its config as hparams; view them with "
                   "`tensorboard --logdir DIR`. Runs already finished are not written again. Needs "
                   "pip install 'depthlab[tensorboard]'")
    p.add_argument("--eval-every", type=positive_int, default=1, metavar="N",
                   help="measure the validation split every N-th epoch and the last (the epochs between record "
                   "training metrics only; what a run learns does not change; recorded per run)")
    p.add_argument("--retry-failed", action="store_true",
                   help="train the spec's failed runs again (diverged runs stay: divergence is a result)")
    p.add_argument("--no-compare", action="store_true", help="do not print the comparison at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)


def _sweep_name(text: str) -> str:
    try:
        return check_name(text)
    except SpecError as err:
        raise argparse.ArgumentTypeError(err.allowed) from None


def run_command(args) -> int:
    import torch

    from depthlab.run.runner import resolve_device
    from depthlab.spec.grid import load_spec, parse_overrides
    from depthlab.results.store import check_store_path

    check_store_path(args.store)  # before anything: a store that keeps nothing must not get a sweep
    spec = load_spec(args.spec).with_overrides(parse_overrides(args.overrides))
    if args.name is not None:
        spec = dataclasses.replace(spec, name=args.name)
    # with Ray the device is the workers', which this machine may not have
    device = resolve_device(args.device) if args.backend == "local" else torch.device(
        "cuda" if args.device == "cuda" else "cpu")
    if args.dry_run:
        return _dry_run(args, spec, device)
    if not os.path.exists(args.store):
        _check_sweep(args, spec)  # a sweep refused after the store was created would leave an empty one behind
    summary = _train_sweep(args, spec, device)
    counts = summary["counts"]
    _print_trained(args, spec, summary)
    _print_wide_crops(args, spec)
    if not args.no_compare and counts.get("done", 0):
        _print_comparison(args, spec)
    if counts.get("failed", 0):
        print(f"{counts['failed']} run(s) of sweep {spec.name} failed: see why with `depthlab results --store "
              f"{args.store} --sweep '{spec.name}' --status failed` (column error); train them again with "
              "--retry-failed")
        return 1
    return 0


def _dry_run(args, spec, device) -> int:
    """--dry-run: how many runs and packs the sweep has, and how many are left to train; nothing trains."""
    from depthlab.run.runner import plan
    from depthlab.results.store import Store

    size = spec.check_size()
    if size > DRY_RUN_EXPAND:
        print(f"sweep {spec.name}: at most {size:,} runs (the product of the grid's lists, before exclude and "
              f"duplicates); over {DRY_RUN_EXPAND:,}, so the dry run counts them without expanding or "
              "validating each (dry run: nothing trained)")
        return 0
    store = Store(args.store, readonly=True) if os.path.exists(args.store) else None
    the_plan = plan(spec, store, device, args.limit, args.max_pack, add=False, precision=args.precision,
                    workers=args.workers, store_path=args.store, layout=args.layout)
    if store is not None:
        store.close()
    measured = (f"; the pack sizes of {the_plan.uncalibrated} shape(s) may be measured when they first train, "
                "and the number of packs change" if the_plan.uncalibrated else "")
    print(f"sweep {spec.name}: {the_plan.total} runs, {the_plan.finished} already finished in {args.store}, "
          f"{len(the_plan.todo)} to train in {len(the_plan.packs)} packs on {device} in {the_plan.precision}"
          f"{f', {the_plan.workers} at a time' if the_plan.workers > 1 else ''}"
          f"{measured} (dry run: nothing trained)")
    return 0


def _check_sweep(args, spec) -> None:
    """What starting the sweep checks once its store is open (every run valid, at least one run, every init_from
    known), checked without a store: planned for no device, as for Ray workers, and for one run (no packs)."""
    import torch

    from depthlab.run.runner import plan

    plan(spec, None, torch.device("meta"), limit=1, add=False, store_path=args.store)


def _train_sweep(args, spec, device) -> dict:
    """Train the sweep's runs that the store lacks, on the chosen backend; the driver's summary."""
    from depthlab.run.runner import run_sweep

    if args.backend == "ray":
        if args.workers is not None:
            raise DepthlabError("--workers is for the local backend: Ray trains a pack per Ray worker "
                                "(give Ray its CPUs instead)")
        from depthlab.run.ray_backend import run_sweep_ray
        return run_sweep_ray(spec, args.store, device=args.device, limit=args.limit, max_pack=args.max_pack,
                             address=args.ray_address, data_root=args.data_root, progress=not args.quiet,
                             compile=args.compile, save_weights=args.save_weights,
                             retry_failed=args.retry_failed, precision=args.precision,
                             complexity=args.complexity, eval_every=args.eval_every, tensorboard=args.tensorboard,
                             layout=args.layout)
    return run_sweep(spec, args.store, device=device, limit=args.limit, max_pack=args.max_pack,
                     compile=args.compile, save_weights=args.save_weights, data_root=args.data_root,
                     progress=not args.quiet, retry_failed=args.retry_failed, precision=args.precision,
                     complexity=args.complexity, workers=args.workers, tensorboard=args.tensorboard,
                     eval_every=args.eval_every, layout=args.layout)


def _print_trained(args, spec, summary: dict) -> None:
    """One line: what this invocation trained, where and how, and the store's counts."""
    trained = summary["trained"]
    counts = summary["counts"]
    workers = f" ({summary['workers']} packs at a time)" if summary.get("workers", 1) > 1 else ""
    print(f"sweep {spec.name}: trained {sum(trained.values())} runs in {summary['seconds']:.1f} s on "
          f"{summary['device']}{workers} in {summary['precision']} ({trained.get('done', 0)} done, "
          f"{trained.get('diverged', 0)} diverged, {trained.get('failed', 0)} failed); store {args.store}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if v))


def _print_wide_crops(args, spec) -> None:
    """One line when crop runs of the sweep kept more than CROP_NOTE times the density they ask for: a crop keeps
    whole channels, at least one per layer, which in a narrow network can be far more than the mask kept."""
    from depthlab.results.store import Store

    with Store(args.store, readonly=True) as store:
        records = store.records(sweep=spec.name)
    wide = [(r.config["density"], r.extra["realised_density"]) for r in records
            if r.config.get("prune_structure") == "crop" and r.extra.get("realised_density") is not None
            and r.extra["realised_density"] > CROP_NOTE * r.config["density"]]
    if wide:
        shown = ", ".join(f"{asked:g} kept {got:.3g}" for asked, got in sorted(set(wide))[:3])
        print(f"{len(wide)} crop run(s) of sweep {spec.name} kept more than {CROP_NOTE:g}x their density (density "
              f"{shown}{', ...' if len(set(wide)) > 3 else ''}): a crop keeps whole channels, at least one per "
              "layer; each run records its realised_density (`depthlab results`)")


def _print_comparison(args, spec) -> None:
    """The sweep's paired comparison (`depthlab compare` with its defaults), or why it has to wait."""
    from depthlab.analysis.compare import compare_report, format_answer
    from depthlab.results.store import Store

    with Store(args.store, readonly=True) as store:
        records = store.records(sweep=spec.name)
    print()
    try:
        print(format_answer(compare_report(records), store=args.store, sweep=spec.name))
    except DepthlabError as err:  # e.g. pairs that would mix recipes: every result is kept, the comparison waits
        print(f"compare: {err}")
