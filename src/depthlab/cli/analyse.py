"""The residual-expansion commands: `expand`, `paths`, `signal`, `lesion`, `convert`.

`expand`, `paths` and `signal` measure freshly built models (or, for the first two, a stored trained run).
`lesion` and `convert` measure trained runs: a run of a store (`--store S --run ID`), or runs they train
first through the sweep engine from the command's flags, recorded in the store like any other run (and found
there, already trained, the next time). Results print as plain-text tables, or JSON with --json; progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from depthlab import choices
from depthlab.cli.args import Defaults, add_precision, non_negative_int, positive_float, positive_int
from depthlab.data import registry
from depthlab.errors import DepthlabError
from depthlab.results.store import DEFAULT_STORE  # a light import: sqlite3 and depthlab.records

FMT = Defaults


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
    from depthlab.data import load, normalise

    options = {"n_test": args.batch, "seed": args.seed} if args.dataset == "synthetic" else {}
    try:
        ds = load(args.dataset, **options)
    except DepthlabError as err:
        raise DepthlabError(f"{err} (or use --dataset random for Gaussian inputs)") from None
    return normalise(ds.test_x[:args.batch], ds.mean, ds.std), ds.num_classes


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
    p.add_argument("--norm", default=norm, choices=choices.NORMS, help="normalisation in the branches")
    p.add_argument("--act", default=act, choices=choices.ACTS, help="activation in the branches")


def _common(p):
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------- register


def register(subparsers) -> None:
    """The expansion commands, in the order --help lists them."""
    for add in (_add_expand, _add_paths, _add_signal, _add_lesion, _add_convert):
        add(subparsers)


def _add_expand(subparsers) -> None:
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
                   help=f"comma-separated residual-scale rules: {', '.join(choices.SCALE_RULES)} or a number")
    p.add_argument("--dataset", default="mnist",
                   help=f"inputs: a depthlab dataset ({', '.join(registry.available())}) or 'random' (Gaussian)")
    p.add_argument("--batch", type=int, default=32, help="number of inputs")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_expand)


def _add_paths(subparsers) -> None:
    p = subparsers.add_parser(
        "paths", formatter_class=FMT,
        help="the unravelled view: paths by length, Binomial(n, 1/2), and the measured term of each order",
        description="A stack of n blocks unravels into 2^n paths, C(n, k) of them through k blocks. For a fresh "
        "sequential model: the number and share of paths of each length, and the measured norm of the order-k "
        "term of the residual stream with the error of the truncation after order k. Exact for affine branches "
        "(--act identity, norm none or batch); for nonlinear ones orders 0-2 are the Taylor terms and higher "
        "orders an approximation (the output says which).")
    _model_options(p, act="identity")
    p.add_argument("--scale", default="1",
                   help=f"residual-scale rule: {', '.join(choices.SCALE_RULES)} or a number")
    p.add_argument("--max-order", type=int, default=None, help="highest order computed (default: n)")
    p.add_argument("--dataset", default="mnist", help="inputs: a depthlab dataset or 'random' (Gaussian)")
    p.add_argument("--batch", type=int, default=32, help="number of inputs")
    _store_options(p)
    _common(p)
    p.set_defaults(func=cmd_paths)


def _add_signal(subparsers) -> None:
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
    p.add_argument("--act", default="relu", choices=choices.ACTS, help="activation")
    _common(p)
    p.set_defaults(func=cmd_signal)


def _add_lesion(subparsers) -> None:
    p = subparsers.add_parser(
        "lesion", formatter_class=FMT,
        help="delete each block of a trained residual network (and of a plain one) and measure the damage",
        description="Delete each block of a trained residual network in turn at test time (Veit et "
        "al.: a deleted block passes its input on unchanged) and report test accuracy and loss against the "
        "intact network; as the contrast, the same for the plain network (skip=false: no identity connections) "
        "of the same config, trained by the same engine and recipe. The residual network is --run of --store "
        "(in its own wiring), or a sequential one trained first from the flags below; either way the runs are "
        "recorded in --store.")
    _training_options(p)
    p.add_argument("--no-plain", action="store_true", help="skip the plain-network contrast")
    _store_options(p)
    add_precision(p, help=PRECISION_HELP)
    _common(p)
    p.set_defaults(func=cmd_lesion)


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", formatter_class=FMT,
        help="rewire a trained deep network as the shallow (parallel) one with the same weights",
        description="Rewire a trained sequential residual network as the parallel network x + λΣF_i(x) with the "
        "same weights (the first-order truncation of the expansion) and report the test accuracy retained "
        "(converted / original); with BatchNorm also after re-estimating its statistics on training data, and "
        "with --finetune-epochs after the engine trains the converted network from those weights (a run of its "
        "own, recorded in --store). The deep network is --run of --store, or is trained first from the flags.")
    _training_options(p)
    p.add_argument("--finetune-epochs", type=non_negative_int, default=0,
                   help="epochs of fine-tuning the converted network (0: none)")
    p.add_argument("--finetune-lr", type=positive_float, default=None,
                   help="learning rate of the fine-tuning (default: the deep run's)")
    p.add_argument("--no-recalibrate", action="store_true",
                   help="do not re-estimate BatchNorm statistics after the conversion")
    _store_options(p)
    add_precision(p, help=PRECISION_HELP)
    _common(p)
    p.set_defaults(func=cmd_convert)


def _store_options(p):
    p.add_argument("--store", default=DEFAULT_STORE, help="results store: where --run is read, and where runs "
                   "trained from the flags are recorded (weights beside it, STORE.weights/)")
    p.add_argument("--run", default=None, help="analyse this trained run of --store (its id or a unique prefix; "
                   "needs weights kept by `depthlab run --save-weights`) instead of a fresh model")


PRECISION_HELP = ("what the runs train in and the networks are evaluated in: auto is bf16 where the device computes "
                  "it natively (CUDA, CPUs with AVX-512 BF16/AMX/Arm BF16), else fp32")

# The run a lesion or conversion trains from its flags (each flag's default; None = not given on the command line,
# which matters with --run: the stored run's config decides, and a training flag given with it is an error).
TRAINING_DEFAULTS = dict(dataset="mnist", train_subset=2000, val_split=0, test_subset=2000, epochs=3,
                         batch_size=64, lr=3e-3, schedule="cosine", width=8, blocks=8, kernel=3, norm="batch",
                         act="relu", residual_scale="1", stem_stride=2, head="flatten")


def _training_options(p):
    d = TRAINING_DEFAULTS
    p.add_argument("--dataset", default=None, help=f"a depthlab dataset: {', '.join(registry.available())} "
                   f"(default: {d['dataset']})")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help=f"training examples (default: {d['train_subset']})")
    p.add_argument("--val-split", type=non_negative_int, default=None,
                   help=f"validation examples carved from the training set (default: {d['val_split']})")
    p.add_argument("--test-subset", type=positive_int, default=None,
                   help=f"test examples evaluated (default: {d['test_subset']})")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"training epochs (default: {d['epochs']})")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"training batch size (default: {d['batch_size']})")
    p.add_argument("--lr", type=positive_float, default=None, help=f"AdamW learning rate (default: {d['lr']})")
    p.add_argument("--schedule", default=None, choices=choices.SCHEDULES,
                   help=f"learning-rate schedule (default: {d['schedule']})")
    p.add_argument("--width", type=positive_int, default=None, help=f"channels of the residual stream "
                   f"(default: {d['width']})")
    p.add_argument("--blocks", type=positive_int, default=None, help=f"residual blocks n (default: {d['blocks']})")
    p.add_argument("--kernel", type=positive_int, default=None, help=f"kernel size (default: {d['kernel']})")
    p.add_argument("--norm", default=None, choices=choices.NORMS,
                   help=f"normalisation in the branches (default: {d['norm']})")
    p.add_argument("--act", default=None, choices=choices.ACTS,
                   help=f"activation in the branches (default: {d['act']})")
    # the help names the fixed rules: the plain network that a lesion contrasts refuses a learnable scale
    fixed = [rule for rule in choices.SCALE_RULES if rule != "learnable"]
    p.add_argument("--scale", dest="residual_scale", default=None,
                   help=f"residual-scale rule: {', '.join(fixed)} or a number (default: {d['residual_scale']})")
    p.add_argument("--stem-stride", type=int, default=None, choices=choices.STEM_STRIDES,
                   help="stride of the stem (2 quarters the cost of every block; default: 2)")
    p.add_argument("--head", default=None, choices=choices.HEADS,
                   help="classifier on every position (flatten, the default) or on the global average (gap; then "
                   "the small receptive field of a few 3x3 blocks limits what the model can learn)")


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
    """The trained run --run of --store with its test inputs normalised as in training:
    (data, spec, model, summary)."""
    from depthlab.data import normalise

    model, config, rid, ds, record = _stored_run(args.store, args.run)
    n_test = getattr(args, "batch", None)
    data = {"test_x": normalise(ds.test_x[:n_test], ds.mean, ds.std), "test_y": ds.test_y[:n_test],
            "num_classes": ds.num_classes}
    args.dataset = config.dataset  # what the printed summary describes (expand and paths have no other use)
    return data, model.spec, model, {"run_id": rid, "from_store": str(args.store)}


def _stored_run(store_path, run: str, data_root=None):
    """(model, config, full run id, the run's dataset as the engine saw it, its record) of a trained run."""
    from depthlab.run.runner import DataCache
    from depthlab.results.store import Store
    from depthlab.results.weights import load_trained, resolve

    rid = resolve(store_path, run).stem
    with Store.existing(store_path, readonly=True) as store:
        record = next(iter(store.records(run_ids=[rid])), None)
    if record is None:
        raise DepthlabError(f"run {rid}: weights exist next to {store_path} but the store has no such run")
    from depthlab.spec.config import RunConfig

    config = RunConfig.from_dict(record.config)
    ds = DataCache(_cpu(), data_root).get(config)
    model, _, _ = load_trained(store_path, rid, ds)
    print(f"run {rid} from {store_path}: {config.topology}, {config.blocks} blocks, width {config.width}, "
          f"skip {str(config.skip).lower()}, {config.dataset}, {config.epochs} epochs, recipe {record.recipe}",
          file=sys.stderr)
    return model, config, rid, ds, record


def _cpu():
    import torch

    return torch.device("cpu")


def _flag_config(args, **changes):
    """The RunConfig of the training flags (defaults where not given)."""
    from depthlab.spec.config import RunConfig

    values = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in TRAINING_DEFAULTS.items()}
    values.update(seed=args.seed, topology="sequential", **changes)
    return RunConfig(**values)


