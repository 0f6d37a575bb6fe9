"""The building blocks, written once for a pack of M models held side by side (branch types: `branches`).

Layout: a pack's activations are (B, M·C, H, W): model m owns channels [m·C, (m+1)·C) and sees its own B samples.
Convolutions are grouped by model (groups=M), BatchNorm's per-channel statistics are therefore per model, and
every parameter has the model index as its leading (outermost) block, so `tensor.view(M, -1)[m]` is model m.
A pack of one is the ordinary model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from depthlab.models.branches import branch_type, gn_group_size, last_conv_bound, make_act, make_norm


class ResidualLayer(nn.Module):
    """x + Σ_b s_b·F_b(x) (without the skip: Σ_b s_b·F_b(x)) for `branches` branches of one branch type, as ONE
    broad layer.

    A branch ends in a linear convolution from `hidden` channels back to the stream width C; the branch type
    (`depthlab.models.branches`) builds everything before it, the *front*, mapping the stream to branches·hidden
    channels ordered [model][branch][hidden], so branch b of model m is a contiguous slice (see
    `depthlab.models.rewire`). The sum of the branches' last convolutions is one convolution `conv2` from
    branches·hidden back to C (a sum over branches is a convolution over the concatenated channels). branches = 1
    is a block of the deep stack.

    The branch scale s_b = λ·α_b: λ is fixed per model (a buffer, so a pack may mix λ values); α_b exists when the
    scale is learnable (ReZero/SkipInit, initialised 0) or under Fixup (initialised 1). When α exists it is
    applied to the hidden channels before the last conv, which is exact because that conv is linear.
    """

    def __init__(self, *, models: int, width: int, branches: int, hidden, kernel: int, norm: str, act: str,
                 scale: float, learnable: bool, alpha_init: float = 0.0, skip: bool = True, branch: str = "conv",
                 reparam: str = "none"):
        super().__init__()
        # hidden: one width per branch (an int: all alike); pruning at initialisation may make them differ
        hidden = (hidden,) * branches if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if len(hidden) != branches:
            raise ValueError(f"hidden: {len(hidden)} widths for {branches} branches")
        self.models, self.width, self.branches, self.hidden, self.kernel = models, width, branches, hidden, kernel
        self.skip = skip  # False: the plain control, Σ_b s_b·F_b(x) without the identity
        self.branch = branch_type(branch)
        self.branch.build(self, norm=norm, act=act, reparam=reparam)
        last = self.branch.last_kernel(kernel)
        inner = models * sum(hidden)
        bias = norm == "none"
        self.conv2 = nn.Conv2d(inner, models * width, last, padding=last // 2, groups=models, bias=False)
        # The last conv's bias is kept per branch so that every topology has the same parameters.
        self.bias2 = nn.Parameter(torch.zeros(models, branches, width)) if bias else None
        # nn.Conv2d's default initialisation, U(±1/√fan-in), with the fan-in of ONE branch: the broad conv's own
        # fan-in (Σ hidden·k²) would start a parallel network's branches √n smaller than the deep ones.
        weight = self.conv2.weight.view(models, width, sum(hidden), last, last)
        with torch.no_grad():
            start = 0
            for b, h in enumerate(hidden):
                bound = last_conv_bound(h, last)
                weight[:, :, start:start + h].uniform_(-bound, bound)
                if bias:
                    self.bias2[:, b].uniform_(-bound, bound)
                start += h
        self.register_buffer("scale", torch.full((models,), float(scale)))
        self.alpha = nn.Parameter(torch.full((models, branches), float(alpha_init))) if learnable else None

    def branch_scales(self) -> torch.Tensor:
        """s[m, b] = λ_m·α_mb (M × branches)."""
        s = self.scale[:, None].expand(self.models, self.branches)
        return s * self.alpha if self.alpha is not None else s

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_b s_b·F_b(x), without the skip."""
        h = self.branch.front(self, x)
        if self.alpha is not None:
            s = self.branch_scales()
            widths = torch.tensor(self.hidden, device=s.device)
            h = h * s.repeat_interleave(widths, dim=1).reshape(1, -1, 1, 1).to(h.dtype)
            y = self.conv2(h)
            if self.bias2 is not None:
                y = y + (s[:, :, None] * self.bias2).sum(1).reshape(1, -1, 1, 1).to(y.dtype)
            return y
        y = self.conv2(h)
        if self.bias2 is not None:
            y = y + self.bias2.sum(1).reshape(1, -1, 1, 1).to(y.dtype)
        if self._unit_scale():  # y·1 is y exactly: spare a pass over the activations, forward and backward
            return y
        return y * self.scale.repeat_interleave(self.width).reshape(1, -1, 1, 1).to(y.dtype)

    def _unit_scale(self) -> bool:
        """Whether every model's λ is 1, read from the buffer once per change of it (the buffer object and its
        version counter: a load_state_dict, a move to another device), not once per step: on CUDA a read waits
        for the device. (A write through `.data` would go unseen: nothing here writes λ that way.) Under
        torch.compile the multiplication stays, as the check would break the graph."""
        if torch.compiler.is_compiling():
            return False
        seen = getattr(self, "_unit_seen", None)
        if seen is None or seen[0] is not self.scale or seen[1] != self.scale._version:
            self._unit, self._unit_seen = bool((self.scale == 1).all()), (self.scale, self.scale._version)
        return self._unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x) if self.skip else self.residual(x)


