"""Grouping runs into packs: configs with one pack key (network shape and training loop) train together.

How many models go into one pack depends on the device:

- on a GPU, as many as fit in memory (`GPU_MEMORY_FRACTION` of the free memory, by `bytes_per_model`): small
  networks leave a GPU idle, and packing is what fills it;
- on a CPU, what is measured to be fastest. A CPU is often compute-bound already with one small model, so
  whether packing pays depends on the shape, the precision and the machine (`bench/cpu_throughput.py`; on two
  AVX-512 cores with the demo's shapes, in two runs: in bf16, packs of 4 trained 0-25% faster than one model,
  packs of 8 between 25% faster and 15% slower; in float32, packs of 4 lost up to 40% on the 4-block shapes).
  Before the first pack of a shape trains, `calibrate` times a few training steps of packs of 1, 2, 4, ... models
  (up to `CPU_MAX_PACK` or the caller's limit; copies of the shape, whatever the number of runs waiting) and
  keeps the largest size within `CALIBRATION_TOLERANCE` of the fastest (fewer, larger packs also share their
  set-up and evaluation). The measurement is cached in the store (`Store.pack_size`), keyed by what sets a
  step's speed (shape, batch, optimizer, precision, device, threads, software), so a shape is measured once per
  machine and store. A shape whose runs are too little work to repay the measurement (less than
  `CALIBRATION_PAYBACK` times its training samples) takes `CPU_DEFAULT_PACK` of its precision, never far from the
  best in the benchmark (4 in bf16, 2 in float32). When the device is planned for elsewhere (Ray workers), the
  cap is used.

A shape's runs then go into the fewest packs of that size, as even as can be (`split`: 5 runs at 4 make 3 + 2),
and a sweep of one shape into at least one pack per worker thread (`spread`, depthlab.run.workers). The
calibration is keyed by the intra-op threads of one worker, the threads a pack trains on.

Pack size changes only the speed: each model of a pack trains as it would alone (tests/sweep/test_engine.py).
"""

from __future__ import annotations

import os

import torch

from depthlab.data import registry
from depthlab.records import canonical_json
from depthlab.spec.config import RunConfig
from depthlab.train.engine import bytes_per_model, describe_device, layout_key, training_throughput

CPU_MAX_PACK = 8         # the largest pack a CPU is calibrated for: beyond it progress and memory get lumpy
CPU_DEFAULT_PACK = {"fp32": 2, "bf16": 4}  # a CPU's pack size where none was measured (bench/cpu_throughput.py)
GPU_MEMORY_FRACTION = 0.6
CALIBRATION_SIZES = (1, 2, 4, 8)
CALIBRATION_TOLERANCE = 0.05  # a larger pack within 5% of the fastest is preferred
CALIBRATION_GIVE_UP = 0.15    # a size 15% slower than the fastest ends the search: larger ones will not win
CALIBRATION_WARMUP = 5        # untimed steps: oneDNN builds its kernels for each new shape on the first ones
CALIBRATION_STEPS = 6
CALIBRATION_PAYBACK = 20      # measure only shapes whose runs train 20x the samples the measurement costs
# what does not change the speed of a training step: runs differing only in these share a calibration
SPEED_NEUTRAL = ("epochs", "schedule", "train_subset", "val_split", "test_subset")


