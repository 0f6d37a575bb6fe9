"""`depthlab shift`: trained runs on corrupted test sets, with test-time methods, measured into the store."""

from __future__ import annotations

import argparse

from depthlab import choices
from depthlab.cli.args import add_precision, described, positive_int

DEFAULT_METHODS = ("source", "norm", "alpha_bn", "tent")  # the published ones: not our reconstruction


def _list(kind):
    """An argparse type: comma-separated values of `kind`."""

    def parse(text: str):
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"an empty list: {text!r}")
        try:
            return [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__}s: {text!r}") from None

    return parse


def _severity(text: str):
    from depthlab.errors import SpecError
    from depthlab.shift.runner import parse_severities

    try:
        return parse_severities(text)
    except SpecError as err:
        raise argparse.ArgumentTypeError(f"{err.value!r}; allowed: {err.allowed}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shift", help="measure trained runs on corrupted test sets with test-time methods (TENT, alpha-BN, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate every done run that has saved weights (`depthlab run --save-weights`) on corrupted\n"
        "copies of its test split (MNIST-C's 15 corruptions for MNIST, CIFAR-10-C's 15 + 4 for CIFAR-10;\n"
        "`depthlab data corrupt list` shows them), with each test-time method, at each evaluation batch size.\n"
        "Methods (each works on a copy; the stored weights never change):\n"
        f"{described(choices.SHIFT_METHODS)}\n"
        "One row per (run, corruption, severity, method, batch size, alpha, seed) goes to the store as soon as\n"
        "it is measured: a stopped or killed `depthlab shift` resumes where it stopped. The test stream has one\n"
        "order per seed, the same for every method and run. Compare with\n"
        "  depthlab compare --table shift --contrast method --by eval_batch_size\n"
        "  depthlab compare --table shift --contrast topology --by method,corruption\n\n"
        "example:\n  depthlab shift --store mnist.sqlite --severity mnistc --batch-size 1,16,200 --examples 1000",
    )
    _run_options(p)
    _measurement_options(p)
    _execution_options(p)
    p.set_defaults(func=cmd_shift)


def _run_options(p) -> None:
    """Which trained runs are measured."""
    from depthlab.results.store import DEFAULT_STORE

    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help="results store (default: %(default)s)")
    p.add_argument("--runs", type=_list(str), metavar="ID[,ID...]",
                   help="only these runs (full ids or unique prefixes; default: every done run with weights)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")


def _measurement_options(p) -> None:
    """What each run is measured on and with: corruptions, severities, methods, batch sizes, seeds, examples."""
    p.add_argument("--corruptions", type=_list(str), default=["all"], metavar="NAME[,NAME...]",
                   help="corruptions of the dataset's suite, or all (default)")
    p.add_argument("--severity", type=_severity, default=[1, 2, 3, 4, 5], metavar="LEVELS",
                   help="1-5 (default), a list such as 1,3,5, or mnistc: each corruption at its MNIST-C benchmark "
                   "severity. Corruptions without levels (stripe, dotted_line, zigzag, canny_edges) have severity 0")
    p.add_argument("--methods", type=_list(str), default=list(DEFAULT_METHODS), metavar="NAME[,NAME...]",
                   help=f"of: {', '.join(choices.SHIFT_METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--batch-size", type=_list(positive_int), default=[1, 16, 200], metavar="B[,B...]",
                   help="evaluation batch sizes (default: 1,16,200)")
    p.add_argument("--alpha", type=_list(float), default=[0.1], metavar="A[,A...]",
                   help="alpha_bn's (and core_reconstructed's) weight on the test batch's statistics, in [0, 1] "
                   "(default: 0.1)")
    p.add_argument("--seed", type=_list(int), default=[0], metavar="S[,S...]",
                   help="seeds of the corruptions and the stream order (default: 0)")
    p.add_argument("--examples", type=positive_int, default=None, metavar="N",
                   help="the first N examples of each run's test split (default: all)")
    p.add_argument("--episodic", action="store_true",
                   help="reset tent and core_reconstructed before every batch (stored as tent_episodic, ...)")


def _execution_options(p) -> None:
    """Where and how the measuring runs: device, data directory, threads, precision, progress."""
    p.add_argument("--device", default="cpu", choices=choices.DEVICES, help="where to evaluate "
                   "(default: %(default)s)")
    p.add_argument("--data-root", default=None, help="dataset directory, also where corrupted sets are cached "
                   "(default: $DEPTHLAB_DATA or ~/.cache/depthlab)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default on a CPU: 1; small test batches are fastest on one)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="runs measured side by side on a CPU, one process each (default: one per core, as "
                        "training's packs, up to 2); rows do not depend on it")
    add_precision(p, help="what the networks compute in: auto is bf16 where the device computes it natively "
                  "(CUDA, CPUs with AVX-512 BF16/AMX/Arm BF16), else fp32; recorded in each row's env, not part of "
                  "its key (rows already measured are kept)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_shift(args) -> int:
    from depthlab.shift.runner import run_shift

    summary = run_shift(args.store, device=args.device, data_root=args.data_root, examples=args.examples,
                        progress=not args.quiet, threads=args.threads, workers=args.workers, runs=args.runs, sweep=args.sweep, corruptions=args.corruptions,
                        severities=args.severity, methods=args.methods, batch_sizes=args.batch_size,
                        alphas=args.alpha, seeds=args.seed, episodic=args.episodic, precision=args.precision)
    print(f"shift: measured {summary['written']} row(s) of {summary['runs']} run(s) into {args.store}"
          + (f" ({summary['diverged']} diverged)" if summary["diverged"] else "")
          + (f"; {summary['done_before']} were there already" if summary["done_before"] else ""))
    print(f"compare them: depthlab compare --store {args.store} --table shift --contrast method "
          "--by eval_batch_size")
    return 0
