"""Commands on the results store: `status`, `results` (export), `compare` (the paired statistics), `summary`
(outcomes per group of settings) only read it, opening it read-only; `release` puts stuck runs back to pending."""

from __future__ import annotations

import argparse
import json
import time

from depthlab import choices
from depthlab.cli.args import int_between, positive_float
from depthlab.errors import DepthlabError
from depthlab.outputs import check_out
from depthlab.results.store import DEFAULT_STORE, collector_paused  # light: sqlite3 and depthlab.records

STORE_HELP = "results store (SQLite file; default: %(default)s)"
RAW = argparse.RawDescriptionHelpFormatter  # the descriptions below keep their own line breaks


def _open_store(path: str):
    """The existing store at `path`, read-only (these commands only read: a missing file is the user's mistake,
    and reading never changes the file)."""
    from depthlab.results.store import Store

    return Store.existing(path, readonly=True)


def cmd_status(args) -> int:
    from depthlab.analysis.compare import text_table
    from depthlab.records import STATUSES

    with _open_store(args.store) as store:
        sweeps = store.sweeps()
        per_sweep = [(s or "(unnamed)", store.counts(sweep=s)) for s in sweeps]
        total = store.counts()
        running = store.running()
        studies = [_study_progress(store, s) for s in store.studies()]
    print(f"store: {args.store}")
    rows = [[name, *(c[s] for s in STATUSES), sum(c.values())] for name, c in per_sweep]
    if len(per_sweep) != 1:
        rows.append(["all", *(total[s] for s in STATUSES), sum(total.values())])
    print(text_table(["sweep", *STATUSES, "total"], rows, "l" + "r" * (len(STATUSES) + 1)))
    if studies:
        print("\n" + text_table(["study", "round", "phase", "runs asked", "done"], [
            [s["name"], s["round"] + 1, s["state"].get("phase", "?"), s["asked"], s["done"]] for s in studies],
            "lrlrr"))
    if running:
        now = time.time()
        owners: dict[str, list[dict]] = {}
        for r in running:
            owners.setdefault(r["owner"] or "?", []).append(r)
        print(f"\nrunning: {len(running)} run(s) held by {len(owners)} owner(s)")
        rows = []
        dead = 0
        for owner, runs in owners.items():
            beat = max((r["heartbeat_at"] if r["heartbeat_at"] is not None else r["claimed_at"] or 0)
                       for r in runs)
            is_dead = all(r["owner_dead"] for r in runs)
            dead += len(runs) if is_dead else 0
            rows.append([owner, len(runs), f"{now - beat:.0f} s ago" if beat else "never",
                         "dead" if is_dead else "alive"])
        print(text_table(["owner (host:pid:token)", "runs", "last heartbeat", "owner"], rows, "lrrl"))
        if dead:
            print(f"\n{dead} run(s) are held by a dead owner: the next `depthlab run` takes them back, or release "
                  f"them now with `depthlab release --store {args.store} --stale`")
    return 0


def _study_progress(store, study: dict) -> dict:
    """A recorded study with the runs its current round asks for and how many of them are finished."""
    counts = store.counts(sweep=f"study {study['name']}")
    return {**study, "asked": sum(counts.values()), "done": sum(counts.get(s, 0) for s in ("done", "diverged",
                                                                                            "failed"))}


def cmd_release(args) -> int:
    from depthlab.results.store import Store

    if not args.run and not args.stale:
        raise DepthlabError("release what? give --run ID (repeatable) or --stale (runs whose owner is dead)")
    with Store.existing(args.store) as store:
        if args.run:
            running = {r["run_id"]: r for r in store.running()}
            unknown = [r for r in args.run if r not in running]
            if unknown:
                raise DepthlabError(f"not running in {args.store}: {', '.join(unknown)} (`depthlab status` lists "
                                    "the running runs and their owners)")
            alive = [r for r in args.run if not running[r]["owner_dead"]]
            if alive and not args.force:
                owners = ", ".join(sorted({running[r]["owner"] or "?" for r in alive}))
                raise DepthlabError(f"{len(alive)} of these run(s) are held by a runner that is alive ({owners}): "
                                    "released, its result would be thrown away when it finishes. Stop that runner, "
                                    "or pass --force to release them anyway")
        released = store.release_runs(args.run or None, stale=args.stale)
    print(f"released {len(released)} run(s) back to pending" + (": " + ", ".join(released) if released else ""))
    return 0


