"""Batches made on the device, for a pack of M models at once.

Each model m has its own data order and augmentation, drawn from CPU generators seeded ONLY by
(seeds[m], epoch): model m sees exactly the same batches whether it trains alone or packed with others.
The random draws for an epoch are moved to the device once; gathering, padding, cropping and flipping are
vectorised tensor operations on the device (no Python loop over samples).
"""

from __future__ import annotations

from numbers import Integral
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from depthlab.errors import SpecError

# Streams of random draws per (seed, epoch): each has its own generator, so that e.g. switching a model's
# flip on does not change its order or its shifts.
_ORDER, _SHIFT, _FLIP = 0, 1, 2


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with normalised = x * scale + shift, shaped C×1×1 for broadcasting."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    return 1 / (255 * std), -mean / std


def normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """(x/255 - mean)/std per channel (the channel is dim -3), as float32 on x's device."""
    scale, shift = _stats(mean, std, x_uint8.device)
    return x_uint8.to(torch.float32) * scale + shift


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, mean, std) -> Iterator[tuple]:
    """Yield (normalised float B×C×H×W, labels B) in order, the last batch possibly smaller; no augmentation."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError("batch_size", batch_size, "an integer >= 1")
    scale, shift = _stats(mean, std, x.device)
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size].to(torch.float32) * scale + shift, y[start : start + batch_size]


def _per_model(value, m: int, field: str, kind: type) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * m
    if len(values) != m:
        raise SpecError(field, value, f"one {kind.__name__} or a list of {m} (one per seed)")
    for v in values:
        ok = isinstance(v, bool) if kind is bool else (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        if not ok:
            raise SpecError(field, value, "True/False per model" if kind is bool else "integers >= 0 (pixels)")
    return values


class DeviceBatches:
    """Training batches for M models: `epoch(e)` yields (xb M×B×C×H×W float32, yb M×B int64, idx M×B int64)."""

    def __init__(self, x, y, *, batch_size, seeds, mean, std, translate=0, flip=False, drop_last=True):
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise SpecError("x", f"{x.dtype}{tuple(x.shape)}", "uint8 N×C×H×W")
        if y.shape != (len(x),) or y.device != x.device:
            raise SpecError("y", f"{tuple(y.shape)} on {y.device}", f"({len(x)},) labels on {x.device}, one per image")
        seeds = [seeds] if isinstance(seeds, Integral) else list(seeds)
        if not seeds or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise SpecError("seeds", seeds, "a non-empty list of integers >= 0, one per model")
        self.seeds = [int(s) for s in seeds]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise SpecError("batch_size", batch_size, "an integer >= 1")
        if drop_last and batch_size > len(x):
            raise SpecError("batch_size", batch_size, f"at most {len(x)} (the number of examples) with drop_last")
        m = len(self.seeds)
        self.translate = _per_model(translate, m, "translate", int)
        self.flip = _per_model(flip, m, "flip", bool)
        h, w = x.shape[2:]
        if max(self.translate) >= min(h, w):
            raise SpecError("translate", translate, f"fewer pixels than the image side ({min(h, w)})")
        self.x, self.y = x, y.to(torch.int64)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.scale, self.shift = _stats(mean, std, x.device)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _draws(self, epoch: int):
        """Per-epoch random draws for every model, each from its own (seed, epoch) generators."""
        n = len(self.x)
        pad = max(self.translate)
        order, offsets, flips = [], [], []
        for seed, t, fl in zip(self.seeds, self.translate, self.flip):
            order.append(torch.randperm(n, generator=_generator(seed, epoch, _ORDER)))
            # Crop offset into the image padded by `pad`: pad - t + [0, 2t], i.e. a shift of -t..t pixels.
            shift = torch.zeros(n, 2, dtype=torch.int64)
            if t:
                shift = torch.randint(0, 2 * t + 1, (n, 2), generator=_generator(seed, epoch, _SHIFT))
            offsets.append(pad - t + shift)
            flip = torch.zeros(n, dtype=torch.bool)
            if fl:
                flip = torch.rand(n, generator=_generator(seed, epoch, _FLIP)) < 0.5
            flips.append(flip)
        device = self.x.device
        return torch.stack(order).to(device), torch.stack(offsets).to(device), torch.stack(flips).to(device), pad

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order, offsets, flips, pad = self._draws(epoch)
        augment = pad > 0 or any(self.flip)
        h, w = self.x.shape[2:]
        dev = self.x.device
        rows_base, cols_base = torch.arange(h, device=dev), torch.arange(w, device=dev)
        m_idx = torch.arange(len(self.seeds), device=dev)[:, None, None, None, None]
        c_idx = torch.arange(self.x.shape[1], device=dev)[None, None, :, None, None]
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[:, sl]  # M×B
            xb = self.x[idx]  # M×B×C×H×W uint8, gathered on the device
            if augment:
                # One gather does translate and flip: output pixel (i, j) reads padded pixel
                # (oy + i, ox + j), or (oy + i, ox + W-1-j) when flipped; zero padding is black.
                if pad:
                    xb = F.pad(xb, (pad, pad, pad, pad))
                off, fl = offsets[:, sl], flips[:, sl]
                rows = off[..., 0, None] + rows_base  # M×B×H
                cols = off[..., 1, None] + torch.where(fl[..., None], cols_base.flip(0), cols_base)  # M×B×W
                b_idx = torch.arange(idx.shape[1], device=dev)[None, :, None, None, None]
                xb = xb[m_idx, b_idx, c_idx, rows[:, :, None, :, None], cols[:, :, None, None, :]]
            yield xb.to(torch.float32) * self.scale + self.shift, self.y[idx], idx


def make_batches(dataset, *, batch_size, seeds, translate=0, flip=False, drop_last=True) -> DeviceBatches:
    """DeviceBatches over a Dataset's train split with its normalisation; refuses flip where it would change
    the class (dataset.flip_ok False, e.g. digits)."""
    batches = DeviceBatches(
        dataset.train_x,
        dataset.train_y,
        batch_size=batch_size,
        seeds=seeds,
        mean=dataset.mean,
        std=dataset.std,
        translate=translate,
        flip=flip,
        drop_last=drop_last,
    )
    if any(batches.flip) and not dataset.flip_ok:
        raise SpecError("flip", flip, f"False for {dataset.name} (a mirrored image is not the same class)")
    return batches
