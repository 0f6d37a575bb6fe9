"""Large kernels instead of depth: `erf` (how far a network sees, in theory and in effect) and `reparam` (a
trained run merged for inference: re-param blocks and BatchNorms folded into single convolutions)."""

from __future__ import annotations

import argparse
import json

from depthlab import choices
from depthlab.cli.args import Defaults, positive_int
from depthlab.errors import DepthlabError
from depthlab.outputs import check_out, replaced
from depthlab.results.store import DEFAULT_STORE  # a light import: sqlite3 and depthlab.records


def _csv(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def _table(headers, rows) -> str:
    from depthlab.cli.analyse import table

    return table(headers, rows)


def cmd_erf(args) -> int:
    import itertools

    import torch

    from depthlab.measure import effective_receptive_field
    from depthlab.models import ModelSpec, build, receptive_field
    from depthlab.models.branches import takes_reparam

    fractions = (0.5, 0.9)
    rows = []
    if args.run:
        from depthlab.cli.analyse import _stored_run

        model, config, rid, data, _ = _stored_run(args.store, args.run)
        x, mean, std = data.train_x[:args.batch], data.mean, data.std
        erf = effective_receptive_field(model, x, mean, std, fractions=fractions)[0].tolist()
        spec = model.spec
        rows.append(dict(run=rid, branch=spec.branch, kernel=spec.kernel, reparam=spec.reparam,
                         topology=spec.topology, blocks=spec.blocks, receptive_field=receptive_field(spec),
                         erf50=erf[0], erf90=erf[1]))
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randint(0, 256, (args.batch, 1, args.input_size, args.input_size), generator=g, dtype=torch.uint8)
        for branch, kernel, blocks, topology in itertools.product(args.branch, args.kernels, args.blocks,
                                                                  args.topologies):
            spec = ModelSpec(width=args.width, blocks=blocks, kernel=kernel, branch=branch, topology=topology,
                             reparam=args.reparam if takes_reparam(branch) else "none", norm=args.norm,
                             input_size=args.input_size, stem_stride=1)
            erf = effective_receptive_field(build(spec, seed=args.seed), x, (0.5,), (0.25,),
                                            fractions=fractions)[0].tolist()
            rows.append(dict(branch=branch, kernel=kernel, reparam=spec.reparam, topology=topology, blocks=blocks,
                             receptive_field=receptive_field(spec), erf50=erf[0], erf90=erf[1]))
    if args.json:
        print(json.dumps({"fractions": list(fractions), "rows": rows}, indent=2))
        return 0
    what = f"trained run {rows[0]['run']}" if args.run else \
        f"fresh models, width {args.width}, {args.input_size}x{args.input_size} random images"
    print(f"receptive fields of {what}, {args.batch} images: theoretical (the stem and the stages in sequence) and "
          "effective (RepLKNet: |d centre of the residual stream / d input| summed over images; the side of the "
          "centred square holding 50% and 90% of it), in input pixels\n")
    print(_table(["branch", "kernel", "reparam", "topology", "blocks", "theoretical", "ERF 50%", "ERF 90%"],
                 [[r["branch"], r["kernel"], r["reparam"], r["topology"], r["blocks"], r["receptive_field"],
                   r["erf50"], r["erf90"]] for r in rows]))
    return 0


def cmd_reparam(args) -> int:
    import torch

    from depthlab.cli.analyse import _stored_run
    from depthlab.measure import scores
    from depthlab.models import flops, fuse_for_inference, param_count

    check_out(args.out, args.store)  # never over the store or a run's weights (its weights folder)
    model, config, rid, data, _ = _stored_run(args.store, args.run)
    merged = fuse_for_inference(model)
    test = (data.test_x[:args.check], data.test_y[:args.check], data.mean, data.std)
    from depthlab.data import normalise

    x = normalise(data.test_x[:args.check], data.mean, data.std)
    with torch.no_grad():
        before, after = model.eval()(x), merged(x)
    error = float((after - before).norm() / before.norm().clamp_min(1e-30))
    spec = model.spec
    report = {"run": rid, "out": args.out, "params": param_count(model), "params_merged": param_count(merged),
              "flops": flops(spec), "flops_merged": flops(spec, merged=True), "max_relative_error": error,
              "test_acc": scores(model, *test)["accuracy"], "test_acc_merged": scores(merged, *test)["accuracy"]}
    try:
        with replaced(args.out) as temp:  # a killed or failing write leaves the earlier file
            torch.save({"config": config.to_dict(), "merged": True, "state_dict": merged.state_dict(),
                        "load": "depthlab.models.fuse_for_inference(depthlab.models.build(spec)).load_state_dict(sd)"},
                       temp)
    except OSError as err:
        raise DepthlabError(f"cannot write {args.out}: {err.strerror or err}") from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"run {rid} ({spec.branch}, kernel {spec.kernel}, reparam {spec.reparam}, {spec.topology}) merged for "
          f"inference: every BatchNorm folded, every re-param kernel summed into one K×K depthwise conv\n")
    print(_table(["", "training-time", "merged"],
                 [["parameters", report["params"], report["params_merged"]],
                  ["FLOPs per image", report["flops"], report["flops_merged"]],
                  [f"test acc ({len(test[0])} images)", report["test_acc"], report["test_acc_merged"]]]))
    print(f"\nrelative difference of the logits: {error:.2e}; wrote {args.out}")
    return 0