def cmd_drop(args) -> int:
    from depthlab.results.store import Store

    with Store.existing(args.store) as store:
        _check_sweep(store, args.sweep)
        n = store.drop_pending(args.sweep)
    print(f"dropped {n} pending run(s) from sweep {args.sweep!r}; its finished runs are kept")
    return 0


def _check_sweep(store, sweep) -> None:
    if sweep is not None and sweep not in store.sweeps():
        raise DepthlabError(f"no sweep {sweep!r} in the store; its sweeps: "
                            + (", ".join(repr(s) for s in store.sweeps()) or "none"))


def cmd_results(args) -> int:
    from depthlab.results.export import write_results

    if args.out != "-":
        check_out(args.out, args.store)  # before the store is read: never over the store, its WAL or its weights
    # the records hold no cycles: the collector's passes over millions of them, during the read and the
    # analysis after it, would free nothing (100,000 runs: a full pass was 0.2-0.8 s of each command)
    with collector_paused():
        with _open_store(args.store) as store:
            _check_sweep(store, args.sweep)
            records = store.records(status=args.status, sweep=args.sweep, history=args.history)
        n = write_results(records, args.format, args.out, history=args.history)
    if args.out != "-":
        print(f"wrote {n} {'epoch row' if args.history else 'run'}(s) to {args.out}")
    return 0


def _sweep_records(args) -> list:
    """The records of `--store` (of `--sweep` when given), without their histories (neither the comparison nor
    the summary reads them); none is an error."""
    with _open_store(args.store) as store:
        _check_sweep(store, args.sweep)
        records = store.records(sweep=args.sweep, history=False)
    if not records:
        where = f" in sweep {args.sweep!r}" if args.sweep else ""
        raise DepthlabError(f"the store {args.store!r} holds no runs{where}; start a sweep with `depthlab run`")
    return records


def _print(result: dict, as_json: bool, as_text) -> int:
    print(json.dumps(result, indent=2, allow_nan=False) if as_json else as_text(result), end="\n" if as_json else "")
    return 0


def cmd_compare(args) -> int:
    from depthlab.analysis.compare import DEFAULT_METRICS, compare_report, format_answer

    table = getattr(args, "table", "runs")
    if table == "runs":
        default = DEFAULT_METRICS
    else:
        from depthlab.shift.records import METRICS as default  # what a shift row measures
    metrics = args.metric or list(default)
    with collector_paused():
        records = _sweep_records(args) if table == "runs" else _shift_records(args)
        records, by = _combined_by(records, args.by, args.contrast)
        report = compare_report(records, margin=args.margin, by=by, metrics=metrics, alpha=args.alpha,
                                n_boot=args.n_boot, seed=args.seed, contrast=args.contrast,
                                allow_mixed_recipes=args.allow_mixed_recipes)
    if table == "shift":
        report["notes"].append(
            "Table shift: one record per measurement of a trained run on a corrupted test stream (depthlab shift); "
            "test_loss and test_acc are the online predictions' loss and accuracy there. The band table's train "
            "and val columns do not apply. Methods with an alpha carry it in their name (alpha_bn:0.1); "
            "core_reconstructed is a reconstruction of the alpha-BN paper's Core loss, not its published formula.")
    return _print(report, args.json, lambda r: format_answer(r, details=getattr(args, "details", False)))


