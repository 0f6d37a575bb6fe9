"""Large-kernel (`lk`) branch speed on the CPU: NCHW vs channels_last activations in training, and the
training-time model vs the merged one (`fuse_for_inference`) in inference, every ratio measured in the same run.

Printed, after one line naming the machine (CPU, cores, torch, threads, load average):

1. ``bare conv``: the depthwise K×K convolution alone (nn.Conv2d(C, C, K, padding=K//2, groups=C)), forward +
   backward, NCHW vs channels_last input, at 1 thread and at every core (`--conv-threads`). Its NCHW backward
   (the weight gradient) is the slow path that made the engine run lk packs channels_last on the CPU.
2. ``train``: one training step (forward + cross-entropy + backward; no optimizer step: the weights stay
   contiguous in both layouts, so it would cost the same) of an lk pack of M models (`build(spec, models=M)`),
   ms/step with `net.channels_last` off and on, and the ratio NCHW / channels_last, for each kernel (and
   re-parameterisation) in `--kernels`. The last column says whether the activations really were channels_last
   (read off the input of the first depthwise conv), not only whether the flag was set.
3. ``bf16``: a training step under bf16 autocast with the depthwise convs in bf16 against float32 (what the
   engine does on a CPU, `LargeKernelBranch.float32_depthwise_on_cpu`), and the ratio, for each large kernel.
4. ``infer``: the training-time model in eval mode vs `fuse_for_inference` of it (re-param kernels merged,
   BatchNorms folded), same input, ms/batch and the ratio eval / merged, in both layouts; then the parameters
   and FLOPs of one model before and after merging, and the largest logit difference between the two forms.

Timing: the two sides of each ratio alternate (one step of each per repeat), after `--warmup` steps of each, and
the median of `--repeats` is printed; a row stops repeating early once it has spent `--budget` seconds. Tables run
at `--threads` threads (default 1: on a 2-core machine shared with other jobs, more threads than free cores leave
OpenMP's spin-waiting threads waiting on each other, and the NCHW depthwise backward then swings by 10-100× from
call to call, where OMP_WAIT_POLICY=PASSIVE removes most of it; the ``bare conv`` line at every core shows it).

    python bench/lk_speed.py                 # batch 32, width 32, 28x28, packs of 1 and 4 (≈1-2 min on 2 cores)
    python bench/lk_speed.py --quick         # toy sizes, a few seconds (the smoke test)
    python bench/lk_speed.py --threads 2 --kernels 13,13:dilated --models 4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.models import ModelSpec, build, flops, fuse_for_inference, param_count, spec_params

QUICK = dict(batch=8, width=8, size=12, blocks=1, kernels="3,13,13:dilated", models="1,2", infer="13:dilated",
             repeats=2, warmup=1, conv_threads="1", budget=2.0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine(threads: int) -> str:
    load = "%.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "n/a"
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (f"machine: {cpu_name()}, {cores()} cores, torch {torch.__version__}, {threads} threads "
            f"(torch.set_num_threads), load average {load}, OMP_WAIT_POLICY {policy}")


def alternate(fns: dict, *, warmup: int, repeats: int, budget: float) -> tuple[dict, int]:
    """Median seconds of each callable, timed in turn (one call of each per repeat) so that both sides of a ratio
    see the same machine load. Stops early once `budget` seconds are spent (after at least one repeat)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        if time.perf_counter() - start > budget:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}, len(times[next(iter(times))])


def kernels_arg(text: str) -> list[tuple[int, str]]:
    """"3,13,13:dilated" → [(3, "none"), (13, "none"), (13, "dilated")]."""
    out = []
    for item in text.split(","):
        k, _, reparam = item.strip().partition(":")
        out.append((int(k), reparam or "none"))
    return out


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def bare_conv(args, threads: int) -> None:
    c, k = args.width, args.conv_kernel
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
    inputs = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        inputs[name] = torch.randn(args.batch, c, args.size, args.size).contiguous(memory_format=fmt).requires_grad_()

    def step(x):
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    t, n = alternate({name: (lambda x=x: step(x)) for name, x in inputs.items()}, warmup=args.warmup,
                     repeats=args.conv_repeats, budget=args.budget)
    print(f"{'bare conv':<10} {threads:>7} {t['NCHW'] * 1e3:>10.1f} {t['channels_last'] * 1e3:>17.1f} "
          f"{t['NCHW'] / t['channels_last']:>19.2f}x {n:>8}")


