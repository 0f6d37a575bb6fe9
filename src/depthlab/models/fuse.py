"""`fuse_for_inference`: fold eval-mode BatchNorm into the convolution before it.

conv → BN(eval) is one affine map per output channel, so conv1 absorbs it: W' = W·γ/σ, b' = (b - μ)·γ/σ + β.
The head's BN follows the residual sum rather than a conv, so it becomes a per-channel affine (`ChannelAffine`).
GroupNorm depends on the input and stays as it is.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from depthlab.models.layers import ChannelAffine
from depthlab.models.network import ResidualNet


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return inv, bn.bias - bn.running_mean * inv


@torch.no_grad()
def fuse_for_inference(model: ResidualNet) -> ResidualNet:
    """An eval-mode copy with every BatchNorm folded; its output equals `model.eval()`'s."""
    fused = copy.deepcopy(model).eval()
    for layer in fused.layers:
        if isinstance(layer.norm, nn.BatchNorm2d):
            scale, shift = _bn_affine(layer.norm)
            conv = layer.conv1
            new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                            groups=conv.groups, bias=True).to(conv.weight)
            new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            new.bias.copy_(bias * scale + shift)
            layer.conv1, layer.norm = new, nn.Identity()
    if isinstance(fused.head.norm, nn.BatchNorm2d):
        fused.head.norm = ChannelAffine(*_bn_affine(fused.head.norm))
    return fused