def _base_config(args):
    """The config of the network to analyse: --run's (no training flag may be given with it), or the flags'."""
    if not args.run:
        return _flag_config(args), None
    given = [k for k in TRAINING_DEFAULTS if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + ("scale" if k == "residual_scale" else k.replace("_", "-")) for k in given)
        raise DepthlabError(f"--run analyses a stored run, whose config decides how it was trained; drop {flags} "
                            "(or drop --run to train a new run from the flags)")
    return None, args.run


def _train(args, configs, sweep: str) -> dict:
    """Train `configs` through the engine into --store (weights kept), unless done already; their records."""
    from depthlab.records import run_id
    from depthlab.train import engine
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec

    spec = SweepSpec.from_dict({"name": sweep, "runs": [c.to_dict() for c in configs]})
    run_sweep(spec, args.store, device="auto", save_weights=True, progress=not args.quiet, precision=args.precision)
    from depthlab.results.store import Store

    ids = {run_id(c.to_dict(), engine.RECIPE): c for c in configs}
    with Store(args.store) as store:
        return {r.run_id: r for r in store.records(run_ids=ids)}


def _trained_model(args, record, data):
    from depthlab.results.weights import load_trained

    return load_trained(args.store, record.run_id, data)[0]


def _run_summary(record) -> dict:
    return {"run_id": record.run_id, "status": record.status, "recipe": record.recipe,
            "train_loss": record.train_loss, "test_acc": record.test_acc, "error": record.error}