def max_pack_size(config: RunConfig, device: torch.device, limit: int | None = None,
                  precision: str = "fp32") -> int:
    """How many models of `config`'s shape may share one pack on `device` (memory in `precision` on a GPU, the
    cap on a CPU)."""
    data = registry.entry(config.dataset)
    if device.type == "meta":  # planned for a device elsewhere (e.g. Ray workers): only the caller's limit
        return max(1, limit or CPU_MAX_PACK)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fit = int(free * GPU_MEMORY_FRACTION // bytes_per_model(config, data.channels, data.size, precision))
        size_cap = 256
    else:
        fit, size_cap = CPU_MAX_PACK, CPU_MAX_PACK
    return max(1, min(fit, size_cap, limit or size_cap))


def groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """The configs by pack key, in the order each key first appears."""
    found: dict[tuple, list[RunConfig]] = {}
    for config in configs:
        found.setdefault(config.pack_key(), []).append(config)
    return list(found.values())


def split(members: list[RunConfig], size: int, at_least: int = 1) -> list[list[RunConfig]]:
    """`members` in the fewest packs of at most `size` (but at least `at_least` packs, as far as there are
    members), as even as can be: 5 runs at size 4 make 3 + 2, not 4 + 1, whose lone model trains slowest."""
    if not members:
        return []
    count = min(len(members), max(-(-len(members) // size), at_least))
    base, extra = divmod(len(members), count)
    packs, start = [], 0
    for i in range(count):
        end = start + base + (i < extra)
        packs.append(members[start:end])
        start = end
    return packs


def make_packs(configs: list[RunConfig], device: torch.device | str = "cpu", max_models: int | None = None,
               sizes: dict | None = None, precision: str = "fp32", defaults: bool = False,
               workers: int = 1) -> list[list[RunConfig]]:
    """Packs in the order their first run appears; each at most as large as fits on `device` in `precision` (and
    `max_models`): `sizes[pack_key]` where one was measured, else with `defaults` (what `depthlab run` does)
    `default_pack_size`, else the largest that fits. With `workers` training packs side by side, runs of a
    single shape are spread over at least that many packs (see `spread`)."""
    device = torch.device(device)
    packs = []
    shapes = groups(configs)
    for members in shapes:
        cap = max_pack_size(members[0], device, max_models, precision)
        measured = (sizes or {}).get(members[0].pack_key())
        if measured:
            size = min(measured, cap)
        else:
            size = default_pack_size(device, precision, cap) if defaults else cap
        packs.extend(split(members, size, spread(shapes, workers)))
    return packs


def spread(shapes: list[list[RunConfig]], workers: int) -> int:
    """The fewest packs a shape's runs go into when `workers` train side by side: one per worker when there is
    only one shape (else one pack would leave the others idle), one otherwise."""
    return workers if len(shapes) == 1 else 1


def default_pack_size(device: torch.device, precision: str, cap: int) -> int:
    """The pack size where none was measured: on a CPU CPU_DEFAULT_PACK of the precision, elsewhere the cap."""
    return min(CPU_DEFAULT_PACK[precision], cap) if device.type == "cpu" else cap


def calibration_key(config: RunConfig, device: torch.device, precision: str, threads: int | None = None,
                    layout: str = "auto") -> str:
    """What a calibrated pack size depends on: the shape and training step, the precision and the activations'
    layout (where it is not the default's: `engine.layout_key`), and the machine with the intra-op threads a pack
    trains on (`threads`, default torch's now)."""
    step = [list(kv) for kv in config.pack_key() if kv[0] not in SPEED_NEUTRAL]
    threads = torch.get_num_threads() if threads is None else threads
    return canonical_json({"pack_key": step, "precision": precision, **layout_key(device, config, precision, layout),
                           "device": describe_device(device), "threads": threads,
                           "torch": torch.__version__, "cpus": os.cpu_count()})


def calibrate(config: RunConfig, dataset, device: torch.device, precision: str, cap: int,
              interrupt=None, layout: str = "auto") -> tuple[int, dict]:
    """The pack size of `config`'s shape that trains fastest on `device`, and {size: model-samples/s} of the
    sizes tried. Sizes double from 1 up to `cap`; the search stops once a size is clearly slower than the
    fastest so far (a larger pack will not win either). `interrupt()` is called before every step."""
    rates: dict[int, float] = {}
    for size in calibration_sizes(cap):
        # copies of the first config with other seeds: only the shape and the loop matter to the speed
        copies = [config.replace(seed=config.seed + i, init_from=None) for i in range(size)]
        rates[size] = training_throughput(copies, dataset, device=device, precision=precision, layout=layout,
                                          steps=CALIBRATION_STEPS, warmup=CALIBRATION_WARMUP, interrupt=interrupt)
        if rates[size] < (1 - CALIBRATION_GIVE_UP) * max(rates.values()):
            break
    best = max(rates.values())
    return max(s for s, r in rates.items() if r >= (1 - CALIBRATION_TOLERANCE) * best), rates


def calibration_sizes(cap: int) -> list[int]:
    return [s for s in CALIBRATION_SIZES if s < cap] + [cap]


def worth_calibrating(members: list[RunConfig], train_examples: int, cap: int) -> bool:
    """Whether the runs of a shape train enough samples to repay measuring their pack size."""
    work = sum(c.epochs for c in members) * train_examples
    cost = (CALIBRATION_WARMUP + CALIBRATION_STEPS) * members[0].batch_size * sum(calibration_sizes(cap))
    return work >= CALIBRATION_PAYBACK * cost
