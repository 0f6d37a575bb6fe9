"""CPU throughput: how close the engine's training comes to what this CPU can do, and what each choice gains.

In one run, on the demo's shapes (`depthlab run`: MNIST, width 16, kernel 3, stride-2 stem, flatten head, batch
100, sequential and parallel, 2 and 4 blocks):

1. the ceiling: a large matrix product's GFLOP/s in float32 and in bf16 (bf16 only where the CPU computes it
   natively, `depthlab.precision`; elsewhere the bf16 columns say "no native bf16" and are skipped);
2. the baseline: a plain float32 loop, one model at a time (build, `torch.optim.Adam`, shuffled minibatches
   from tensors in memory; what the engine did on a CPU before precision was a choice is no faster: it trained
   float32 packs, which gain nothing here), in the process as a plain script has it; then, for comparison,
   again once the process keeps freed memory as `depthlab run` has it (`depthlab.run.allocator`), which the
   engine's rows below all run with;
3. the engine on the same configs and data, packed as `depthlab run` packs them (`CPU_DEFAULT_PACK`), in float32
   and at the default precision (auto), one pack at a time and (default precision) with the packs spread over
   `depthlab run`'s worker threads (`depthlab.run.workers`): its training steps alone and end to end (with the
   per-epoch validation, final evaluation and geometric complexity). One pack at a time, the training seconds
   are the packs' `train_seconds`; with W workers, the steady-state rate of W packs stepping at once (each
   shape's default pack, `engine.training_throughput` in W threads) applied to the demo's samples of each shape;
4. the choices behind the defaults: the engine's training step (`engine.training_throughput`) for packs of 1, 2,
   4 and 8 models, float32 and bf16, NCHW and channels_last; and evaluation throughput of a pack of 4 in each
   layout, at the engine's evaluation batch (`engine.evaluation_batch`: about 400 model-images per forward on a
   CPU) and at 400 images per model.

Achieved GFLOP/s = 3 × forward FLOPs per sample × model-samples/s (forward + backward). Ratios are to the
baseline measured in the same run; fractions of the ceiling compare float32 runs with the float32 product and
bf16 runs with the bf16 product. Targets on a CPU with native bf16: the default precision at ≥ 2× the baseline
and ≥ 40% of the bf16 ceiling.

The ceiling, the baseline and the engine's rows are measured in `--rounds` rounds, each ratio within its round
(this kind of machine drifts by ±20% from one minute to the next), and the medians printed.

    python bench/cpu_throughput.py                 # MNIST as the demo trains it (synthetic digits if absent)
    python bench/cpu_throughput.py --rounds 3      # steadier ratios, three times as long
    python bench/cpu_throughput.py --quick         # fewer steps, for a first look
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's plain baseline loop
from sweep_throughput import baseline  # noqa: E402

from depthlab.data import load, locate  # noqa: E402
from depthlab.measure import evaluate  # noqa: E402
from depthlab.models import build, flops, pack  # noqa: E402
from depthlab.precision import cpu_has_native_bf16, resolve  # noqa: E402
from depthlab.run.allocator import keep_freed_memory  # noqa: E402
from depthlab.spec.config import RunConfig  # noqa: E402
from depthlab.train.engine import evaluation_batch, train_pack, training_throughput  # noqa: E402
from depthlab.train.packs import groups, make_packs  # noqa: E402
from depthlab.run.workers import Workers, default_workers, intra_op_threads, threads_per_worker  # noqa: E402

DEMO = dict(width=16, kernel=3, stem_stride=2, head="flatten", norm="batch", optimizer="adam", lr=0.003,
            batch_size=100, schedule="cosine")
SHAPES = [("sequential", 2), ("parallel", 2), ("sequential", 4), ("parallel", 4)]


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    """The best of `repeats` n×n products, in GFLOP/s (2n³ each)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def demo_configs(dataset: str, subset: int, val: int, seeds: int, epochs: int, test: int = 2000,
                 batch: int = DEMO["batch_size"]) -> list[RunConfig]:
    return [RunConfig(dataset=dataset, train_subset=subset, val_split=val, test_subset=test, topology=topology,
                      blocks=blocks, epochs=epochs, seed=seed, **{**DEMO, "batch_size": batch})
            for (topology, blocks), seed in itertools.product(SHAPES, range(seeds))]


