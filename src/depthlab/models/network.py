"""`ResidualNet`: stem → residual layers wired by the topology → head, for a pack of M models (M = 1: one model).

Networks are built with `depthlab.models.factory.build` (initialised as the deep stack, then rewired), so
that every topology of one seed holds the same blocks; this module only defines the module."""

from __future__ import annotations

import torch
from torch import nn

from depthlab.models.branches import tensor_groups
from depthlab.models.layers import PackedHead, ResidualLayer
from depthlab.models.spec import ModelSpec


class ResidualNet(nn.Module):
    """Input (B, C_in, H, W) → logits (B, classes) for one model; (M, B, C_in, H, W) → (M, B, classes) for a pack."""

    def __init__(self, spec: ModelSpec, models: int = 1):
        super().__init__()
        self.spec, self.models = spec, models
        self.channels_last = False  # run activations in NHWC (faster convolutions on CUDA tensor cores)
        c = spec.width
        self.stem = nn.Conv2d(models * spec.in_channels, models * c, 3, stride=spec.stem_stride, padding=1,
                              groups=models, bias=spec.norm == "none")
        self.layers = nn.ModuleList(
            ResidualLayer(models=models, width=c, branches=spec.branches_per_stage, hidden=spec.layer_hidden(stage),
                          kernel=spec.kernel, norm=spec.norm, act=spec.act, scale=spec.scale,
                          learnable=spec.learnable_scale, alpha_init=spec.alpha_init, skip=spec.skip,
                          branch=spec.branch, reparam=spec.reparam)
            for stage in range(spec.stages)
        )
        self.head = PackedHead(models=models, width=c, classes=spec.num_classes, kind=spec.head,
                               feature_size=spec.feature_size, norm=spec.norm, act=spec.act)
        if spec.init == "fixup":
            fixup_init(self)

    def parameter_groups(self):
        """(name, parameter, decays, prunable) of every parameter, in `named_parameters` order: the model declares
        what weight decay and pruning act on, as nanoGPT's model declares its optimizer groups. The stem's and the
        classifier's weights, the last conv's weight of every layer and the front's tensors its branch type names
        (`depthlab.models.branches.tensor_groups`); never a norm, a bias or a branch scale."""
        for name, p in self.named_parameters():
            if name.startswith("layers."):
                _, index, key = name.split(".", 2)
                decays, prunable = tensor_groups(self.layers[int(index)], key)
            else:
                decays = prunable = name in ("stem.weight", "head.weight")
            yield name, p, decays, prunable

    def to_packed_input(self, x: torch.Tensor) -> torch.Tensor:
        """(M, B, C, H, W) → (B, M·C, H, W)."""
        m, b, c, h, w = x.shape
        if m != self.models:
            raise ValueError(f"input holds {m} models' batches; this pack has {self.models}")
        return x.transpose(0, 1).reshape(b, m * c, h, w)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last layer, in the packed layout (B, M·C, H', W')."""
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 4
        if single:
            if self.models != 1:
                raise ValueError(f"a pack of {self.models} models takes (M, B, C, H, W) input")
            x = x.unsqueeze(0)
        x = self.to_packed_input(x)
        if self.channels_last:
            # .to, not .contiguous: a tensor of one channel already counts as channels_last-contiguous, and
            # .contiguous would keep its NCHW strides (and so would every layer after it)
            x = x.to(memory_format=torch.channels_last)
        logits = self.head(self.features(x))
        return logits[0] if single else logits


def fixup_init(net: ResidualNet) -> None:
    """Fixup (Zhang et al., 2019): the branch's inner layers He-initialised and scaled down with depth (by its
    branch type), the last conv zero, the classifier zero, the per-block multiplier α at 1. Fixup's scalar biases
    are subsumed by the per-channel convolution biases that every layer carries when norm is none."""
    n = net.spec.blocks
    for layer in net.layers:
        layer.branch.fixup(layer, n)
        with torch.no_grad():
            nn.init.zeros_(layer.conv2.weight)
            if layer.bias2 is not None:
                nn.init.zeros_(layer.bias2)
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    if net.stem.bias is not None:
        nn.init.zeros_(net.stem.bias)
