"""Sweep throughput: the packed engine against a plain one-model-at-a-time PyTorch loop, same configs, same run.

The baseline is what a researcher writes by hand: for each config, build the model, `torch.optim.Adam`, and loop
over shuffled minibatches of 128 from tensors already on the device, float32, no packing. The packed engine
trains each pack of same-shape configs as one module, at `--precision` (default auto: bf16 autocast where the
device has native bf16, as `depthlab run`; channels_last on CUDA and in bf16). Both train every
config for the same number of samples, after a warm-up over the same shapes (cuDNN autotuning, allocator,
kernel caches), with cuDNN autotuning on for both.

Printed: model-samples/s for both, achieved TFLOP/s (3 × forward FLOPs per sample: forward + backward), and two
ratios. The headline compares training alone (the engine's own synchronised `train_seconds`); the second also
charges the engine for the evaluation it does and the baseline does not (per-epoch validation, final train and
test passes, the geometric complexity), so it is a lower bound.

    python bench/sweep_throughput.py --set mnist    # width ≤ 32, blocks ≤ 4  (target on an H100: ≥ 10×)
    python bench/sweep_throughput.py --set large    # the largest paper-grid shapes (target: ≥ 1.5×)

The large set runs on CIFAR-10 when it is found locally (`depthlab data verify cifar10`), and otherwise on
generated images of CIFAR-10's shape (3×32×32, 10 classes): throughput depends on shapes, not pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import torch
import torch.nn.functional as F

from depthlab.data import load, locate, normalise
from depthlab.models import build, flops
from depthlab.precision import PRECISIONS, resolve
from depthlab.spec.config import RunConfig
from depthlab.train.engine import synchronize, train_pack
from depthlab.train.packs import make_packs

SETS = {
    # MNIST-size configs: width ≤ 32, blocks ≤ 4
    "mnist": dict(dataset="mnist", width=[16, 32], blocks=[2, 4], kernel=[3], topology=["sequential", "parallel"]),
    # the largest shapes of the paper grid
    "large": dict(dataset="cifar10", width=[64], blocks=[8], kernel=[7], topology=["sequential", "parallel"]),
}


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


def load_data(dataset: str, subset: int, device, root, n_test: int = 1000):
    """The training subset and `n_test` test images; CIFAR-10-shaped generated images when CIFAR-10 is absent."""
    if dataset == "cifar10" and locate("cifar10", root) is None:
        data = load("synthetic", n_train=subset, n_test=n_test, shape=(3, 32, 32), device=device)
    else:
        data = load(dataset, val_split=0, train_subset=subset, device=device, root=root)
    return shrunk(data, len(data.train_x), n_test)


def shrunk(data, n_train: int, n_test: int):
    return dataclasses.replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                               test_x=data.test_x[:n_test], test_y=data.test_y[:n_test])


def baseline(configs, data, device) -> float:
    """One model at a time, plain PyTorch. Returns the seconds in its training loops (building the models and
    their optimizers is left out, as the engine's `train_seconds` leaves out building the pack)."""
    seconds = 0.0
    for c in configs:
        torch.manual_seed(c.seed)
        model = build(c.model_spec(data.in_channels, data.input_size, data.num_classes)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=c.learning_rate)
        n = data.train_x.shape[0]
        synchronize(device)
        start = time.perf_counter()
        for _ in range(c.epochs):
            order = torch.randperm(n, device=device)
            for i in range(0, n - c.batch_size + 1, c.batch_size):
                idx = order[i:i + c.batch_size]
                x = normalise(data.train_x[idx], data.mean, data.std)
                loss = F.cross_entropy(model(x), data.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        synchronize(device)
        seconds += time.perf_counter() - start
    return seconds


def packed(packs, data, device, compile, precision: str = "auto") -> tuple[float, float]:
    """Every pack through the engine. Returns (seconds in training steps, seconds in all)."""
    synchronize(device)
    start, training = time.perf_counter(), 0.0
    for pack_configs in packs:
        training += train_pack(pack_configs, data, device=device, compile=compile,
                               precision=precision)[0].train_seconds
    synchronize(device)
    return training, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="mnist", choices=sorted(SETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", type=int, default=None, help="configs per shape (default: 16 CUDA, 2 CPU)")
    parser.add_argument("--samples", type=int, default=None, help="training samples per config "
                        "(default: 2 epochs of the subset)")
    parser.add_argument("--subset", type=int, default=None, help="training examples (default: 10,000 CUDA, 1,024 CPU)")
    parser.add_argument("--test", type=int, default=1000, help="test images the engine evaluates (default: 1,000)")
    parser.add_argument("--max-pack", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True  # for the baseline too (the engine turns it on for itself)
    seeds, subset = args.seeds or (16 if cuda else 2), args.subset or (10_000 if cuda else 1024)
    samples = args.samples or 2 * subset
    configs = configs_for(args.set, seeds, samples, subset)
    c0 = configs[0]
    data = load_data(c0.dataset, subset, device, args.data_root, args.test)
    packs = make_packs(configs, device, args.max_pack, precision=resolve(args.precision, device))
    steps = subset // 128 * c0.epochs
    model_samples = len(configs) * steps * 128
    work = sum(3 * flops(c.model_spec(data.in_channels, data.input_size, data.num_classes)) for c in configs) \
        * steps * 128
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"set {args.set}: {len(configs)} configs ({seeds} per shape) in {len(packs)} packs "
          f"(sizes {sorted({len(p) for p in packs})}), {c0.epochs} epochs of {subset} {c0.dataset} examples each "
          f"({data.name} data), on {name} in {resolve(args.precision, device)}")
    # warm-up over the very shapes that are timed: the same packs, and one model of each shape, a few steps each
    tiny = shrunk(data, 4 * c0.batch_size, min(256, args.test))
    packed([[dataclasses.replace(c, epochs=1) for c in p] for p in packs], tiny, device, args.compile,
           args.precision)
    one_per_shape = {c.pack_key(): dataclasses.replace(c, epochs=1) for c in configs}
    baseline(list(one_per_shape.values()), tiny, device)

    t_train, t_all = packed(packs, data, device, args.compile, args.precision)
    t_base = baseline(configs, data, device)
    print(f"{'':>24} {'seconds':>9} {'model-samples/s':>16} {'TFLOP/s':>8}")
    for label, t in (("baseline", t_base), ("packed: training", t_train), ("packed: with evaluation", t_all)):
        print(f"{label:>24} {t:>9.2f} {model_samples / t:>16.0f} {work / t / 1e12:>8.3f}")
    print(f"ratio packed/baseline, training: {t_base / t_train:.2f}x "
          f"(charging the engine's evaluation too: {t_base / t_all:.2f}x)")


if __name__ == "__main__":
    main()
