"""Grouping runs into packs: configs with one pack key (network shape and training loop) train together."""

from __future__ import annotations

import torch

from depthlab.sweep.config import DATASET_SHAPES, RunConfig
from depthlab.sweep.engine import bytes_per_model

CPU_MAX_PACK = 8         # on a CPU a pack saves little; small packs keep progress and memory steady
GPU_MEMORY_FRACTION = 0.6


def max_pack_size(config: RunConfig, device: torch.device, limit: int | None = None) -> int:
    """How many models of `config`'s shape fit in one pack on `device`, from a memory estimate."""
    channels, size, _, _ = DATASET_SHAPES[config.dataset]
    if device.type == "meta":  # planned for a device elsewhere (e.g. Ray workers): only the caller's limit
        return max(1, limit or CPU_MAX_PACK)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fit = int(free * GPU_MEMORY_FRACTION // bytes_per_model(config, channels, size, amp=True))
        size_cap = 256
    else:
        fit, size_cap = CPU_MAX_PACK, CPU_MAX_PACK
    return max(1, min(fit, size_cap, limit or size_cap))


def make_packs(configs: list[RunConfig], device: torch.device | str = "cpu",
               max_models: int | None = None) -> list[list[RunConfig]]:
    """Packs in the order their first run appears; each at most as large as fits on `device`."""
    device = torch.device(device)
    groups: dict[tuple, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(config.pack_key(), []).append(config)
    packs = []
    for members in groups.values():
        size = max_pack_size(members[0], device, max_models)
        packs.extend(members[i:i + size] for i in range(0, len(members), size))
    return packs
