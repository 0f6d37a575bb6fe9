"""`fuse_for_inference`: the inference form of a network, equal to it in eval mode.

Each branch type folds its own layers (`depthlab.models.branches`): conv → BN(eval) is one affine map per output
channel, so the conv absorbs it (W' = W·γ/σ, b' = (b − μ)·γ/σ + β), and a large-kernel branch's Dilated Reparam
Block becomes ONE K×K depthwise conv (its dilated kernels made dense and summed). The head's BN follows the
residual sum rather than a conv, so it becomes a per-channel affine (`ChannelAffine`). GroupNorm depends on the
input and stays as it is. In train mode the two forms differ: BatchNorm then uses batch statistics.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from depthlab.models.branches import bn_affine
from depthlab.models.layers import ChannelAffine
from depthlab.models.network import ResidualNet


@torch.no_grad()
def fuse_for_inference(model: ResidualNet) -> ResidualNet:
    """An eval-mode copy with every BatchNorm folded and every re-param block merged; its output equals
    `model.eval()`'s."""
    fused = copy.deepcopy(model).eval()
    for layer in fused.layers:
        layer.branch.fuse(layer)
    if isinstance(fused.head.norm, nn.BatchNorm2d):
        fused.head.norm = ChannelAffine(*bn_affine(fused.head.norm))
    return fused.eval()