class ChannelAffine(nn.Module):
    """y = x·weight + bias per channel: what an eval-mode BatchNorm becomes when it cannot be folded further (its
    two vectors are parameters of the inference model, counted like the folded convolutions' biases)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x):
        return x * self.weight.reshape(1, -1, 1, 1).to(x.dtype) + self.bias.reshape(1, -1, 1, 1).to(x.dtype)


class PackedHead(nn.Module):
    """norm → act → (global average pool | flatten) → one linear classifier per model."""

    def __init__(self, *, models: int, width: int, classes: int, kind: str, feature_size: int, norm: str, act: str):
        super().__init__()
        self.models, self.kind = models, kind
        self.norm = make_norm(norm, models * width, gn_group_size(width))
        self.act = make_act(act)
        features = width if kind == "gap" else width * feature_size * feature_size
        bound = 1 / math.sqrt(features)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(models, classes, features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(models, classes).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(x))
        batch = x.shape[0]
        # channels_last activations are pooled or flattened through their NHWC view, so that the gradient comes back
        # channels_last too: an elementwise backward (ReLU, norm) whose gradient and saved activation differ in
        # layout takes a strided path on the CPU (ReLU's: ~2x slower for a pooling gradient, ~40x for a flattened
        # one), and the NCHW gradient of a plain flatten would reach every layer below
        nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if self.kind == "gap":
            pooled = x.permute(0, 2, 3, 1).mean(dim=(1, 2)) if nhwc else x.mean(dim=(2, 3))
            features = pooled.reshape(batch, self.models, -1)
        elif nhwc:  # positions then channels (a view, no copy), against the weight read in that order
            m, (_, c_all, h, w) = self.models, x.shape
            c = c_all // m
            features = x.permute(0, 2, 3, 1).reshape(batch, h * w, m, c)
            weight = self.weight.view(m, -1, c, h * w).transpose(2, 3)  # (M, K, H·W, C)
            logits = torch.einsum("bsmc,mksc->mbk", features, weight.to(features.dtype))
            return logits + self.bias[:, None, :].to(logits.dtype)
        else:
            features = x.reshape(batch, self.models, -1)
        logits = torch.einsum("bmf,mkf->mbk", features, self.weight.to(features.dtype))
        return logits + self.bias[:, None, :].to(logits.dtype)
