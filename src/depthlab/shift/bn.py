"""BatchNorm with test-time statistics: every BN layer normalises with a convex mix of its source (training)
statistics and the statistics of the batch it is given.

    μ = (1 - α)·μ_source + α·μ_batch,   σ² = (1 - α)·σ²_source + α·σ²_batch        (per layer, per channel)

This is α-BN ("Test-time Batch Statistics Calibration for Covariate Shift", You, Li & Zhao, arXiv 2110.04065),
with α the weight on the test batch: α = 0 is the source model in eval mode (exactly: the batch statistics are
not even computed), α = 1 is BN on the test batch's statistics ("norm": Schneider et al. 2020, Nado et al. 2020;
TENT's starting point). The batch variance is over N×H×W values per channel, so a batch of one image works; it
is the unbiased one by default (n/(n-1)), and with `unbiased=False` α = 1 is exactly what a BN layer computes in
train mode. Statistics flow into the gradient as in train-mode BN (TENT backpropagates through them).

With `per_example` set, each example of a batch is normalised with its own statistics (over its H×W values), as
if it were a batch of one: a stream of batches of one computed many examples at a time (`depthlab.shift.stream`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class MixedBatchNorm(nn.Module):
    """A BatchNorm2d's affine parameters and source statistics (copies), normalising with the α-mix above."""

    def __init__(self, bn: nn.BatchNorm2d, alpha: float, unbiased: bool = True):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("a BatchNorm without running statistics has no source statistics to mix")
        self.alpha, self.unbiased, self.eps = float(alpha), bool(unbiased), bn.eps
        self.per_example = False  # each example of a batch with its own statistics, as a batch of one
        self.weight = nn.Parameter(bn.weight.detach().clone()) if bn.weight is not None else None
        self.bias = nn.Parameter(bn.bias.detach().clone()) if bn.bias is not None else None
        self.register_buffer("source_mean", bn.running_mean.detach().clone())
        self.register_buffer("source_var", bn.running_var.detach().clone())

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (mean, variance) this layer normalises `x` with: per channel, or with `per_example` per example and
        channel (N×C)."""
        if self.alpha == 0.0:
            return self.source_mean, self.source_var
        dims = (2, 3) if self.per_example else (0, 2, 3)
        values = x.shape[2] * x.shape[3] * (1 if self.per_example else x.shape[0])
        mean = x.mean(dim=dims)
        # one value per channel has no unbiased variance: fall back to the biased one (0)
        var = x.var(dim=dims, correction=1 if self.unbiased and values > 1 else 0)
        if self.alpha == 1.0:
            return mean, var
        a = self.alpha
        return (1 - a) * self.source_mean.to(x.dtype) + a * mean, (1 - a) * self.source_var.to(x.dtype) + a * var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:  # the very computation of a source model's eval-mode BN
            return F.batch_norm(x, self.source_mean, self.source_var, self.weight, self.bias, False, 0.0, self.eps)
        # written out (eval-mode batch_norm takes no gradient through its statistics; TENT needs one)
        mean, var = self.statistics(x)
        shape = (1, -1, 1, 1)
        each = (*mean.shape, 1, 1) if mean.dim() == 2 else shape  # per example and channel, or per channel
        y = (x - mean.view(each)) * torch.rsqrt(var.view(each) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.source_mean.numel()}, alpha={self.alpha:g}, unbiased={self.unbiased}, eps={self.eps:g}"


def with_mixed_bn(model: nn.Module, alpha: float, unbiased: bool = True) -> nn.Module:
    """A deep copy of `model` whose every BatchNorm2d is a `MixedBatchNorm` (the model itself is untouched)."""
    copied = copy.deepcopy(model)
    swaps = [(parent, name, child) for parent in copied.modules() for name, child in parent.named_children()
             if isinstance(child, nn.BatchNorm2d)]
    for parent, name, child in swaps:
        setattr(parent, name, MixedBatchNorm(child, alpha, unbiased))
    return copied.eval()


def mixed_layers(model: nn.Module) -> list[MixedBatchNorm]:
    return [m for m in model.modules() if isinstance(m, MixedBatchNorm)]
