"""Commands that draw the results: `report` (one self-contained HTML page) and `plot` (one figure, PNG, SVG or
PDF)."""

from __future__ import annotations

import argparse

from depthlab import choices
from depthlab.cli.args import described, positive_float, positive_int
from depthlab.choices import PLOT_KINDS  # noqa: F401  (tests/report reads the kinds from here)
from depthlab.outputs import check_out

STORE_HELP = "results store (SQLite file; default: %(default)s)"
BY_HELP = ("split by this config field, one that varies across the runs (e.g. blocks, dataset), as in "
           "`depthlab compare --by`: a panel per value in the comparison figures")


def cmd_report(args) -> int:
    from depthlab.report.html import write_report

    check_out(args.out, args.store)  # before the store is read: never over the store, its WAL or its weights
    out = write_report(args.store, args.out, sweep=args.sweep, runs=args.runs, title=args.title,
                       margin=args.margin, contrast=args.contrast, allow_mixed_recipes=args.allow_mixed_recipes,
                       by=args.by)
    print(f"wrote {out}")
    return 0


def cmd_plot(args) -> int:
    from depthlab.report.html import load_records
    from depthlab.report.plots import figure, image_format, note, save

    out = check_out(args.out or f"{args.kind}.png", args.store)
    image_format(out)  # a bad file name fails before the store is read
    records = load_records(args.store, args.sweep)
    # NoData, a bad --by and --metric or --by on a figure without them are DepthlabErrors: printed as one line
    fig = figure(args.kind, records, args.runs, metric=args.metric, by=args.by)
    save(fig, out)
    print(f"wrote {out}" + (f" ({note(fig)})" if note(fig) else ""))  # what was binned or sampled to stay readable
    return 0


def register(subparsers) -> None:
    from depthlab.records import METRICS
    from depthlab.results.store import DEFAULT_STORE

    fmt = argparse.RawDescriptionHelpFormatter
    images = " or ".join("." + f for f in choices.IMAGE_FORMATS)
    p = subparsers.add_parser(
        "report", help="write the sweep report: one self-contained HTML file", formatter_class=fmt,
        description="Write one HTML file (no network needed to open it: CSS and figures inline) with the sweep's\n"
        "summary, the headline verdicts, the Q-band table and the paired comparison of `depthlab compare`,\n"
        "scatters of the deepest wiring's final losses against each shallower wiring's per pair, loss against\n"
        "Q, learning curves, the win rate over blocks x width, and a sortable table of every run. Every wiring\n"
        "of the sweep (sequential, the groups:g family, parallel) is drawn; --by FIELD splits the verdicts, the\n"
        "tables and the comparison figures by the values of a config field.\n\n"
        "examples:\n  depthlab report --store runs.sqlite --out report.html\n"
        "  depthlab report --store runs.sqlite --by blocks --out by-depth.html",
    )
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--out", default="report.html", metavar="FILE", help="output file (default: %(default)s)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--runs", type=positive_int, default=8, metavar="N",
                   help="at most N runs in the learning curves: the pairs that differ most (default: %(default)s)")
    p.add_argument("--title", help="page title (default: 'depthlab report: ' + sweep or store name)")
    p.add_argument("--margin", type=positive_float, metavar="M",
                   help="equivalence margin of the paired comparison, as in `depthlab compare --margin`")
    p.add_argument("--contrast", metavar="FIELD", default="topology",
                   help="the config field the paired comparison contrasts, as in `depthlab compare --contrast` "
                   "(default: %(default)s; the figures always pair the wirings)")
    p.add_argument("--allow-mixed-recipes", action="store_true",
                   help="pair runs trained by different recipes, as in `depthlab compare`")
    p.add_argument("--by", metavar="FIELD", help=BY_HELP)
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "plot", help="write one figure of the report as PNG, SVG or PDF", formatter_class=fmt,
        description=f"Write one figure, for a paper or slides:\n{described(choices.PLOT_KINDS)}\n"
        f"The format follows the --out extension ({images}); SVG and PDF keep their text as text.\n"
        f"The comparison figures ({', '.join(choices.PLOT_METRICS)}) draw any final metric\n"
        "(--metric) and split into a panel per value of a config field (--by).\n\n"
        "examples:\n  depthlab plot scatter-val --store runs.sqlite --out pairs.pdf\n"
        "  depthlab plot winrate --store runs.sqlite --metric val_acc --by dataset --out winrate.svg",
    )
    p.add_argument("kind", choices=choices.PLOT_KINDS, metavar="KIND",
                   help="one of: " + ", ".join(choices.PLOT_KINDS))
    p.add_argument("--store", default=DEFAULT_STORE, metavar="FILE", help=STORE_HELP)
    p.add_argument("--out", metavar="FILE", help=f"output {images} (default: KIND.png)")
    p.add_argument("--sweep", metavar="NAME", help="only runs of this sweep")
    p.add_argument("--runs", type=positive_int, default=8, metavar="N",
                   help="for curves: at most N runs per panel (default: %(default)s)")
    p.add_argument("--metric", choices=METRICS,
                   help="the final metric a comparison figure draws (default: the kind's: val_loss; train_loss "
                   "for scatter-train)")
    p.add_argument("--by", metavar="FIELD", help=BY_HELP)
    p.set_defaults(func=cmd_plot)
