"""The cost of a design on the device it runs on: parameters, FLOPs, training throughput and inference latency.

Why: a study keeps the designs that are equally good (their losses within noise of the best) and then chooses the
cheapest of them, first by the latency of one example (batch 1, what a deployed network answers one request with),
then by parameters. Costs are measured on the network a run actually trains (a PreCropping design's narrower
network, not its dense parent) and, for inference, in its merged form (`depthlab.models.fuse_for_inference`:
BatchNorms folded, re-parameterised kernels merged), which is the network one would deploy.

The paper's claim that "the shallow form trains faster" (a parallel layer of n branches against n blocks in
sequence, with the same parameters and FLOPs) is measured here by `train_samples_per_s`: the training step of the
engine (forward, backward, AdamW) timed on one model at the config's batch size.

A measurement depends on the network's shape and on where and how it runs, not on how it is trained: `cost_key`
names those, so that a store (`Store.cost` / `Store.save_cost`) keeps one measurement per network and machine, and
`costs` measures only what the store does not hold yet.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Callable, Iterable

import torch

import depthlab
from depthlab import precision as precisions
from depthlab.data import registry
from depthlab.models import flops as count_flops
from depthlab.models import fuse_for_inference, spec_params
from depthlab.records import canonical_config, canonical_json, config_id
from depthlab.run.workers import intra_op_threads
from depthlab.spec.config import RunConfig

# Run fields that change how a network is trained but not its shape: a cost does not depend on them. The budget's
# fields are here too: the width or hidden size a budget chose is in the config itself.
TRAINING_ONLY = ("seed", "lr", "weight_decay", "epochs", "schedule", "optimizer", "augment", "init_from",
                 "train_subset", "val_split", "test_subset", "param_budget", "budget_by", "crop_init")
PRUNING = ("prune", "density", "prune_structure")
# Pruning methods whose crop depends on the seed's initial weights (random scores seeded too) or, for snip and
# grasp, on the training examples as well; erk and precrop_* allocate densities in closed form from the shapes
# alone, so their cropped network is the same for every seed.
SEEDED_CROPS = ("random", "magnitude", "snip", "grasp", "synflow")
DATA_CROPS = ("snip", "grasp")

LATENCY_BATCHES = (1, 256)
REPEATS = (30, 3)  # timed forwards at batch 1 and at batch 256: about 1 s in all for a small network on 2 cores


def device_name(device: torch.device | str) -> str:
    """The device a cost holds for: its type, and the card's name on CUDA; on a CPU the instruction set torch
    dispatches to (an AVX2-only machine computes more slowly, and emulates bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    return device.type


def shape_fields(config: RunConfig) -> dict:
    """The fields of `config` that decide the network it trains and the batch it trains on: its canonical config
    without the training-only fields. A `mask` design keeps the dense network's shape (its zeros are computed by
    the same dense kernels), so its pruning fields are left out and it costs what its dense config costs; a `crop`
    design keeps them, and the seed (and the data split) where its crop depends on them."""
    values = canonical_config(config.to_dict())
    keep = set()
    if config.cropped:
        keep.update(PRUNING)
        if config.prune in SEEDED_CROPS:
            keep.add("seed")
        if config.prune in DATA_CROPS:
            keep.update(("train_subset", "val_split"))
    else:
        for name in PRUNING:
            values.pop(name, None)
    return {k: v for k, v in values.items() if k not in TRAINING_ONLY or k in keep}


def cost_key(config: RunConfig, device: torch.device | str, precision: str, threads: int,
             layout: str = "auto") -> str:
    """The key a cost is stored under: what it depends on, as canonical JSON. The network's shape and batch
    (`shape_fields`: model fields, dataset, batch_size, the pruning fields of a crop), the device
    (`device_name`), the precision (`auto` resolved on the device) and the one latencies are measured in where it
    differs, the training layout where it is not the default's (`engine.layout_key`), torch's intra-op threads,
    and the torch and depthlab versions. Two configs that differ only in how they train (seed, lr, ...) share a
    key, and a cost measured before these choices existed keeps its key where it measured the same."""
    from depthlab.train.engine import layout_key

    device = torch.device(device)
    precision = precisions.resolve(precision, device)
    inference = precisions.for_inference(precision, device)
    return canonical_json({
        "shape": shape_fields(config), "device": device_name(device), "precision": precision,
        **({} if inference == precision else {"latency": inference}), **layout_key(device, config, precision, layout),
        "threads": int(threads), "torch": torch.__version__, "depthlab": depthlab.__version__,
    })


def initial_network(config: RunConfig, dataset=None):
    """The one-model network `config` starts training from, as the engine builds it (CPU): built from its seed,
    and for a crop design the narrower network PreCropping makes of it. A mask design stays dense-shaped: its
    masks zero weights but change no layer, so it is built (and costs) as its dense network. `dataset` (a
    `depthlab.data.Dataset`) is needed only by the crops whose mask reads training examples (snip, grasp); the
    others take the dataset's shape from the registry."""
    from depthlab.train import engine  # the engine's own construction, so that a cost is of the network trained

    if dataset is None:
        if config.cropped and config.prune in DATA_CROPS:
            raise ValueError(f"the crop of prune {config.prune} depends on the training data: pass its dataset")
        data = registry.entry(config.dataset)
        dataset = SimpleNamespace(in_channels=data.channels, input_size=data.size, num_classes=data.num_classes)
    return engine.starting_model(config, dataset)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _train_step_times(net, x, y, precision: str, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` training steps after `warmup` untimed ones (allocator, kernel caches), on the
    batch (x, y): the engine's own step (`forward_backward`, then the optimizer's step as `training_throughput`
    takes it), with AdamW whatever optimizer the config names (the key leaves the optimizer out)."""
    from depthlab.train.engine import forward_backward
    from depthlab.train.optim import PackedOptimizer
    from depthlab.train.recipe import TABLE

    optimizer = PackedOptimizer(net, 1, kind="adam", lr=[1e-3], weight_decay=[0.0], momentum=TABLE.sgd_momentum,
                                betas=TABLE.adam_betas, eps=TABLE.adam_eps)
    xb, yb = x.unsqueeze(0), y.unsqueeze(0)  # a pack of one model: (1, B, C, H, W) and (1, B)
    alive = torch.ones(1, dtype=torch.bool, device=device)
    times = []
    for step in range(warmup + steps):
        _synchronize(device)
        start = time.perf_counter()
        forward_backward(net, xb, yb, alive, precision, device)
        optimizer.step(1.0, active=alive)
        optimizer.zero_grad()
        _synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _forward_times(net, x, precision: str, device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of `repeats` forwards of `x` after `warmup` untimed ones (inference mode, autocast)."""
    times = []
    with torch.inference_mode(), precisions.autocast(precision, device):
        for step in range(warmup + repeats):
            _synchronize(device)
            start = time.perf_counter()
            net(x)
            _synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return times


def measure(config: RunConfig, device: torch.device | str, precision: str = "fp32", *, steps: int = 5,
            warmup: int = 2, repeats: tuple[int, int] = REPEATS, threads: int | None = None,
            dataset=None, layout: str = "auto") -> dict:
    """The cost of `config`'s network on `device` at `precision` (auto, fp32, bf16; `depthlab.precision`),
    trained in `layout` (`depthlab.choices.LAYOUTS`):

    - `params`: inference parameters of the network actually trained (a crop design's narrower one; a mask
      design's dense one), merged (BatchNorms folded, re-param kernels merged): `spec_params(spec, merged=True)`;
    - `flops`: FLOPs of one example's forward in the merged form, counted as `depthlab.models.flops` counts them:
      2 per multiply-accumulate of the convolutions and the classifier (norms, activations, additions not
      counted), for the dataset's input size;
    - `train_samples_per_s`: examples per second of one model's training step (forward, backward, AdamW step as
      the engine steps it) at `config.batch_size` on random inputs of the dataset's shape, in train mode under the
      precision's autocast, in the layout the engine trains in at `layout` (recorded as `channels_last`):
      batch_size over the median of `steps` step times after `warmup` untimed steps. This is how "the shallow form
      trains faster" is measured;
    - `latency_b1_ms`, `latency_b256_ms`: the median time of one forward of the merged, eval-mode network at
      batch 1 and 256 under `torch.inference_mode`, over `repeats` = (batch 1, batch 256) forwards after `warmup`
      untimed ones, in `latency_precision` (`depthlab.precision.for_inference`: float32 on a CPU, where bf16
      autocast re-casts every weight at every forward, the training precision elsewhere) and in that precision's
      default layout (recorded as `latency_channels_last`), whatever the layout the network trains in: a latency
      is the network's, not its training's. (At batch 1 in float32 on this project's Xeon the two layouts were
      within 9% for 14 of the quick study's 15 3x3 designs, and NCHW 1.2x faster for d8-parallel; lk 7,
      channels_last by default, 1.4x faster so.)
    - `threads` (torch's intra-op threads it ran with: `threads`, else the current count), `device`
      (`device_name`) and `precision` (resolved).

    The network is built here (its seed's weights: the global RNG is left as it was) and thrown away; inputs come
    from a generator of their own. Torch's thread count is restored afterwards.
    """
    from depthlab.train.engine import use_channels_last

    if steps < 1 or min(repeats) < 1 or warmup < 0:
        raise ValueError(f"measure: steps ({steps}) and repeats {tuple(repeats)} must be at least 1, warmup "
                         f"({warmup}) at least 0")
    device = torch.device(device)
    precision = precisions.resolve(precision, device)
    threads = int(threads or torch.get_num_threads())
    with intra_op_threads(threads):
        net = initial_network(config, dataset)
        spec = net.spec
        net.channels_last = use_channels_last(device, spec, precision, layout)  # as the engine trains it
        net = net.to(device).train()
        fused = fuse_for_inference(net)  # an eval-mode copy, BN folded and kernels merged
        inference = precisions.for_inference(precision, device)
        fused.channels_last = use_channels_last(device, spec, inference)

        g = torch.Generator().manual_seed(0)
        shape = (spec.in_channels, spec.input_size, spec.input_size)
        x = torch.randn(config.batch_size, *shape, generator=g).to(device)
        y = torch.randint(spec.num_classes, (config.batch_size,), generator=g).to(device)
        step_times = _train_step_times(net, x, y, precision, device, steps, warmup)

        latency = {}
        for batch, count in zip(LATENCY_BATCHES, repeats):
            xb = torch.randn(batch, *shape, generator=g).to(device)
            latency[batch] = _median_ms(_forward_times(fused, xb, inference, device, count, warmup))
    return {
        "params": spec_params(spec, merged=True),
        "flops": count_flops(spec, merged=True),
        "train_samples_per_s": config.batch_size / max(statistics.median(step_times), 1e-12),
        "latency_b1_ms": latency[1],
        "latency_b256_ms": latency[256],
        "threads": threads,
        "device": device_name(device),
        "precision": precision,
        "latency_precision": inference,
        "channels_last": net.channels_last,
        "latency_channels_last": fused.channels_last,
    }


def costs(store, configs: Iterable[RunConfig], device: torch.device | str, precision: str, *,
          log: Callable[[str], None] | None = None, threads: int | None = None, dataset=None,
          layout: str = "auto", **measure_options) -> dict[str, dict]:
    """{config_id: cost} of each config (`measure`'s dict), read from `store` where it holds the config's
    `cost_key` and measured (then saved with `store.save_cost`) where it does not. Configs that share a key (that
    differ only in how they train: seed, lr, ...) are measured once. `log(message)` gets one line before a batch
    of measurements. `threads`: torch's intra-op threads to measure with (the current count by default);
    `dataset`: a `depthlab.data.Dataset`, or a function config -> Dataset, for the crops that need the training
    data (see `initial_network`); `layout`, the training layout the throughput is measured in; `measure_options`
    (steps, warmup, repeats) go to `measure`."""
    device = torch.device(device)
    precision = precisions.resolve(precision, device)
    threads = int(threads or torch.get_num_threads())
    keyed = [(config_id(c.to_dict()), cost_key(c, device, precision, threads, layout), c) for c in configs]
    found: dict[str, dict] = {}
    missing: dict[str, RunConfig] = {}  # key -> the first config with it
    for _, key, config in keyed:
        if key in found or key in missing:
            continue
        stored = store.cost(key)
        if stored is None:
            missing[key] = config
        else:
            found[key] = stored
    if missing and log is not None:
        log(f"cost: measuring {len(missing)} network{'s' * (len(missing) != 1)} on {device_name(device)} "
            f"({precision}, {threads} thread{'s' * (threads != 1)}); {len(found)} from the store")
    for key, config in missing.items():
        data = dataset(config) if callable(dataset) else dataset
        cost = measure(config, device, precision, threads=threads, dataset=data, layout=layout, **measure_options)
        store.save_cost(key, cost)
        found[key] = cost
    return {cid: found[key] for cid, key, _ in keyed}