def channels_last_seen(net, x) -> bool:
    """Whether the first depthwise conv's input is channels_last in memory (not just whether the flag is set)."""
    seen = []
    hook = net.layers[0].dw.register_forward_pre_hook(
        lambda mod, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)
                                     and not inp[0].is_contiguous()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        hook.remove()
    return seen[0]


def spec_for(args, kernel: int, reparam: str) -> ModelSpec:
    return ModelSpec(branch="lk", kernel=kernel, reparam=reparam, topology=args.topology, blocks=args.blocks,
                     width=args.width, hidden=args.hidden, input_size=args.size, in_channels=1)


def data(args, models: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(models, args.batch, 1, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (models, args.batch), generator=g)
    return x, y


def train(args) -> None:
    unseen = []
    for models in ints(args.models):
        x, y = data(args, models)
        for kernel, reparam in kernels_arg(args.kernels):
            net = build(spec_for(args, kernel, reparam), seed=0, models=models).train()

            def step(channels_last: bool):
                net.channels_last = channels_last
                net.zero_grad(set_to_none=True)
                logits = net(x)  # (M, B, classes)
                F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()

            t, n = alternate({"NCHW": lambda: step(False), "channels_last": lambda: step(True)},
                             warmup=args.warmup, repeats=args.repeats, budget=args.budget)
            net.channels_last = True
            active = "yes" if channels_last_seen(net, x) else "NO"
            if active == "NO":
                unseen.append(models)
            print(f"{'train':<6} {kernel:>3} {reparam:<8} {models:>6} {t['NCHW'] * 1e3:>10.1f} "
                  f"{t['channels_last'] * 1e3:>17.1f} {t['NCHW'] / t['channels_last']:>19.2f}x {n:>8} {active:>21}")
    if unseen:
        print(f"NO: net.channels_last was set but the first depthwise conv still saw NCHW activations (packs of "
              f"{', '.join(map(str, sorted(set(unseen))))}): a packed input of M·C_in = 1 channel already counts as "
              "channels_last-contiguous, so .contiguous(memory_format=channels_last) keeps its NCHW strides and so "
              "does the stem's output")


def bf16_depthwise(args) -> None:
    """A training step of an lk pack under bf16 autocast, its depthwise convs in float32 (what the engine does on a
    CPU: `LargeKernelBranch.float32_depthwise_on_cpu`) against all of it in bf16, channels_last, same input."""
    from depthlab.models.branches import LargeKernelBranch

    models = max(ints(args.models))
    x, y = data(args, models)
    for kernel, reparam in kernels_arg(args.kernels):
        if kernel == 3:
            continue  # the 3x3 rows hold no large depthwise kernel
        net = build(spec_for(args, kernel, reparam), seed=0, models=models).train()
        net.channels_last = True

        def step(float32_depthwise: bool):
            LargeKernelBranch.float32_depthwise_on_cpu = float32_depthwise
            net.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(x)
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()

        try:
            t, n = alternate({"bf16": lambda: step(False), "fp32 dw": lambda: step(True)}, warmup=args.warmup,
                             repeats=args.repeats, budget=args.budget)
        finally:
            LargeKernelBranch.float32_depthwise_on_cpu = True
        print(f"{'bf16':<6} {kernel:>3} {reparam:<8} {models:>6} {t['bf16'] * 1e3:>10.1f} {t['fp32 dw'] * 1e3:>17.1f} "
              f"{t['bf16'] / t['fp32 dw']:>19.2f}x {n:>8}")


def infer(args) -> None:
    (kernel, reparam), = kernels_arg(args.infer)
    spec = spec_for(args, kernel, reparam)
    print(f"inference (eval-mode forward under torch.inference_mode), lk K={kernel} reparam {reparam}, "
          f"{args.topology}, {args.blocks} blocks, batch {args.batch}; ms per batch:")
    print(f"{'':<6} {'layout':<14} {'models':>6} {'eval ms':>10} {'merged ms':>10} {'eval/merged':>12} "
          f"{'repeats':>8}")
    summary = None
    for models in ints(args.models):
        x, _ = data(args, models)
        net = build(spec, seed=0, models=models)
        with torch.no_grad():  # a few training forwards so the BatchNorms hold non-trivial running statistics
            for _ in range(3):
                net(x)
        net.eval()
        merged = fuse_for_inference(net)
        for layout, cl in (("NCHW", False), ("channels_last", True)):
            net.channels_last = merged.channels_last = cl
            with torch.inference_mode():
                t, n = alternate({"eval": lambda: net(x), "merged": lambda: merged(x)}, warmup=args.warmup,
                                 repeats=args.repeats, budget=args.budget)
            print(f"{'infer':<6} {layout:<14} {models:>6} {t['eval'] * 1e3:>10.2f} {t['merged'] * 1e3:>10.2f} "
                  f"{t['eval'] / t['merged']:>11.2f}x {n:>8}")
        if summary is None:
            with torch.no_grad():
                diff = (net(x) - merged(x)).abs().max().item()
            summary = param_count(net) // models, param_count(merged) // models, diff
    p_eval, p_merged, diff = summary
    f_eval, f_merged = flops(spec), flops(spec, merged=True)
    print(f"infer  params per model: eval {p_eval:,}, merged {p_merged:,} ({p_merged / p_eval:.2f}x; "
          f"spec_params says {spec_params(spec):,} and {spec_params(spec, merged=True):,})")
    print(f"infer  MFLOP per sample: eval {f_eval / 1e6:.2f}, merged {f_merged / 1e6:.2f} "
          f"({f_eval / f_merged:.2f}x fewer merged); max |logit difference| eval vs merged {diff:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes for the smoke test (a few seconds): "
                        + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="channels C (also the bare conv's)")
    parser.add_argument("--size", type=int, default=28, help="input size (1 channel, MNIST-shaped)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=None, help="hidden channels of a branch (default: width)")
    parser.add_argument("--topology", default="sequential")
    parser.add_argument("--kernels", default="3,7,13,17,13:dilated", help="K or K:reparam, comma-separated")
    parser.add_argument("--models", default="1,4", help="pack sizes M, comma-separated")
    parser.add_argument("--infer", default="13:dilated", help="K:reparam of the inference comparison")
    parser.add_argument("--conv-kernel", type=int, default=13, help="K of the bare depthwise conv")
    parser.add_argument("--conv-threads", default=None, help="thread counts of the bare conv lines "
                        "(default: 1 and every core)")
    parser.add_argument("--threads", type=int, default=1, help="threads of the train and infer tables")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median printed)")
    parser.add_argument("--conv-repeats", type=int, default=5, help="timed repeats of the bare conv")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each side before timing")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds after which a row stops repeating")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    conv_threads = ints(args.conv_threads) if args.conv_threads else sorted({1, cores()})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        print(machine(args.threads))
        print(f"bare depthwise conv nn.Conv2d({args.width}, {args.width}, {args.conv_kernel}, "
              f"padding={args.conv_kernel // 2}, groups={args.width}), forward + backward, input "
              f"{args.batch}x{args.width}x{args.size}x{args.size}; ms, median:")
        print(f"{'':<10} {'threads':>7} {'NCHW ms':>10} {'channels_last ms':>17} {'NCHW/channels_last':>20} "
              f"{'repeats':>8}")
        for threads in conv_threads:
            bare_conv(args, threads)
        torch.set_num_threads(args.threads)
        print(f"training step (forward + cross-entropy + backward, no optimizer step), lk {args.topology}, "
              f"{args.blocks} blocks, width {args.width}, hidden {args.hidden or args.width}, batch {args.batch} "
              f"per model, 1x{args.size}x{args.size}, {args.threads} threads; ms per step, median:")
        print(f"{'':<6} {'K':>3} {'reparam':<8} {'models':>6} {'NCHW ms':>10} {'channels_last ms':>17} "
              f"{'NCHW/channels_last':>20} {'repeats':>8} {'channels_last active':>21}")
        train(args)
        print(f"bf16 depthwise: a training step under bf16 autocast, channels_last, packs of {max(ints(args.models))}; "
              "all of it in bf16 against its depthwise convs in float32 (the engine's choice on a CPU); ms, median:")
        print(f"{'':<6} {'K':>3} {'reparam':<8} {'models':>6} {'all bf16 ms':>10} {'float32 dw ms':>17} "
              f"{'all bf16/float32 dw':>20} {'repeats':>8}")
        bf16_depthwise(args)
        infer(args)
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    main()
