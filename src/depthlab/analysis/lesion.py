"""Lesions (Veit et al., 2016): delete one block of a trained network at test time and measure the damage.

Deleting block i of a residual network leaves x_i = x_{i-1}: the identity path carries the signal on, and of
the 2^n paths of the unravelled view only those through block i (half of them) are lost; the others still see
the inputs they were trained with, so the network degrades smoothly. A plain network (`skip=False`,
x_i = F_i(x_{i-1})) has a single path; the same deletion (the input of block i passed on unchanged, Veit et
al.'s protocol) feeds every later block an input it was never trained on.

Both networks are runs trained by the engine (`depthlab lesion` trains the plain control with the residual
run's own recipe and config, `skip` aside); this module only measures them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from depthlab.measure import scores
from depthlab.models import ResidualNet, block_weights, locate
from depthlab.run.progress import progress_bar


@contextlib.contextmanager
def lesioned(model: ResidualNet, block: int):
    """Inside the block, `model` computes as if block `block` were deleted; restored on exit, even on an error.

    A residual branch, or one branch of a plain parallel layer, is deleted by zeroing its last convolution (and
    its bias): it then adds exactly zero. A plain sequential block is bypassed: its input passes on unchanged."""
    layer, branch = locate(model, block)
    if not layer.skip and layer.branches == 1:
        index = block // model.spec.branches_per_stage
        model.layers[index] = nn.Identity()
        try:
            yield model
        finally:
            model.layers[index] = layer
        return
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


def lesion_study(model: ResidualNet, x, y, mean, std, blocks=None, progress: bool | None = None,
                 precision: str = "fp32") -> dict:
    """Accuracy and loss of a trained one-model network on (x, y) (uint8 images, the training set's mean and
    std) intact and with each block in `blocks` (default: all) deleted in turn, evaluated at `precision`.

    Returns {"network": "residual" | "plain", "intact": {accuracy, loss}, "lesions": [{block, accuracy, loss,
    accuracy_drop, loss_increase}], "mean_accuracy_drop", "max_accuracy_drop"}."""
    blocks = range(model.spec.blocks) if blocks is None else blocks
    intact = scores(model, x, y, mean, std, precision=precision)
    rows = []
    for i in progress_bar(list(blocks), desc="lesion", enabled=progress):
        with lesioned(model, i):
            r = scores(model, x, y, mean, std, precision=precision)
        rows.append({"block": i, **r, "accuracy_drop": intact["accuracy"] - r["accuracy"],
                     "loss_increase": r["loss"] - intact["loss"]})
    drops = [r["accuracy_drop"] for r in rows]
    return {"network": "residual" if model.spec.skip else "plain", "intact": intact, "lesions": rows,
            "mean_accuracy_drop": sum(drops) / len(drops) if drops else 0.0,
            "max_accuracy_drop": max(drops) if drops else 0.0}
