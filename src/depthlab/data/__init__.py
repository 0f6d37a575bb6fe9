"""Datasets as uint8 tensors on the device, and batches made there.

    ds = load("mnist", val_split=5000, device="cuda")
    batches = make_batches(ds, batch_size=128, seeds=[0, 1, 2])   # three models, three orders
    for xb, yb, idx in batches.epoch(0): ...                      # xb: 3×128×1×28×28 float32

Sources resolve offline first (a verified cache, or the copy an installed package ships), then download.
"""

from depthlab.data.batches import DeviceBatches, eval_batches, make_batches, normalise
from depthlab.data.datasets import (
    Dataset,
    available,
    channel_stats,
    check,
    loader_options,
    load,
    locate,
    split_indices,
)
from depthlab.data.download import default_data_dir

__all__ = [
    "Dataset",
    "DeviceBatches",
    "available",
    "channel_stats",
    "check",
    "default_data_dir",
    "eval_batches",
    "load",
    "loader_options",
    "locate",
    "make_batches",
    "normalise",
    "split_indices",
]
