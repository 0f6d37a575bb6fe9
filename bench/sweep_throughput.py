"""Sweep throughput: the packed engine against a plain one-model-at-a-time PyTorch loop, same configs, same run.

The baseline is what a researcher writes by hand: for each config, build the model, `torch.optim.Adam`, and loop
over shuffled minibatches of 128 from tensors already on the device, float32, no packing. The packed engine
trains each pack of same-shape configs as one module (bf16 autocast and channels_last on CUDA). Both train every
config for the same number of samples; printed: model-samples/s for both, their ratio, and achieved TFLOP/s
(3 × forward FLOPs per sample: forward + backward).

    python bench/sweep_throughput.py --set mnist    # width ≤ 32, blocks ≤ 4  (target on an H100: ≥ 10×)
    python bench/sweep_throughput.py --set large    # the largest paper-grid shapes (target: ≥ 1.5×)
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from depthlab.data import load, normalise
from depthlab.models import build, flops
from depthlab.sweep.config import RunConfig
from depthlab.sweep.engine import train_pack
from depthlab.sweep.packs import make_packs

SETS = {
    # MNIST-size configs: width ≤ 32, blocks ≤ 4
    "mnist": dict(dataset="mnist", width=[16, 32], blocks=[2, 4], kernel=[3], topology=["sequential", "parallel"]),
    # the largest shapes of the paper grid
    "large": dict(dataset="cifar10", width=[64], blocks=[8], kernel=[7], topology=["sequential", "parallel"]),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def configs_for(name: str, seeds: int, samples: int, dataset_size: int) -> list[RunConfig]:
    grid = dict(SETS[name])
    dataset = grid.pop("dataset")
    out = []
    for values in itertools.product(*grid.values()):
        for seed in range(seeds):
            out.append(RunConfig(dataset=dataset, val_split=0, train_subset=dataset_size, test_subset=1000,
                                 batch_size=128, epochs=max(1, samples // dataset_size), stem_stride=2,
                                 head="gap", seed=seed, **dict(zip(grid, values))))
    return out


def baseline(configs, data, device) -> float:
    """One model at a time, plain PyTorch. Returns seconds."""
    start = time.perf_counter()
    for c in configs:
        torch.manual_seed(c.seed)
        model = build(c.model_spec(data.in_channels, data.input_size, data.num_classes)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=c.learning_rate)
        n = data.train_x.shape[0]
        for _ in range(c.epochs):
            order = torch.randperm(n, device=device)
            for i in range(0, n - c.batch_size + 1, c.batch_size):
                idx = order[i:i + c.batch_size]
                x = normalise(data.train_x[idx], data.mean, data.std)
                loss = F.cross_entropy(model(x), data.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    sync(device)
    return time.perf_counter() - start


def packed(configs, data, device, max_pack, compile) -> float:
    start = time.perf_counter()
    for pack_configs in make_packs(configs, device, max_pack):
        train_pack(pack_configs, data, device=device, compile=compile)
    sync(device)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="mnist", choices=sorted(SETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", type=int, default=None, help="configs per shape (default: 16 CUDA, 2 CPU)")
    parser.add_argument("--samples", type=int, default=None, help="training samples per config "
                        "(default: 2 epochs of the subset)")
    parser.add_argument("--subset", type=int, default=None, help="training examples (default: 10,000 CUDA, 1,024 CPU)")
    parser.add_argument("--max-pack", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    seeds, subset = args.seeds or (16 if cuda else 2), args.subset or (10_000 if cuda else 1024)
    samples = args.samples or 2 * subset
    configs = configs_for(args.set, seeds, samples, subset)
    c0 = configs[0]
    data = load(c0.dataset, val_split=0, train_subset=subset, device=device, root=args.data_root)
    data = type(data)(**{**data.__dict__, "test_x": data.test_x[:1000], "test_y": data.test_y[:1000]})
    steps = subset // 128 * c0.epochs
    model_samples = len(configs) * steps * 128
    work = sum(3 * flops(c.model_spec(data.in_channels, data.input_size, data.num_classes)) for c in configs) \
        * steps * 128
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"set {args.set}: {len(configs)} configs ({seeds} per shape), {c0.epochs} epochs of {subset} "
          f"{c0.dataset} examples each, on {name}")
    packed(configs[:2], data, device, args.max_pack, args.compile)  # warm-up (kernels, allocator)
    t_pack = packed(configs, data, device, args.max_pack, args.compile)
    t_base = baseline(configs, data, device)
    # the packed time includes its per-epoch validation and final evaluations; the baseline does none
    print(f"{'':>9} {'seconds':>9} {'model-samples/s':>16} {'TFLOP/s':>8}")
    for label, t in (("baseline", t_base), ("packed", t_pack)):
        print(f"{label:>9} {t:>9.2f} {model_samples / t:>16.0f} {work / t / 1e12:>8.3f}")
    print(f"ratio packed/baseline: {t_base / t_pack:.2f}x")


if __name__ == "__main__":
    main()
