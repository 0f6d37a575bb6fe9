"""How long `depthlab study` takes to answer, end to end, and where the time goes.

Runs a study (default: the quick level on MNIST at its default budget) into a fresh store and prints:

1. its wall time, and the target's ratio (quick on MNIST: at most 10 minutes on two CPU cores);
2. the training FLOPs it spent: for every trained run, 3 x the forward FLOPs per example of its network (forward,
   and a backward of about twice the forward) x the examples it trained on; for networks whose training-time form
   is larger than the merged one (lk with dilated re-parameterisation) this undercounts, and says so;
3. the fraction of this machine's matrix-product ceiling that end-to-end time reaches (FLOPs / wall time / the
   ceiling in the precision the runs trained in, measured in the same run);
4. the time outside training steps (evaluation, start-up, pack calibration, cost and latency measurement, the
   robustness lever) as a fraction of the whole; the target is at most 20%. Training-step time is each pack's
   `train_seconds` (its models share it) over the packs trained side by side.

    python bench/study_quick.py                          # the quick level on MNIST, a temporary store
    python bench/study_quick.py --spec study.yaml        # any study spec (depthlab study --write-spec)

Give the machine with every figure: the script prints the CPU's flags, the precision `auto` chose and the threads.
To measure a CPU with native bf16 as an AVX2-only one, hold all three libraries to AVX2:
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` (MKL computes the ceiling's matrix
product and dispatches on its own: held by the first two alone it measured 1.7x AVX2's ceiling).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cpu_throughput import matmul_gflops  # noqa: E402 - the same ceiling as the training-step benchmark

TARGET_SECONDS = 600  # quick on MNIST: an answer within 10 minutes on two CPU cores
OUTSIDE_TARGET = 0.20


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2+"


def training_flops(result: dict, records, spec) -> tuple[float, int]:
    """(3 x forward FLOPs x examples trained, runs counted) over the study's done runs."""
    from depthlab.data.datasets import validation_count
    from depthlab.data.registry import entry
    from depthlab.study.decide import design_key

    flops = {d["key"]: d["flops"] for b in result["budgets"] for d in b["designs"]}
    n_train = entry(spec.dataset).sizes[0]
    total, counted = 0.0, 0
    for rec in records:
        per_example = flops.get(design_key(rec.config))
        if rec.status != "done" or not per_example:
            continue
        examples = rec.config.get("train_subset") or n_train - validation_count(n_train, rec.config["val_split"])
        total += 3 * per_example * examples * (rec.epochs_run or 0)
        counted += 1
    return total, counted


def training_step_seconds(records, workers: int) -> float:
    """The packs' time in training steps, over the packs trained side by side. A pack's models share its
    `train_seconds`, and each records its pack's id (`env.pack`)."""
    packs = {r.env.get("pack") or (r.train_seconds, r.seconds, r.pack_size): r.train_seconds
             for r in records if r.train_seconds}
    return sum(packs.values()) / max(1, workers)


def design_seconds(result: dict, records) -> list[tuple[str, float]]:
    """(design name, the pack seconds of its runs), slowest first: where the training time went."""
    from depthlab.study.decide import design_key

    names = {d["key"]: d["name"] for b in result["budgets"] for d in b["designs"]}
    seconds: dict[str, float] = {}
    for rec in records:
        name = names.get(design_key(rec.config))
        if name and rec.pack_seconds:
            seconds[name] = seconds.get(name, 0.0) + rec.pack_seconds
    return sorted(seconds.items(), key=lambda item: -item[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=None, help="a study spec (YAML); default: the quick level on MNIST")
    parser.add_argument("--store", default=None, help="default: a fresh temporary store")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the ceiling's matrix product")
    args = parser.parse_args(argv)

    import yaml

    from depthlab.results.store import Store
    from depthlab.study.design import StudySpec
    from depthlab.study.runner import run_study
    from depthlab.study.text import format_study

    spec = (StudySpec.from_dict(yaml.safe_load(Path(args.spec).read_text())) if args.spec
            else StudySpec(name="bench-quick"))
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or str(Path(tmp) / "study.sqlite")
        start = time.perf_counter()
        result = run_study(spec, store, precision=args.precision, progress=False, log=lambda msg: None)
        wall = time.perf_counter() - start
        with Store(store, readonly=True) as s:
            records = s.records(sweep=spec.sweep)
    precision = result["precision"]
    ceiling = matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32, args.matmul, 3)
    flops, counted = training_flops(result, records, spec)
    workers = max((r.env.get("workers") or 1 for r in records), default=1)
    steps = training_step_seconds(records, workers)
    outside = max(0.0, wall - steps) / wall
    print(format_study(result))
    print()
    print(f"machine: {torch.get_num_threads()} threads, CPU flags {cpu_flags()}; auto chose {precision}; "
          f"torch {torch.__version__}")
    print(f"study {spec.name}: {spec.dataset}, level {spec.level}, {len(records)} runs ({counted} done)")
    print(f"wall time {wall:.1f} s = {wall / TARGET_SECONDS:.2f}x the {TARGET_SECONDS} s target "
          f"(training {result['seconds']['training']:.1f} s, cost {result['seconds']['cost']:.1f} s, "
          f"shift {result['seconds']['shift']:.1f} s)")
    print(f"training FLOPs {flops / 1e12:.2f} TFLOP (3 x forward x examples; lk's training form undercounted); "
          f"{flops / wall / 1e9:.1f} GFLOP/s end to end = {flops / wall / 1e9 / ceiling:.3f}x the {precision} "
          f"matmul ceiling of {ceiling:.0f} GFLOP/s")
    print(f"outside training steps: {wall - steps:.1f} s of {wall:.1f} s = {outside:.2f}x the whole "
          f"(target at most {OUTSIDE_TARGET:.2f}; training steps {steps:.1f} s over {workers} worker(s))")
    print("pack time per design (its runs' share of their packs' wall time), slowest first: "
          + ", ".join(f"{name} {sec:.0f} s" for name, sec in design_seconds(result, records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
