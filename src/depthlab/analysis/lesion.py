"""Lesions (Veit et al., 2016): delete one block of a trained network at test time and measure the damage.

Deleting block i of a residual network leaves x_i = x_{i-1}: the identity path carries the signal on, and of
the 2^n paths of the unravelled view only those through block i (half of them) are lost; the others still see
the inputs they were trained with, so the network degrades smoothly. A plain network x_i = F_i(x_{i-1}) has a single path; the same deletion (the input of block i
passed on unchanged, Veit et al.'s protocol) feeds every later block an input it was never trained on.

A residual lesion zeroes the branch's last convolution (and its bias) on the model itself, inside a context
manager that restores the weights: the branch then adds exactly zero, for a sequential block or for one branch
of a parallel layer alike.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from depthlab.analysis.trainer import evaluate, progress_bar
from depthlab.errors import DepthlabError
from depthlab.models import ResidualNet, block_weights, locate


@contextlib.contextmanager
def lesioned(model: ResidualNet, block: int):
    """Inside the block, `model` computes as if block `block` were deleted (its branch adds zero: for a
    sequential model x_i = x_{i-1}). The weights are restored on exit, even on an error."""
    layer, branch = locate(model, block)
    views = block_weights(layer, branch)
    keys = [k for k in ("conv2.weight", "bias2") if k in views]
    saved = {k: views[k].detach().clone() for k in keys}
    with torch.no_grad():
        for k in keys:
            views[k].zero_()
    try:
        yield model
    finally:
        with torch.no_grad():
            for k in keys:
                views[k].copy_(saved[k])


class PlainNet(nn.Module):
    """The sequential stack without the identity: x_i = F_i(x_{i-1}) (with F_i's scale s_i), same stem, same
    blocks, same head as `net`. Blocks listed in `skip` are deleted: their input passes on unchanged.

    Wraps (shares) the parameters of `net`, so `PlainNet(build(spec))` is a plain network to train."""

    def __init__(self, net: ResidualNet):
        super().__init__()
        if net.models != 1 or net.spec.branches_per_stage != 1:
            raise DepthlabError("a plain network is a sequential stack of one model "
                                f"(got topology={net.spec.topology!r}, models={net.models})")
        self.net = net
        self.skip: set[int] = set()

    @property
    def spec(self):
        return self.net.spec

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.stem(x)
        for i, layer in enumerate(self.net.layers):
            if i not in self.skip:
                x = layer.residual(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.features(x))[0]


@contextlib.contextmanager
def plain_lesioned(model: PlainNet, block: int):
    """Inside the block, `model` skips block `block` (its input passes on unchanged)."""
    if not 0 <= block < len(model.net.layers):
        raise IndexError(f"block {block} out of range for a network of {len(model.net.layers)} blocks")
    before = set(model.skip)
    model.skip.add(block)
    try:
        yield model
    finally:
        model.skip = before


def lesion_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, blocks=None,
                 progress: bool | None = None) -> dict:
    """Accuracy and loss of `model` intact and with each block in `blocks` (default: all) deleted in turn.

    `model` is a ResidualNet (any topology: block i is branch i's place in it) or a PlainNet. Returns
    {"intact": {accuracy, loss}, "lesions": [{block, accuracy, loss, accuracy_drop, loss_increase}],
    "mean_accuracy_drop", "max_accuracy_drop"}."""
    plain = isinstance(model, PlainNet)
    n = model.spec.blocks
    blocks = range(n) if blocks is None else blocks
    intact = evaluate(model, x, y)
    rows = []
    for i in progress_bar(list(blocks), desc="lesion", enabled=progress):
        with (plain_lesioned(model, i) if plain else lesioned(model, i)):
            r = evaluate(model, x, y)
        rows.append({"block": i, **r, "accuracy_drop": intact["accuracy"] - r["accuracy"],
                     "loss_increase": r["loss"] - intact["loss"]})
    drops = [r["accuracy_drop"] for r in rows]
    return {"network": "plain" if plain else "residual", "intact": intact, "lesions": rows,
            "mean_accuracy_drop": sum(drops) / len(drops) if drops else 0.0,
            "max_accuracy_drop": max(drops) if drops else 0.0}