def _networks(args, contrasts: dict, sweep: str):
    """The base run (from --run or trained from the flags) and its contrasts (name → changed fields), trained
    through the engine: {name: (record, model or None)}, and the dataset the runs saw."""
    from depthlab.records import run_id
    from depthlab.train import engine
    from depthlab.run.runner import DataCache

    config, run = _base_config(args)
    if run is not None:
        model, config, rid, data, record = _stored_run(args.store, run)
        out = {"base": (record, model)}
        # a contrast that changes nothing (the plain contrast of a plain run) is the run itself
        wanted = {name: config.replace(**changes) for name, changes in contrasts.items()
                  if config.replace(**changes) != config}
    else:
        wanted = {"base": config, **{name: config.replace(**ch) for name, ch in contrasts.items()}}
        out, data = {}, DataCache(_cpu()).get(config)
    records = _train(args, list(wanted.values()), sweep) if wanted else {}
    for name, cfg in wanted.items():
        record = records[run_id(cfg.to_dict(), engine.RECIPE)]
        out[name] = (record, _trained_model(args, record, data) if record.status == "done" else None)
    return out, data


def cmd_lesion(args) -> int:
    from depthlab.precision import resolve

    nets, data = _lesion_networks(args)
    studies = _lesion_studies(args, nets, data)
    spec = nets["base"][1].spec if nets["base"][1] is not None else None
    base = nets["base"][0]
    if args.json:
        _print_json({"spec": spec.to_dict() if spec else None, "dataset": base.config["dataset"],
                     "n_train": int(data.n_train), "n_test": len(data.test_x), "store": str(args.store),
                     "precision": resolve(args.precision, "cpu"),
                     **{k: {**(study or {}), "run": _run_summary(r)} for k, (study, r) in studies.items()}})
        return 0
    _print_lesions(args, studies, base, data)
    return 0