def _shift_records(args) -> list:
    """The shift measurements of `--store` (of `--sweep`'s runs) as records; none is an error."""
    from depthlab.shift.records import load_shift_records

    with _open_store(args.store) as store:
        _check_sweep(store, args.sweep)
        records = load_shift_records(store, sweep=args.sweep)
    if not records:
        raise DepthlabError(f"the store {args.store!r} holds no shift measurements; measure trained runs with "
                            f"`depthlab shift --store {args.store}`")
    return records


def _combined_by(records: list, by: str | None, contrast: str) -> tuple[list, str | None]:
    """(records, the field to split by). `--by F1,F2`: records with one more config field named "F1,F2" whose
    value joins theirs, and that field is the one the comparison splits by (one field or several, the
    statistics are the same code)."""
    if by is None or "," not in by:
        return records, by
    from dataclasses import replace

    from depthlab.errors import SpecError
    from depthlab.results.export import varied_fields

    fields = [f.strip() for f in by.split(",") if f.strip()]
    allowed = [f for f in varied_fields(records) if f != contrast]
    for f in fields:
        if f not in allowed:
            raise SpecError("by", f, ", ".join(allowed) or f"none (no config field varies besides {contrast})")
    name = ",".join(fields)
    joined = lambda rec: ", ".join(str(rec.config.get(f)) for f in fields)
    return [replace(rec, config={**rec.config, name: joined(rec)}) for rec in records], name


def cmd_summary(args) -> int:
    from depthlab.analysis.summary import DEFAULT_SUMMARY_METRICS, format_summary, summarise

    by = [f.strip() for f in args.by.split(",") if f.strip()] if args.by else None
    with collector_paused():
        records = _sweep_records(args)
        summary = summarise(records, by=by, metrics=args.metric or DEFAULT_SUMMARY_METRICS)
    return _print(summary, args.json, format_summary)


def bounded_boot(text: str) -> int:
    """Bootstrap resamples: a count that finishes (the CI is stable long before a million)."""
    return int_between(text, 1, 1_000_000)


def register(subparsers) -> None:
    """The store's commands, in the order --help lists them."""
    for add in (_add_status, _add_results, _add_compare, _add_release, _add_drop, _add_summary):
        add(subparsers)


