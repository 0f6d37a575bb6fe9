"""`depthlab study`: deep and narrow or shallow and wide, at my budget? The five levers side by side, trained into a
store, and a recommendation generated from their paired verdicts (depthlab.study)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from depthlab import choices
from depthlab.cli.args import Defaults, add_layout, add_precision
from depthlab.data import registry
from depthlab.errors import SpecError
from depthlab.results.store import DEFAULT_STORE
from depthlab.study.design import LEVERS, default_name, parse_budgets, read_spec_file
from depthlab.study import levels
from depthlab.study.levels import DEFAULT_LEVEL, LAYOUT, LEVELS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="deep or wide at my budget? all five levers side by side, and a recommendation",
        description="At each parameter budget, train the depth-width frontier and the designs each lever "
        "compares (depth, wiring, scaling, kernel, crop; shift measures the frontier under corruption), give "
        "undecided contrasts more seeds, measure every design's cost here, and recommend the cheapest design "
        "not worse than the best. Resumable: run the same command again after a stop. "
        "Levels: " + "; ".join(f"{name}: {lv.seeds}-{lv.max_seeds} seeds, {lv.epochs} epochs, "
                               f"{'all' if lv.train_subset is None else f'{lv.train_subset:,}'} training examples, "
                               f"depths {','.join(map(str, lv.depths))}" for name, lv in LEVELS.items()),
        formatter_class=Defaults)
    p.add_argument("spec", nargs="?", default=None,
                   help="a study spec (YAML, as --write-spec writes it); the options below override its fields")
    p.add_argument("--dataset", default=None, help=f"{', '.join(registry.available())} (default: mnist)")
    p.add_argument("--budget", default=None, type=_budgets, metavar="20k,80k",
                   help="parameter budgets (inference parameters); default: the level's")
    p.add_argument("--level", default=None, choices=list(levels.LEVELS), help=f"default: {DEFAULT_LEVEL}")
    p.add_argument("--levers", default=None, type=_levers, metavar=",".join(LEVERS),
                   help="the levers to study (default: all)")
    p.add_argument("--name", default=None, help="the study's name in the store (default: dataset-level-budgets)")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite results file (created if missing)")
    p.add_argument("--device", default="auto", choices=choices.DEVICES, help="where to train")
    p.add_argument("--backend", default="local", choices=choices.BACKENDS, help="local, or ray: packs as Ray tasks")
    p.add_argument("--ray-address", default=None, help="address of a running Ray cluster (backend ray)")
    add_precision(p, help="what the runs train in (auto: bf16 where the device computes it natively)")
    add_layout(p, default=None, why=f". Default: the layout the study was run in, else {LAYOUT}, for speed")
    p.add_argument("--data-root", default=None, help="dataset directory (default: $DEPTHLAB_DATA or "
                   "~/.cache/depthlab)")
    p.add_argument("--write-spec", default=None, metavar="FILE",
                   help="write the study's design as an editable YAML spec and stop (`depthlab study FILE` runs it)")
    p.add_argument("--report", default=None, metavar="FILE.html", help="also write the HTML report there")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    p.add_argument("--no-train", action="store_true", help="answer from what the store holds; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)


def _budgets(text: str):
    try:
        return parse_budgets(text)
    except SpecError as err:
        raise argparse.ArgumentTypeError(f"{err.value!r}: {err.allowed}") from None


def _levers(text: str) -> tuple:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in LEVERS:
            raise argparse.ArgumentTypeError(f"unknown lever {name!r}; the levers: {', '.join(LEVERS)}")
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one lever: {', '.join(LEVERS)}")
    return names


def study_spec(args):
    """The study the command line asks for: the spec file's, with the options given on top."""
    from depthlab.study.design import StudySpec

    values = read_spec_file(args.spec) if args.spec else {}
    for key, given in (("dataset", args.dataset), ("level", args.level), ("budgets", args.budget),
                       ("levers", args.levers), ("name", args.name)):
        if given is not None:
            values[key] = list(given) if isinstance(given, tuple) else given
    if args.level is not None and args.spec:  # a new level brings its own seeds, epochs, data and depths
        for key in ("seeds", "max_seeds", "seed_step", "epochs", "train_subset", "depths", "kernels", "shift_examples",
                    "shift_corruptions"):
            values.pop(key, None)
    if "name" not in values:
        values["name"] = default_name(values)
    return StudySpec.from_dict(values, origin=args.spec or "study")


def write_spec(spec, path: str, store=None) -> None:
    from depthlab.outputs import check_out, replaced
    from depthlab.study.design import designs

    import yaml

    check_out(path, store, what="--write-spec")
    header = [f"# depthlab study spec: `depthlab study {path}` runs it; edit any field. Its designs:"]
    header += [f"#   {d.budget:>9,}  {d.name:<14} {d.label} ({', '.join(d.levers)})" for d in designs(spec)]
    text = "\n".join(header) + "\n" + yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)
    with replaced(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def cmd_study(args) -> int:
    from depthlab.study.runner import run_study
    from depthlab.study.text import format_study

    spec = study_spec(args)
    if args.write_spec:
        write_spec(spec, args.write_spec, args.store)
        print(f"wrote {args.write_spec}: study {spec.name}; run it with `depthlab study {args.write_spec}`")
        return 0
    if args.report:
        from depthlab.outputs import check_out

        check_out(args.report, args.store, what="--report")  # before hours of training, not after
    result = run_study(spec, args.store, device=args.device, backend=args.backend, ray_address=args.ray_address,
                       precision=args.precision, data_root=args.data_root, progress=not args.quiet,
                       train=not args.no_train, layout=args.layout)
    if args.report:
        from depthlab.study.html import write_study_html

        write_study_html(result, args.report)
        print(f"wrote {args.report}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_study(result, width=shutil.get_terminal_size((100, 40)).columns if sys.stdout.isatty()
                           else 100))
    failed = sum(d["states"].get("failed", 0) for b in result["budgets"] for d in b["designs"])
    return 1 if failed else 0
