"""Datasets as uint8 tensors on the device, and batches made there.

    ds = load("mnist", val_split=5000, device="cuda")
    batches = make_batches(ds, batch_size=128, seeds=[0, 1, 2])   # three models, three orders
    for xb, yb, idx in batches.epoch(0): ...                      # xb: 3×128×1×28×28 float32

Sources resolve offline first (a verified cache, or the copy an installed package ships), then download.

The names below are imported on first use (PEP 562), so that importing a light submodule such as
`depthlab.data.download` or `depthlab.data.registry` (every dataset's facts) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each public name and the submodule that defines it.
_EXPORTS = {
    "DeviceBatches": "batches",
    "eval_batches": "batches",
    "make_batches": "batches",
    "normalise": "batches",
    "Dataset": "datasets",
    "available": "registry",
    "channel_stats": "datasets",
    "check": "datasets",
    "loader_options": "datasets",
    "load": "datasets",
    "locate": "datasets",
    "split_indices": "datasets",
    "default_data_dir": "download",
    "entry": "registry",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from depthlab.data.batches import DeviceBatches, eval_batches, make_batches, normalise
    from depthlab.data.datasets import (
        Dataset,
        channel_stats,
        check,
        loader_options,
        load,
        locate,
        split_indices,
    )
    from depthlab.data.download import default_data_dir
    from depthlab.data.registry import available, entry


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # once only
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