def _lesion_networks(args):
    """The residual network and, unless --no-plain, its plain contrast: {name: (record, model)}, and the data."""
    contrasts = {} if args.no_plain else {"plain": {"skip": False}}
    try:
        return _networks(args, contrasts, "lesion")
    except DepthlabError as err:
        if "skip" in str(err) and not args.no_plain:
            raise DepthlabError(f"{err}; the plain contrast cannot be trained for this run: pass --no-plain") \
                from None
        raise


def _lesion_studies(args, nets, data) -> dict:
    """{"residual" | "plain": (its lesion study, or None for a network that did not train; its record)}."""
    from depthlab.analysis.lesion import lesion_study

    test = (data.test_x, data.test_y, data.mean, data.std)
    studies = {}
    for name, (record, model) in nets.items():
        label = _kind(record.config) if name == "base" else name
        study = lesion_study(model, *test, progress=_progress(args), precision=args.precision) \
            if model is not None else None
        studies[label] = (study, record)
    return studies


def _print_lesions(args, studies: dict, base, data) -> None:
    """The lesion studies as text: what was trained, a row per deleted block, and each network's summary."""
    from depthlab.precision import resolve

    cfg = base.config
    print(f"lesions: {cfg['topology']} {_kind(cfg)} network of {cfg['blocks']} blocks (width {cfg['width']}, norm "
          f"{cfg['norm']}, scale {cfg['residual_scale']}) trained by the engine on {data.n_train} {cfg['dataset']} "
          f"examples for {cfg['epochs']} epochs (recipe {base.recipe}); test accuracy on {len(data.test_x)} examples "
          f"with each block deleted (evaluated in {resolve(args.precision, 'cpu')})\n")
    headers = ["deleted block"]
    rows = [["none (intact)"]] + [[str(i)] for i in range(cfg["blocks"])]
    for name, (study, _) in studies.items():
        if study is None:
            continue
        headers += [f"{name} acc", f"{name} loss"]
        rows[0] += [study["intact"]["accuracy"], study["intact"]["loss"]]
        for i, r in enumerate(study["lesions"]):
            rows[i + 1] += [r["accuracy"], r["loss"]]
    print(table(headers, rows))
    print()
    for name, (study, record) in studies.items():
        where = f"run {record.run_id}"
        if study is None:
            print(f"{name} ({where}): {record.status.upper()}, nothing to lesion"
                  + (f" ({record.error})" if record.error else ""))
            continue
        print(f"{name} ({where}): final train loss {_num(record.train_loss)}; accuracy drop per deleted block: "
              f"mean {study['mean_accuracy_drop']:.4g}, max {study['max_accuracy_drop']:.4g}")


