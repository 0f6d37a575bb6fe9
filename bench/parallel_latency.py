"""Inference latency: parallel (one broad layer) vs sequential (deep stack) at equal parameters.

For n = 2, 8, 32 blocks and batch 1 and 256, both wirings of the same blocks are built, BN is folded
(`fuse_for_inference`), and the median latency of a forward pass is measured in the same run; the printed ratio
is sequential / parallel (> 1: the broad layer is faster). The parallel network does the same FLOPs in 2 large
convolutions instead of 2n small dependent ones, so its advantage should grow with n, most at batch 1 where
the deep stack is latency-bound.

    python bench/parallel_latency.py                       # CPU-sized defaults
    python bench/parallel_latency.py --device cuda --width 64 --size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from depthlab.models import ModelSpec, build, flops, fuse_for_inference, param_count
from depthlab.train.engine import synchronize


def latency(model, x, repeats: int, device) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--blocks", default="2,8,32", help="comma-separated n")
    parser.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    parser.add_argument("--width", type=int, default=None, help="channels C (default: 64 on CUDA, 16 on CPU)")
    parser.add_argument("--size", type=int, default=None, help="input size (default: 32 on CUDA, 16 on CPU)")
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards (default: 50 CUDA, 5 CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    width, size = args.width or (64 if cuda else 16), args.size or (32 if cuda else 16)
    repeats = args.repeats or (50 if cuda else 5)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device {name}, width {width}, input {size}x{size}, kernel {args.kernel}, {args.dtype}, "
          f"median of {repeats}")
    print(f"{'n':>4} {'batch':>6} {'params':>9} {'GFLOP/sample':>13} {'sequential ms':>14} {'parallel ms':>12} "
          f"{'seq/par':>8}")
    for n in map(int, args.blocks.split(",")):
        spec = ModelSpec(width=width, blocks=n, kernel=args.kernel, input_size=size, in_channels=3)
        seq = fuse_for_inference(build(spec, seed=0).eval()).to(device, dtype)
        par = fuse_for_inference(build(spec.replace(topology="parallel"), seed=0).eval()).to(device, dtype)
        if cuda:
            seq, par = seq.to(memory_format=torch.channels_last), par.to(memory_format=torch.channels_last)
        assert param_count(seq) == param_count(par)
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            t_seq, t_par = latency(seq, x, repeats, device), latency(par, x, repeats, device)
            print(f"{n:>4} {batch:>6} {param_count(seq):>9} {flops(spec) / 1e9:>13.4f} {t_seq * 1e3:>14.3f} "
                  f"{t_par * 1e3:>12.3f} {t_seq / t_par:>8.2f}")


if __name__ == "__main__":
    main()