def trained_samples(config: RunConfig, data) -> int:
    """The samples a run trains on: whole batches of the training split, every epoch."""
    return config.epochs * (len(data.train_x) // config.batch_size) * config.batch_size


def forward_flops(config: RunConfig, data) -> int:
    return flops(config.model_spec(data.in_channels, data.input_size, data.num_classes))


def engine_run(configs, data, precision: str, workers: int = 1) -> tuple[float, float]:
    """Every config through the engine, packed and spread over `workers` threads as `depthlab run` does on a
    CPU. (training seconds: the packs' train_seconds, summed, and the wall time.)"""
    packs = make_packs(configs, "cpu", precision=precision, defaults=True, workers=workers)
    training = []
    start = time.perf_counter()
    with intra_op_threads(threads_per_worker(workers)):
        Workers(workers).run(packs, lambda members: training.append(
            train_pack(members, data, precision=precision)[0].train_seconds))
    return sum(training), time.perf_counter() - start


def side_by_side_rate(configs, data, precision: str, workers: int, steps: int, warmup: int) -> float:
    """Model-samples/s of `workers` packs of `configs` (one shape) stepping at once, each in its own thread
    on its share of the cores: the engine's training step as `depthlab run` runs it."""
    rates = []
    with intra_op_threads(threads_per_worker(workers)):
        Workers(workers).run(range(workers), lambda i: rates.append(training_throughput(
            [c.replace(seed=c.seed + 100 * i) for c in configs], data, precision=precision, steps=steps,
            warmup=warmup)))
    return sum(rates)


def side_by_side_training(configs, data, precision: str, workers: int, steps: int, warmup: int) -> float:
    """Seconds the demo's training steps take with `workers` packs stepping at once: each shape's samples at
    the side-by-side rate of its largest pack as `depthlab run` packs it."""
    packs = make_packs(configs, "cpu", precision=precision, defaults=True, workers=workers)
    seconds = 0.0
    for members in groups(configs):
        size = max(len(p) for p in packs if p[0].pack_key() == members[0].pack_key())
        samples = sum(trained_samples(c, data) for c in members)
        seconds += samples / side_by_side_rate(members[:size], data, precision, workers, steps, warmup)
    return seconds


def eval_rate(config: RunConfig, data, precision: str, channels_last: bool, models: int, batch: int,
              repeats: int) -> float:
    """Model-images/s of `evaluate` on the validation split (the engine's evaluation pass) at `batch` per model."""
    net = pack([build(config.model_spec(data.in_channels, data.input_size, data.num_classes), seed=s)
                for s in range(models)])
    net.channels_last = channels_last
    evaluate(net, data.val_x, data.val_y, data.mean, data.std, models, precision, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(net, data.val_x, data.val_y, data.mean, data.std, models, precision, batch)
        times.append(time.perf_counter() - start)
    return models * len(data.val_x) / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "synthetic"],
                        help="mnist as the demo trains it; synthetic digits of its shape where MNIST is absent")
    parser.add_argument("--subset", type=int, default=3000, help="training examples, validation included (demo: 3000)")
    parser.add_argument("--val", type=int, default=1000, help="validation examples (demo: 1000)")
    parser.add_argument("--seeds", type=int, default=5, help="runs per shape (demo: 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (demo: 3)")
    parser.add_argument("--test", type=int, default=2000, help="test examples each run evaluates (demo: 2000)")
    parser.add_argument("--batch", type=int, default=DEMO["batch_size"],
                        help=f"training batch per model (demo: {DEMO['batch_size']})")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the ceiling's matrix product")
    parser.add_argument("--sizes", default="1,2,4,8", help="pack sizes of the step table")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per cell of the step table")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each cell of the step table")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the ceiling and evaluation timings")
    parser.add_argument("--rounds", type=lambda text: max(1, int(text)), default=1, help="rounds of the ceiling, baseline and engine rows "
                        "(medians of the ratios taken within each round; 3 steadies them on a drifting machine)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 epoch, 6 steps: a first look")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.steps = 2, 1, 6
    sizes = [int(s) for s in args.sizes.split(",")]
    native = cpu_has_native_bf16()
    default = resolve("auto", "cpu")
    dataset = args.dataset if args.dataset == "synthetic" or locate("mnist") is not None else "synthetic"
    if dataset == "synthetic":
        data = load("synthetic", val_split=args.val, n_train=args.subset, n_test=args.test, shape=(1, 28, 28))
    else:
        data = load("mnist", val_split=args.val, train_subset=args.subset)
    configs = demo_configs(dataset, args.subset, args.val, args.seeds, args.epochs, args.test, args.batch)
    samples = sum(trained_samples(c, data) for c in configs)
    work = sum(3 * forward_flops(c, data) * trained_samples(c, data) for c in configs)

    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; native bf16: {'yes' if native else 'no'}; auto precision: {default}")
    print(f"demo shapes: {len(configs)} runs ({args.seeds} per shape), {args.epochs} epoch(s) of "
          f"{len(data.train_x)} {data.name} examples, batch {args.batch}")

    def ceilings() -> dict:
        return {"fp32": matmul_gflops(torch.float32, args.matmul, args.repeats),
                "bf16": matmul_gflops(torch.bfloat16, args.matmul, args.repeats) if native else None}

    # warm-up over the timed shapes (allocator, oneDNN kernels), one short pass each
    warm = [c.replace(epochs=1) for c in configs[::args.seeds]]
    baseline(warm, data, torch.device("cpu"))
    t_plain = baseline(configs, data, torch.device("cpu"))  # the process as a plain script runs it
    # then as `depthlab run` keeps its process: freed memory stays, for good (the baseline of each round below)
    kept = keep_freed_memory()
    for precision in {"fp32", default}:
        engine_run(warm, data, precision)

    # Rounds, each measuring every row once, the ceiling and the baseline included: this machine's speed drifts
    # from minute to minute, so each ratio is taken within a round, and the medians over the rounds are printed.
    workers = default_workers(torch.device("cpu"), len(configs))
    rounds = []
    for _ in range(args.rounds):
        rows = {"ceiling": ceilings(), "baseline": baseline(configs, data, torch.device("cpu"))}
        for precision in ("fp32", default) if default != "fp32" else ("fp32",):
            rows[f"engine {precision}: training"], rows[f"engine {precision}: end to end"] = \
                engine_run(configs, data, precision)
        if workers > 1:
            rows[f"engine {default}, {workers} workers: training"] = side_by_side_training(
                configs, data, default, workers, args.steps, args.warmup)
            rows[f"engine {default}, {workers} workers: end to end"] = engine_run(configs, data, default, workers)[1]
        rounds.append(rows)
    ceiling = {p: statistics.median(r["ceiling"][p] for r in rounds) if rounds[0]["ceiling"][p] else None
               for p in ("fp32", "bf16")}
    print(f"\nceiling ({args.matmul}x{args.matmul} matmul): fp32 {ceiling['fp32']:.1f} GFLOP/s, bf16 "
          + (f"{ceiling['bf16']:.1f} GFLOP/s" if native else "no native bf16 (skipped)")
          + (f" (median of {args.rounds} rounds)" if args.rounds > 1 else ""))

    def ratio(label: str) -> float:  # to the baseline of the same round
        return statistics.median(r["baseline"] / r[label] for r in rounds)

    def of_ceiling(label: str, precision: str) -> float | None:  # to the ceiling of the same round
        if not rounds[0]["ceiling"][precision]:
            return None
        return statistics.median(work / r[label] / 1e9 / r["ceiling"][precision] for r in rounds)

    labels = ["baseline"] + [k for k in rounds[0] if k.startswith("engine")]
    names = {"baseline": "baseline: plain fp32 loop" + (", freed memory kept" if kept else "")}
    print(f"\n{'':<46} {'seconds':>8} {'model-samples/s':>16} {'GFLOP/s':>8} {'vs baseline':>12} {'of ceiling':>11}")
    if kept:
        print(f"{'baseline: plain fp32 loop, as a script':<46} {t_plain:>8.2f} {samples / t_plain:>16,.0f} "
              f"{work / t_plain / 1e9:>8.1f} {'(first)':>12} {'':>11}")
    for label in labels:
        precision = "fp32" if label == "baseline" or "fp32" in label else default
        seconds = statistics.median(r[label] for r in rounds)
        of = of_ceiling(label, precision)
        print(f"{names.get(label, label):<46} {seconds:>8.2f} {samples / seconds:>16,.0f} {work / seconds / 1e9:>8.1f} "
              f"{ratio(label):>11.2f}x {f'{of:.0%}' if of is not None else '-':>11}")
    if native:  # as `depthlab run` trains: the default precision, its workers side by side
        trained = labels[-2]
        times, of = ratio(trained), of_ceiling(trained, default)
        by_round = "" if args.rounds == 1 else " (by round: " + ", ".join(
            f"{r['baseline'] / r[trained]:.2f}x {work / r[trained] / 1e9 / r['ceiling'][default]:.0%}"
            for r in rounds) + ")"
        print(f"targets (native bf16), {trained}: >= 2x the baseline: {times:.2f}x "
              f"({'met' if times >= 2 else 'NOT met'}); >= 40% of the bf16 ceiling: {of:.0%} "
              f"({'met' if of >= 0.4 else 'NOT met'}){by_round}")

    precisions = ["fp32", "bf16"] if native else ["fp32"]
    print(f"\nengine training step, model-samples/s ({args.steps} steps after {args.warmup} untimed; pack size x "
          "precision x layout)")
    print(f"{'shape':<16} {'precision':<9} {'layout':<13} " + " ".join(f"{'pack ' + str(s):>9}" for s in sizes)
          + f" {'best':>6}")
    for (topology, blocks), precision, layout in itertools.product(SHAPES, precisions, ("NCHW", "channels_last")):
        config = next(c for c in configs if c.topology == topology and c.blocks == blocks)
        rates = {s: training_throughput([config.replace(seed=i) for i in range(s)], data, precision=precision,
                                        layout=layout.lower(), steps=args.steps,
                                        warmup=args.warmup)
                 for s in sizes}
        best = max(rates, key=rates.get)
        print(f"{topology[:3]} {blocks} blocks{'':<5} {precision:<9} {layout:<13} "
              + " ".join(f"{rates[s]:>9,.0f}" for s in sizes) + f" {best:>6}")

    models = 4
    batch = evaluation_batch(torch.device("cpu"), args.batch, models)
    print(f"\nevaluation, model-images/s (a pack of {models} on the {len(data.val_x)} validation images; the "
          f"engine's batch: {batch} per model)")
    print(f"{'shape':<16} {'precision':<9} {'NCHW':>10} {'channels_last':>14} {'channels_last, 400/model':>25}")
    for (topology, blocks), precision in itertools.product(SHAPES, precisions):
        config = next(c for c in configs if c.topology == topology and c.blocks == blocks)
        rates = [eval_rate(config, data, precision, cl, models, size, args.repeats)
                 for cl, size in ((False, batch), (True, batch), (True, 400))]
        print(f"{topology[:3]} {blocks} blocks{'':<5} {precision:<9} {rates[0]:>10,.0f} {rates[1]:>14,.0f} "
              f"{rates[2]:>25,.0f}")


if __name__ == "__main__":
    main()
