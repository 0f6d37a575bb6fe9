"""Commands that read the results store: `status`, `results` (export), `compare` (the paired statistics) and
`summary` (outcomes per group of settings)."""

from __future__ import annotations

import argparse
import json
import time

from depthlab.cli.args import positive_float
from depthlab.errors import DepthlabError

STORE_HELP = "results store (SQLite file; default: %(default)s)"


def _open_store(path: str):
    """The existing store at `path` (these commands only read: a missing file is the user's mistake)."""
    from depthlab.sweep.store import Store

    return Store.existing(path)


def cmd_status(args) -> int:
    from depthlab.analysis.compare import text_table
    from depthlab.sweep.store import STATUSES

    with _open_store(args.store) as store:
        sweeps = store.sweeps()
        per_sweep = [(s or "(unnamed)", store.counts(sweep=s)) for s in sweeps]
        total = store.counts()
        running = store.running()
    print(f"store: {args.store}")
    rows = [[name, *(c[s] for s in STATUSES), sum(c.values())] for name, c in per_sweep]
    if len(per_sweep) != 1:
        rows.append(["all", *(total[s] for s in STATUSES), sum(total.values())])
    print(text_table(["sweep", *STATUSES, "total"], rows, "l" + "r" * (len(STATUSES) + 1)))
    if running:
        now = time.time()
        owners: dict[str, list[dict]] = {}
        for r in running:
            owners.setdefault(r["owner"] or "?", []).append(r)
        print(f"\nrunning: {len(running)} run(s) held by {len(owners)} owner(s)")
        rows = []
        for owner, runs in owners.items():
            beat = max((r["heartbeat_at"] or r["claimed_at"] or 0) for r in runs)
            rows.append([owner, len(runs), f"{now - beat:.0f} s ago" if beat else "never"])
        print(text_table(["owner (host:pid:token)", "runs", "last heartbeat"], rows, "lrr"))
    return 0


def cmd_results(args) -> int:
    from depthlab.sweep.export import write_results

    with _open_store(args.store) as store:
        records = store.records(status=args.status, sweep=args.sweep)
    n = write_results(records, args.format, args.out)
    if args.out != "-":
        print(f"wrote {n} run(s) to {args.out}")
    return 0


def _sweep_records(args) -> list[dict]:
    """The records of `--store` (of `--sweep` when given); none is an error."""
    with _open_store(args.store) as store:
        records = store.records(sweep=args.sweep)
    if not records:
        where = f" in sweep {args.sweep!r}" if args.sweep else ""
        raise DepthlabError(f"the store {args.store!r} holds no runs{where}; start a sweep with `depthlab run`")
    return records


def _print(result: dict, as_json: bool, as_text) -> int:
    print(json.dumps(result, indent=2, allow_nan=False) if as_json else as_text(result), end="\n" if as_json else "")
    return 0


def cmd_compare(args) -> int:
    from depthlab.analysis.compare import DEFAULT_METRICS, compare_report, format_report

    records = _sweep_records(args)
    metrics = args.metric or list(DEFAULT_METRICS)
    report = compare_report(records, margin=args.margin, by=args.by, metrics=metrics, alpha=args.alpha,
                            n_boot=args.n_boot, seed=args.seed)
    return _print(report, args.json, format_report)


def cmd_summary(args) -> int:
    from depthlab.analysis.summary import DEFAULT_SUMMARY_METRICS, format_summary, summarise

    records = _sweep_records(args)
    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by else None
    summary = summarise(records, by=by, metrics=args.metric or DEFAULT_SUMMARY_METRICS)
    return _print(summary, args.json, format_summary)


def register(subparsers) -> None:
    from depthlab.sweep.export import FORMATS
    from depthlab.sweep.store import DEFAULT_STORE, METRICS, STATUSES

    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "status", help="how many runs are pending, running, done, diverged, failed",
        description="Count the runs of the results store by status (per sweep when it holds several), and list "
        "who holds the running ones (owner = host:pid:token) with their last heartbeat.",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "results", help="export the runs as a table (CSV, JSON or Parquet)", formatter_class=fmt,
        description="Export one row per run: run_id, dataset, topology, blocks, width, kernel, params, q, status,\n"
        "the final train/val/test loss and accuracy, epochs, seconds, then every config field that varies\n"
        "across the exported runs.\n\nexamples:\n  depthlab results > runs.csv\n"
        "  depthlab results --status done --format parquet --out runs.parquet",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--format", default="csv", choices=FORMATS, help="output format (default: %(default)s)")
    p.add_argument("--out", default="-", metavar="FILE", help="output file; '-' is stdout (default; not for parquet)")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.set_defaults(func=cmd_results)

    p = subparsers.add_parser(
        "compare", help="paired statistics: parallel (shallow) vs sequential (deep)", formatter_class=fmt,
        description="Compare the two wirings honestly. Runs whose configs differ only in topology form a pair;\n"
        "d = parallel - sequential. Per dataset and per Q band (Q = examples x outputs / parameters):\n"
        "mean and median d, a percentile-bootstrap CI of the mean, win counts, a TOST equivalence test\n"
        "against a margin, and a verdict: 'equivalent within ±margin', 'parallel better', 'sequential\n"
        "better' or 'inconclusive'. Pairs with a diverged or failed run are excluded and counted.\n"
        "Also prints the mean losses per dataset x topology x Q band.\n\n"
        "default margin: 5% of the pooled mean for losses, 0.01 for accuracies.",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--metric", action="append", choices=METRICS,
                   help="metric to compare; repeat for several (default: val_loss, train_loss, val_acc)")
    p.add_argument("--margin", type=positive_float, metavar="M",
                   help="equivalence margin, absolute in the metric's units (default: see above)")
    p.add_argument("--by", metavar="FIELD", help="also split every group by this config field (e.g. head, norm)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--alpha", type=float, default=0.05, help="test level; the CI is 1 - alpha (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=10000, metavar="N", help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of tables")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "summary", help="outcomes grouped by config fields: runs trained, diverged, mean ± std metrics",
        formatter_class=fmt,
        description="Group the runs by config fields (default: every field that varies, except seed) and print\n"
        "per group the runs by status and the mean ± std of each metric over its done runs: which settings\n"
        "train, which diverge, how well.\n\nexamples:\n"
        "  depthlab summary --store normfree.sqlite\n"
        "  depthlab summary --by blocks,residual_scale --metric val_acc",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--by", metavar="FIELD[,FIELD...]", help="group by these config fields (default: the varied "
                   "ones except seed)")
    p.add_argument("--metric", action="append", choices=METRICS,
                   help="metric to average; repeat for several (default: train_loss, val_loss, val_acc)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)