def register(subparsers) -> None:
    fmt = Defaults
    p = subparsers.add_parser(
        "erf", formatter_class=fmt,
        help="theoretical and effective receptive fields of fresh models or a stored run",
        description="How far the residual stream's centre sees: the theoretical receptive field (stem plus the "
        "stages in sequence: the parallel network sees stem + ONE branch) and the effective one as in RepLKNet "
        "(the gradient of the stream's central position with respect to the input, |grad| summed over images, as "
        "the side of the centred square holding 50% and 90% of it). Fresh models for every combination of the "
        "lists below, or --store S --run ID for a trained run.")
    p.add_argument("--branch", type=_csv(str), default=list(choices.BRANCH_TYPES),
                   help=f"branch types ({', '.join(choices.BRANCH_TYPES)})")
    p.add_argument("--kernels", type=_csv(int), default=[3, 13], help="kernel sizes")
    p.add_argument("--blocks", type=_csv(int), default=[1, 4, 8], help="numbers of blocks")
    p.add_argument("--topologies", type=_csv(str), default=["sequential", "parallel"], help="wirings")
    p.add_argument("--reparam", default="none", help=f"lk's re-param: {', '.join(choices.REPARAMS)}")
    p.add_argument("--width", type=positive_int, default=8, help="channels of the residual stream")
    p.add_argument("--norm", default="batch", choices=choices.NORMS, help="normalisation")
    p.add_argument("--input-size", type=positive_int, default=48, help="side of the random input images")
    p.add_argument("--batch", type=positive_int, default=16, help="images whose gradients are summed")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the images")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store holding --run")
    p.add_argument("--run", default=None, help="a trained run of --store (weights kept by --save-weights)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_erf)

    p = subparsers.add_parser(
        "reparam", formatter_class=fmt,
        help="merge a trained run for inference (re-param kernels and BatchNorms folded) and save it",
        description="Load --run of --store, fold every BatchNorm into the convolution before it and merge each "
        "Dilated Reparam Block into one K×K depthwise conv, check that the merged model computes the same logits "
        "on test images, report parameters and FLOPs before and after, and save the merged weights (load them "
        "with fuse_for_inference(build(spec)).load_state_dict).")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store holding --run")
    p.add_argument("--run", required=True, help="the trained run (id or unique prefix; weights kept by "
                   "--save-weights)")
    p.add_argument("--out", default="merged.pt", help="where to write the merged model")
    p.add_argument("--check", type=positive_int, default=256, help="test images on which the two forms are compared")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_reparam)