def _kind(config) -> str:
    """What a run's network is: residual, or plain (skip false: no identity connections)."""
    return "residual" if config.get("skip", True) else "plain"


def cmd_convert(args) -> int:
    from depthlab.analysis.convert import deep_to_shallow, finetune_config
    from depthlab.measure import scores
    from depthlab.precision import resolve

    nets, data = _networks(args, {}, "convert")
    record, model = nets["base"]
    if model is None:
        raise DepthlabError(f"run {record.run_id} is {record.status}: nothing to convert")
    _, report = deep_to_shallow(model, data, recalibrate=not args.no_recalibrate, precision=args.precision)
    if args.finetune_epochs:
        tune = finetune_config(_config_of(record), model.spec, record.run_id, args.finetune_epochs,
                               args.finetune_lr)
        tuned = next(iter(_train(args, [tune], "convert").values()))
        report["finetune"] = _run_summary(tuned)
        if tuned.status == "done":
            report["finetuned"] = scores(_trained_model(args, tuned, data), data.test_x, data.test_y, data.mean,
                                         data.std, precision=args.precision)
            original = report["original"]["accuracy"]
            report["retained_after_finetune"] = (report["finetuned"]["accuracy"] / original if original > 0
                                                 else float("nan"))
    cfg = record.config
    report = {"spec": model.spec.to_dict(), "dataset": cfg["dataset"], "n_train": int(data.n_train),
              "n_test": len(data.test_x), "store": str(args.store), "run": _run_summary(record),
              "precision": resolve(args.precision, "cpu"), **report}
    if args.json:
        _print_json(report)
        return 0
    print(f"deep -> shallow: sequential network of {cfg['blocks']} blocks (width {cfg['width']}, norm {cfg['norm']}, "
          f"scale {cfg['residual_scale']}) trained by the engine on {report['n_train']} {cfg['dataset']} examples "
          f"for {cfg['epochs']} epochs (run {record.run_id}, final train loss {_num(record.train_loss)}); "
          f"parameters {report['params_original']} -> {report['params_converted']}\n")
    rows = [["sequential (original)", report["original"]["accuracy"], report["original"]["loss"], ""],
            ["parallel (converted)", report["converted"]["accuracy"], report["converted"]["loss"], report["retained"]]]
    if "recalibrated" in report:
        rows.append(["parallel, BN statistics re-estimated", report["recalibrated"]["accuracy"],
                     report["recalibrated"]["loss"], report["retained_recalibrated"]])
    if "finetuned" in report:
        rows.append([f"parallel, fine-tuned {args.finetune_epochs} epochs", report["finetuned"]["accuracy"],
                     report["finetuned"]["loss"], report["retained_after_finetune"]])
    print(table(["network", "test acc", "test loss", "acc retained"], rows))
    if "finetune" in report:
        tuned = report["finetune"]
        print(f"\nfine-tuning: run {tuned['run_id']} ({tuned['status']}), trained by the engine from run "
              f"{record.run_id}'s weights")
    return 0


def _config_of(record):
    from depthlab.spec.config import RunConfig

    return RunConfig.from_dict(record.config)