def _add_status(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="how many runs are pending, running, done, diverged, failed",
        description="Count the runs of the results store by status (per sweep when it holds several), and list "
        "who holds the running ones (owner = host:pid:token) with their last heartbeat.",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.set_defaults(func=cmd_status)


def _add_results(subparsers) -> None:
    from depthlab.records import STATUSES
    from depthlab.results.export import FORMATS
    p = subparsers.add_parser(
        "results", help="export the runs as a table (CSV, JSON or Parquet)", formatter_class=RAW,
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
    p.add_argument("--history", action="store_true", help="one row per run and epoch (the per-epoch metrics) "
                   "instead of one per run")
    p.set_defaults(func=cmd_results)


COMPARE_DESCRIPTION = (
    "Compare two values of one config field honestly (--contrast; topology by default: parallel\n"
    "against sequential). Runs whose configs differ only in that field form a pair; d = b - a for\n"
    "every two of its values a, b (for topology, d = parallel - sequential). Per dataset and per Q band\n"
    "(Q = examples x outputs / parameters): mean and median d, a percentile-bootstrap CI of the mean\n"
    "(over 5,000 pairs, its normal approximation: the two agree there, and resampling costs much),\n"
    "win counts, a TOST equivalence test against a margin, and a verdict: 'equivalent within ±margin',\n"
    "'<value> better' or 'inconclusive' (both equivalent and consistently better when both hold).\n"
    "Pairs with a diverged or failed run are excluded and counted. Runs of different recipes (versions\n"
    "of the training code) are not paired: a config retrained by a newer recipe counts in its newest run,\n"
    "and a pair that would still mix recipes is an error unless --allow-mixed-recipes.\n"
    "Prints the answer on one screen: per metric and pair of values one line with d, its CI, the pairs\n"
    "used and the verdict (and a ranking of the values when there are more than two); --details adds\n"
    "the full tables: the mean metrics per dataset x value x Q band and every comparison's details.\n\n"
    "default margin: 5% of the pooled mean for losses, 0.01 for accuracies.\n\n"
    "examples:\n  depthlab compare --store runs.sqlite --by head\n"
    "  depthlab compare --store runs.sqlite --contrast kernel --metric val_acc\n"
    "  depthlab compare --store runs.sqlite --table shift --contrast method --by eval_batch_size\n"
    "  depthlab compare --store runs.sqlite --table shift --contrast topology --by method,corruption")


def _add_compare(subparsers) -> None:
    from depthlab.records import METRICS
    p = subparsers.add_parser(
        "compare", help="paired statistics over one field: parallel vs sequential by default", formatter_class=RAW,
        description=COMPARE_DESCRIPTION,
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--metric", action="append", choices=METRICS,
                   help="metric to compare; repeat for several (default: val_loss, train_loss, val_acc)")
    p.add_argument("--margin", type=positive_float, metavar="M",
                   help="equivalence margin, absolute in the metric's units (default: see above)")
    p.add_argument("--contrast", metavar="FIELD", default="topology",
                   help="the config field whose values are compared (default: %(default)s)")
    p.add_argument("--by", metavar="FIELD[,FIELD]", help="also split every group by this config field (e.g. head, "
                   "norm), or by the combinations of several (e.g. method,corruption)")
    p.add_argument("--table", choices=choices.COMPARE_TABLES, default="runs",
                   help="runs: the trained runs (default); shift: the measurements of `depthlab shift`, one per run, "
                   "corruption, severity, method (with its alpha), eval_batch_size and shift_seed; their metrics "
                   "are test_acc and test_loss on the corrupted stream (the default metrics then)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--allow-mixed-recipes", action="store_true",
                   help="pair runs trained by different recipes (versions of the training code) and say so")
    p.add_argument("--alpha", type=float, default=0.05, help="test level; the CI is 1 - alpha (default: %(default)s)")
    p.add_argument("--n-boot", type=bounded_boot, default=10000, metavar="N",
                   help="bootstrap resamples of a group of up to 5,000 pairs, 1 to 1,000,000 (default: "
                   "%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--details", action="store_true", help="after the answer, the full tables: mean metrics per Q "
                   "band, each comparison's margin, exclusions and win counts per group, and the notes")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of text")
    p.set_defaults(func=cmd_compare)


def _add_release(subparsers) -> None:
    p = subparsers.add_parser(
        "release", help="put running runs back to pending: a dead owner's, or given ones",
        description="Runs stay 'running' while their owner lives; a runner that died is noticed by its stale "
        "heartbeat or its vanished process, and the next `depthlab run` takes its runs back. This does it by "
        "hand: --stale releases the runs whose owner is dead, --run ID the given ones whoever holds them (make "
        "sure that runner is stopped: a live one would lose them).")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--run", action="append", metavar="ID", help="a running run's full id (repeatable)")
    p.add_argument("--stale", action="store_true", help="every run whose owner is dead")
    p.add_argument("--force", action="store_true", help="with --run: release runs whose runner is alive too (its "
                   "result is then thrown away)")
    p.set_defaults(func=cmd_release)


def _add_drop(subparsers) -> None:
    p = subparsers.add_parser(
        "drop", help="take a sweep's pending runs out of the store (e.g. left by an edited spec)",
        description="Rerunning an edited spec under the same name adds its new runs to the sweep, and the runs "
        "only the old version listed stay pending (`depthlab run` says how many). This takes the sweep's pending "
        "runs out of it; a run no other sweep lists is deleted. Finished (and running) runs are never dropped.")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--sweep", required=True, metavar="NAME", help="the sweep whose pending runs go")
    p.set_defaults(func=cmd_drop)


def _add_summary(subparsers) -> None:
    from depthlab.records import METRICS
    p = subparsers.add_parser(
        "summary", help="outcomes grouped by config fields: runs trained, diverged, mean ± std metrics",
        formatter_class=RAW,
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
