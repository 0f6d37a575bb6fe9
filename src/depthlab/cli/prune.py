"""`depthlab prune`: the layer densities each pruning-at-initialisation method assigns to a fresh network, in the
deep and the shallow wiring, and the block widths PreCropping makes of them."""

from __future__ import annotations

import argparse
import json

from depthlab import choices
from depthlab.cli.args import Defaults, positive_int


def _methods(text: str) -> list[str]:
    from depthlab.prune import METHODS

    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in METHODS or v == "none"]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or text!r}: choose from {', '.join(METHODS[1:])}")
    return values


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a kept fraction in (0, 1], got {text}")
    return value


def densities(args) -> list[dict]:
    """One row per (method, wiring): the density of each block (its layers together), stem, head, and the widths
    of the cropped network."""
    import torch

    from depthlab import prune
    from depthlab.data import load, normalise
    from depthlab.models import build
    from depthlab.spec.config import RunConfig

    data = None
    if any(m in ("snip", "grasp") for m in args.methods):
        ds = load("synthetic", n_train=200, n_test=1, shape=(1, 28, 28), num_classes=10, seed=args.seed)
        x, y = prune.class_batch(ds.train_x, ds.train_y, 10)
        data = (normalise(x, ds.mean, ds.std).unsqueeze(0), y)
    rows = []
    for topology in args.topologies:
        config = RunConfig(width=args.width, blocks=args.blocks, kernel=args.kernel, head=args.head,
                           topology=topology, stem_stride=2, seed=args.seed)
        net = build(config.model_spec(), seed=args.seed)
        sizes = prune.layer_sizes(net)
        for method in args.methods:
            torch.manual_seed(args.seed)
            masks = prune.compute_masks(net, method, args.density, data=data, seed=args.seed,
                                        iterations=args.iterations)
            dens = prune.layer_densities(net, masks)[0]
            crop = prune.crop_spec(net, masks)
            rows.append(dict(method=method, topology=topology, stem=dens["stem"], head=dens["head"],
                             blocks=[prune.block_density(dens, sizes, i) for i in range(args.blocks)],
                             crop_width=crop.width, crop_hidden=list(crop.block_hidden)))
    return rows


def cmd_prune(args) -> int:
    rows = densities(args)
    if args.json:
        print(json.dumps({"density": args.density, "rows": rows}, indent=2))
    else:
        from depthlab.cli.analyse import table

        print(f"pruning at initialisation to density {args.density:g}: kept fraction of each block's weights (its "
              f"layers together), the stem's and the head's; and the widths of the cropped network (PreCropping: "
              f"stream width C', hidden width per block), width {args.width}, {args.blocks} blocks, kernel "
              f"{args.kernel}, {args.head} head\n")
        headers = ["method", "wiring", "stem"] + [f"b{i}" for i in range(args.blocks)] + ["head", "crop C'",
                                                                                         "crop hidden"]
        print(table(headers, [[r["method"], r["topology"], r["stem"], *r["blocks"], r["head"], r["crop_width"],
                               ",".join(map(str, r["crop_hidden"]))] for r in rows]))
    if args.plot:
        from depthlab.report.plots import prune_profile, save

        save(prune_profile(rows, args.density), args.plot)
        print(f"wrote {args.plot}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prune", formatter_class=Defaults,
        help="layer densities each pruning-at-initialisation method assigns, deep vs shallow",
        description="For a fresh network (no training) in each wiring: the density that each pruning-at-"
        "initialisation method keeps in each block, the stem and the head, and the widths of the dense network "
        "that realises them (PreCropping). Does SynFlow taper the deep stack? Are parallel branches treated "
        "alike? --plot draws density against block position.")
    p.add_argument("--methods", type=_methods, default=["random", "magnitude", "snip", "synflow", "erk",
                                                        "precrop_params"], help="comma-separated methods")
    p.add_argument("--density", type=_density, default=0.1, help="kept fraction of the prunable weights")
    p.add_argument("--topologies", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                   default=["sequential", "parallel"], help="comma-separated wirings")
    p.add_argument("--width", type=positive_int, default=16, help="channels of the residual stream")
    p.add_argument("--blocks", type=positive_int, default=8, help="residual blocks")
    p.add_argument("--kernel", type=positive_int, default=3, help="kernel size")
    p.add_argument("--head", default="flatten", choices=choices.HEADS, help="classifier head")
    p.add_argument("--iterations", type=positive_int, default=100, help="SynFlow's pruning iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (and of random masks)")
    p.add_argument("--plot", metavar="FILE", help="also write the density profile as a "
                   f"{' or '.join('.' + f for f in choices.IMAGE_FORMATS)} figure")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_prune)
