"""The residual-expansion commands: `expand`, `paths`, `signal`, `lesion`, `convert`.

Each builds (or trains, with the small local trainer of `depthlab.analysis.trainer`) tiny models on the CPU
and prints measurements as plain-text tables, or JSON with --json. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from depthlab.errors import DepthlabError

FMT = argparse.ArgumentDefaultsHelpFormatter


# ---------------------------------------------------------------------------------------------- helpers


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def _jsonable(value):
    """Non-finite floats become null (strict JSON has no inf/NaN); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value) -> None:
    print(json.dumps(_jsonable(value), indent=2, allow_nan=False))


def _num(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    """Plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_num(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _progress(args):
    return False if args.quiet else None  # None: shown when stderr is a terminal


def _inputs(args):
    """(a batch of normalised inputs, num_classes) for the untrained-model commands."""
    import torch

    if args.dataset == "random":
        g = torch.Generator().manual_seed(args.seed)
        return torch.randn(args.batch, 1, 28, 28, generator=g), 10
    from depthlab.analysis.trainer import load_tensors

    try:
        data = load_tensors(args.dataset, train_subset=args.batch, n_test=args.batch, seed=args.seed)
    except DepthlabError as err:
        raise DepthlabError(f"{err} (or use --dataset random for Gaussian inputs)") from None
    return data["test_x"][:args.batch], data["num_classes"]


def _spec(args, inputs, num_classes, **changes):
    from depthlab.models import ModelSpec

    values = dict(width=args.width, blocks=args.blocks, kernel=args.kernel, norm=args.norm, act=args.act,
                  in_channels=inputs.shape[1], input_size=inputs.shape[-1], num_classes=num_classes)
    values.update(changes)
    return ModelSpec(**values)


def _model_options(p, *, width=8, blocks=8, norm="none", act="relu"):
    p.add_argument("--width", type=int, default=width, help="channels of the residual stream")
    p.add_argument("--blocks", type=int, default=blocks, help="residual blocks n")
    p.add_argument("--kernel", type=int, default=3, help="kernel size of both convolutions of a branch")
    p.add_argument("--norm", default=norm, choices=["none", "batch", "group"], help="normalisation in the branches")
    p.add_argument("--act", default=act, choices=["relu", "gelu", "identity"], help="activation in the branches")


def _common(p):
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------- register


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "expand", formatter_class=FMT,
        help="the residual expansion x_n = x + T1 + T2 + ... of fresh models: term norms, truncation errors",
        description="For fresh sequential models (one per residual-scale rule and depth) on a batch of inputs: "
        "the norms of the residual stream x after the stem, the output x_n, the first-order term "
        "T1 = Σ s_k F_k(x) (what the parallel network adds) and the second-order term T2 = Σ_{i<k} J_{s_k F_k}(x) "
        "s_i F_i(x) (forward-mode JVPs), and the relative errors ‖x_n − truncation‖/‖x_n‖ of x, x+T1 and "
        "x+T1+T2, on the stream and on the logits. BatchNorm runs in eval mode; float64.")
    _model_options(p)
    p.add_argument("--depths", type=_int_list, default=None,
                   help="comma-separated depths to tabulate (default: --blocks alone)")
    p.add_argument("--scales", type=_str_list, default=["1", "1/sqrt(n)", "1/n"],
                   help="comma-separated residual-scale rules: 1, 1/sqrt(n), 1/n, learnable or a number")
    p.add_argument("--dataset", default="mnist",
                   help="inputs: a depthlab dataset (mnist, cifar10, synthetic) or 'random' (Gaussian)")
    p.add_argument("--batch", type=int, default=32, help="number of inputs")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_expand)

    p = subparsers.add_parser(
        "paths", formatter_class=FMT,
        help="the unravelled view: paths by length, Binomial(n, 1/2), and the measured term of each order",
        description="A stack of n blocks unravels into 2^n paths, C(n, k) of them through k blocks. For a fresh "
        "sequential model: the number and share of paths of each length, and the measured norm of the order-k "
        "term of the residual stream with the error of the truncation after order k. Exact for affine branches "
        "(--act identity, norm none or batch); for nonlinear ones orders 0-2 are the Taylor terms and higher "
        "orders an approximation (the output says which).")
    _model_options(p, act="identity")
    p.add_argument("--scale", default="1", help="residual-scale rule: 1, 1/sqrt(n), 1/n, learnable or a number")
    p.add_argument("--max-order", type=int, default=None, help="highest order computed (default: n)")
    p.add_argument("--dataset", default="mnist", help="inputs: a depthlab dataset or 'random' (Gaussian)")
    p.add_argument("--batch", type=int, default=32, help="number of inputs")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_paths)

    p = subparsers.add_parser(
        "signal", formatter_class=FMT,
        help="growth of the residual stream and logits with depth at initialisation, per scale rule and norm",
        description="Per-example RMS of the residual stream after the last block (and its ratio to the stem "
        "output) and of the logits of freshly initialised sequential networks, against depth, for each "
        "residual-scale rule, with and without normalisation. BatchNorm uses batch statistics (as in the first "
        "training step). Inputs: a fixed batch of Gaussian images.")
    p.add_argument("--depths", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000],
                   help="comma-separated depths")
    p.add_argument("--scales", type=_str_list, default=["1", "1/sqrt(n)", "1/n", "learnable"],
                   help="comma-separated residual-scale rules")
    p.add_argument("--norms", type=_str_list, default=["none", "batch"], help="comma-separated norms")
    p.add_argument("--width", type=int, default=8, help="channels of the residual stream")
    p.add_argument("--input-size", type=int, default=8, help="height and width of the Gaussian inputs")
    p.add_argument("--batch", type=int, default=16, help="number of inputs")
    p.add_argument("--kernel", type=int, default=3, help="kernel size")
    p.add_argument("--act", default="relu", choices=["relu", "gelu", "identity"], help="activation")
    _common(p)
    p.set_defaults(func=cmd_signal)

    p = subparsers.add_parser(
        "lesion", formatter_class=FMT,
        help="delete each block of a trained residual network (and of a plain one) and measure the damage",
        description="Train a small sequential residual network (and, as the contrast, the plain network of the "
        "same shape without identity connections) on --dataset with a plain Adam loop, then delete each block in "
        "turn at test time (Veit et al.: a deleted block passes its input on unchanged) and report test accuracy "
        "and loss against the intact network.")
    _training_options(p)
    p.add_argument("--no-plain", action="store_true", help="skip the plain-network contrast")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_lesion)

    p = subparsers.add_parser(
        "convert", formatter_class=FMT,
        help="rewire a trained deep network as the shallow (parallel) one with the same weights",
        description="Train a small sequential residual network on --dataset, rewire it as the parallel network "
        "x + λΣF_i(x) with the same weights (the first-order truncation of the expansion), and report the test "
        "accuracy retained (converted / original); with BatchNorm also after re-estimating its statistics on "
        "training data, and after --finetune-epochs of training the converted network.")
    _training_options(p)
    p.add_argument("--finetune-epochs", type=float, default=0, help="epochs of fine-tuning the converted network")
    p.add_argument("--no-recalibrate", action="store_true",
                   help="do not re-estimate BatchNorm statistics after the conversion")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_convert)


def _store_options(p):
    p.add_argument("--store", default=None, help="results store holding a trained run (with --run)")
    p.add_argument("--run", default=None, help="analyse this trained run of --store (its id or a unique prefix; "
                   "needs weights kept by `depthlab run --save-weights`) instead of a fresh model")


def _training_options(p):
    p.add_argument("--dataset", default="mnist", help="a depthlab dataset: mnist, cifar10 or synthetic")
    p.add_argument("--train-subset", type=int, default=2000, help="training examples used")
    p.add_argument("--test-subset", type=int, default=2000, help="test examples evaluated")
    p.add_argument("--epochs", type=float, default=3, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    _model_options(p, width=8, blocks=8, norm="batch")
    p.add_argument("--scale", default="1", help="residual-scale rule: 1, 1/sqrt(n), 1/n, learnable or a number")
    p.add_argument("--stem-stride", type=int, default=2, choices=[1, 2],
                   help="stride of the stem (2 quarters the cost of every block)")
    p.add_argument("--head", default="flatten", choices=["gap", "flatten"],
                   help="classifier on every position (flatten) or on the global average (gap; then the small "
                   "receptive field of a few 3x3 blocks limits what the model can learn)")


# ---------------------------------------------------------------------------------------------- commands


def cmd_expand(args) -> int:
    import torch

    from depthlab.analysis.expansion import expand_table

    if args.run:
        from depthlab.analysis.expansion import SUMMARY_KEYS, expansion_terms

        data, spec, model, _ = _from_store(args)
        inputs = data["test_x"][:args.batch]
        terms = expansion_terms(model.double(), inputs.to(torch.float64))
        rows = [{"scale": str(spec.residual_scale), "blocks": spec.blocks, "lambda": spec.scale,
                 **{k: terms[k] for k in SUMMARY_KEYS}}]
    else:
        inputs, classes = _inputs(args)
        spec = _spec(args, inputs, classes)
        rows = None
    rows = rows or expand_table(spec, inputs.to(torch.float64), scales=args.scales, depths=args.depths or [args.blocks],
                        seed=args.seed, progress=_progress(args))
    if args.json:
        _print_json({"spec": spec.to_dict(), "batch": len(inputs), "rows": rows})
        return 0
    kind = f"trained run {args.run}" if args.run else "fresh sequential models"
    print(f"residual expansion of {kind} (width {spec.width}, kernel {spec.kernel}, norm "
          f"{spec.norm} in eval mode, act {spec.act}) on {len(inputs)} {args.dataset} inputs, float64")
    print("norms: per-example L2, RMS over the batch; err_k = ||x_n - (x + T1 + ... + Tk)|| / ||x_n||\n")
    headers = ["scale", "n", "lambda", "|x|", "|x_n|", "|T1|", "|T2|", "err_0", "err_1", "err_2",
               "logit_err_0", "logit_err_1", "logit_err_2"]
    print(table(headers, [[r["scale"], r["blocks"], r["lambda"], r["norm_stream"], r["norm_output"],
                           r["norm_first"], r["norm_second"], r["err_zeroth"], r["err_first"], r["err_second"],
                           r["logit_err_zeroth"], r["logit_err_first"], r["logit_err_second"]] for r in rows]))
    return 0


def cmd_paths(args) -> int:
    import torch

    from depthlab.analysis.expansion import path_contributions
    from depthlab.models import build

    if args.run:
        data, spec, model, _ = _from_store(args)
        inputs, model = data["test_x"][:args.batch], model.double()
    else:
        inputs, classes = _inputs(args)
        spec = _spec(args, inputs, classes, residual_scale=args.scale)
        model = build(spec, seed=args.seed).double()
    result = path_contributions(model, inputs.to(torch.float64), args.max_order)
    if args.json:
        _print_json({"spec": spec.to_dict(), **result})
        return 0
    print(f"paths of {'trained run ' + args.run if args.run else 'a fresh sequential model'} of {spec.blocks} blocks (lambda {spec.scale:.4g}, act {spec.act}, "
          f"norm {spec.norm}) on {len(inputs)} {args.dataset} inputs")
    print(f"{result['note']}\n")
    print(table(["order k", "paths C(n,k)", "share of paths", "|term_k|", "err through k", "logit err through k"],
                [[r["order"], r["paths"], r["path_share"], r["norm"], r["err_through_order"],
                  r["logit_err_through_order"]] for r in result["orders"]]))
    print(f"\nresidual ||x_n - sum of the orders|| / ||x_n|| = {result['residual']:.3g}")
    return 0


def cmd_signal(args) -> int:
    from depthlab.analysis.signal import signal_growth

    rows = signal_growth(depths=args.depths, scales=args.scales, norms=args.norms, width=args.width,
                         input_size=args.input_size, batch=args.batch, kernel=args.kernel, act=args.act,
                         seed=args.seed, progress=_progress(args))
    if args.json:
        _print_json({"rows": rows})
        return 0
    print(f"signal at initialisation: width {args.width}, {args.input_size}x{args.input_size} Gaussian inputs, "
          f"batch {args.batch}, act {args.act}; per-example RMS, batch mean; growth = stream / stem output\n")
    for norm in args.norms:
        part = [r for r in rows if r["norm"] == norm]
        headers = ["n"] + [f"{s} {q}" for s in args.scales for q in ("growth", "logits")]
        body = []
        for n in args.depths:
            cells = [n]
            for s in args.scales:
                r = next(r for r in part if r["scale"] == s and r["blocks"] == n)
                cells += [r["growth"], r["logit_rms"]]
            body.append(cells)
        print(f"norm {norm}:")
        print(table(headers, body) + "\n")
    return 0


def _from_store(args):
    """The trained run --run of --store, with its data normalised exactly as in training:
    (data, spec, model, summary) like `_train_model`."""
    from depthlab.data import load, normalise
    from depthlab.sweep.store import DEFAULT_STORE
    from depthlab.sweep.weights import load_trained

    store = args.store or DEFAULT_STORE
    model, config, rid = load_trained(store, args.run)
    ds = load(config.dataset, val_split=config.val_split, train_subset=config.train_subset)
    n_test = getattr(args, "test_subset", None) or getattr(args, "batch", None)
    test_x, test_y = ds.test_x[:n_test], ds.test_y[:n_test]
    data = {"train_x": normalise(ds.train_x, ds.mean, ds.std).float(), "train_y": ds.train_y.long(),
            "test_x": normalise(test_x, ds.mean, ds.std).float(), "test_y": test_y.long(),
            "num_classes": ds.num_classes}
    summary = {"run_id": rid, "diverged": False, "final_train_loss": float("nan"), "from_store": str(store)}
    args.dataset, args.epochs = config.dataset, config.epochs  # what the printed summaries describe
    print(f"trained run {rid} from {store}: {config.topology}, {config.blocks} blocks, width {config.width}, "
          f"{config.dataset}, {config.epochs} epochs", file=sys.stderr)
    return data, model.spec, model, summary


def _model_for(args):
    return _from_store(args) if args.run else _train_model(args)


def _train_model(args):
    """Load the data and train the sequential model of the arguments; (data, spec, model, train summary)."""
    from depthlab.analysis.trainer import load_tensors, train
    from depthlab.models import build

    data = load_tensors(args.dataset, train_subset=args.train_subset, n_test=args.test_subset, seed=args.seed)
    spec = _spec(args, data["train_x"], data["num_classes"], residual_scale=args.scale,
                 stem_stride=args.stem_stride, head=args.head)
    model = build(spec, seed=args.seed)
    summary = train(model, data["train_x"], data["train_y"], epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, progress=_progress(args))
    return data, spec, model, summary


def cmd_lesion(args) -> int:
    from depthlab.analysis.lesion import PlainNet, lesion_study
    from depthlab.analysis.trainer import train
    from depthlab.models import build

    data, spec, model, summary = _model_for(args)
    studies = {"residual": (lesion_study(model, data["test_x"], data["test_y"], progress=_progress(args)), summary)}
    if not args.no_plain:
        plain = PlainNet(build(spec, seed=args.seed))
        plain_summary = train(plain, data["train_x"], data["train_y"], epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=_progress(args))
        studies["plain"] = (lesion_study(plain, data["test_x"], data["test_y"], progress=_progress(args)),
                            plain_summary)
    if args.json:
        _print_json({"spec": spec.to_dict(), "dataset": args.dataset, "n_train": len(data["train_x"]),
                     "n_test": len(data["test_x"]),
                     **{k: {**study, "training": s} for k, (study, s) in studies.items()}})
        return 0
    print(f"lesions: sequential network of {spec.blocks} blocks (width {spec.width}, norm {spec.norm}, scale "
          f"{spec.residual_scale}) trained on {len(data['train_x'])} {args.dataset} examples for {args.epochs} "
          f"epochs; test accuracy on {len(data['test_x'])} examples with each block deleted\n")
    headers = ["deleted block"]
    rows = [["none (intact)"]] + [[str(i)] for i in range(spec.blocks)]
    for name, (study, s) in studies.items():
        headers += [f"{name} acc", f"{name} loss"]
        rows[0] += [study["intact"]["accuracy"], study["intact"]["loss"]]
        for i, r in enumerate(study["lesions"]):
            rows[i + 1] += [r["accuracy"], r["loss"]]
    print(table(headers, rows))
    print()
    for name, (study, s) in studies.items():
        state = "DIVERGED, " if s["diverged"] else ""
        print(f"{name}: {state}final train loss {s['final_train_loss']:.4g}; accuracy drop per deleted block: "
              f"mean {study['mean_accuracy_drop']:.4g}, max {study['max_accuracy_drop']:.4g}")
    return 0


def cmd_convert(args) -> int:
    from depthlab.analysis.convert import deep_to_shallow

    data, spec, model, summary = _model_for(args)
    _, report = deep_to_shallow(model, data["test_x"], data["test_y"], data["train_x"], data["train_y"],
                                finetune_epochs=args.finetune_epochs, recalibrate=not args.no_recalibrate,
                                progress=_progress(args), batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    report = {"spec": spec.to_dict(), "dataset": args.dataset, "n_train": len(data["train_x"]),
              "n_test": len(data["test_x"]), "training": summary, **report}
    if args.json:
        _print_json(report)
        return 0
    print(f"deep -> shallow: sequential network of {spec.blocks} blocks (width {spec.width}, norm {spec.norm}, "
          f"scale {spec.residual_scale}) trained on {report['n_train']} {args.dataset} examples for {args.epochs} "
          f"epochs (final train loss {summary['final_train_loss']:.4g}{', DIVERGED' if summary['diverged'] else ''})"
          f"; parameters {report['params_original']} -> {report['params_converted']}\n")
    rows = [["sequential (original)", report["original"]["accuracy"], report["original"]["loss"], ""],
            ["parallel (converted)", report["converted"]["accuracy"], report["converted"]["loss"], report["retained"]]]
    if "recalibrated" in report:
        rows.append(["parallel, BN statistics re-estimated", report["recalibrated"]["accuracy"],
                     report["recalibrated"]["loss"], report["retained_recalibrated"]])
    if "finetuned" in report:
        rows.append([f"parallel, fine-tuned {args.finetune_epochs:g} epochs", report["finetuned"]["accuracy"],
                     report["finetuned"]["loss"], report["retained_after_finetune"]])
    print(table(["network", "test acc", "test loss", "acc retained"], rows))
    return 0
