"""Branch types: the one place that knows what a residual branch is made of.

Every branch F(x) ends in a linear convolution from `hidden` channels back to the stream width C, so a layer of
b branches computes Σ_b s_b·F_b(x) as ONE broad layer: a *front* that maps the stream to b·hidden channels
(ordered [model][branch][hidden]), then one convolution over the concatenated hidden channels (the sum over
branches). `depthlab.models.layers.ResidualLayer` owns that last convolution, its per-branch bias, λ and α; a
branch type owns the front. It says how to build the front's modules on the layer, run it, view one branch's
tensors inside the packed ones (`views`, which rewiring and lesions use), compute one branch from its own slices
(`reference`, what the broad layer is tested against), fold it for inference (`fuse`), initialise it for Fixup,
and count its parameters, FLOPs and reach.

It also declares what the rest of depthlab would otherwise decide by its name (`BranchType` lists it all): the
re-params it takes (`reparams`, which spec validation and the CLI read), its width rule (`roles`, the axis roles
of each view that PreCropping crops along, and `equal_widths`, whether the branches of one layer must share a
hidden width), whether its activations run channels_last on a CPU (`channels_last_on_cpu`, the engine's layout)
and which of its parts compute in float32 under bf16 autocast there (`float32_depthwise_on_cpu`),
the activations autograd keeps per block (`activations`, the engine's memory estimate for pack sizes), and which
of its tensors weight decay and pruning act on (`decays`, `prunable`; the network gathers them into its
`parameter_groups`, as nanoGPT's model declares its optimizer groups). A new branch type is a new class here,
an entry in `BRANCHES` and its name in `depthlab.choices.BRANCH_TYPES`; tests/models/test_branch_invariants.py
then checks every invariant on it.

- ``conv``: F(x) = conv_k(act(norm(conv_k(x)))).
- ``lk``: F(x) = pw2(act(pw1(norm(dw_K(x))))), UniRepLKNet's block without its extras (Ding et al., "UniRepLKNet:
  A Universal Perception Large-Kernel ConvNet", 2024; github.com/AILab-CVC/UniRepLKNet): a depthwise K×K
  convolution, norm, a pointwise expansion to `hidden` channels, activation, a pointwise projection back. The b
  depthwise branches of a layer are one depthwise convolution over the stream repeated b times (channels
  [model][branch][channel]); the pointwise pairs are grouped by model and branch. With `reparam` the depthwise
  conv is UniRepLKNet's Dilated Reparam Block: the K×K conv in parallel with small dilated depthwise convs, each
  with its own BatchNorm (with norm "batch"), summed before any nonlinearity; `fuse` merges them into one K×K
  kernel (a dilated kernel is a dense one with zeros inserted).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.choices import REPARAMS

# UniRepLKNet's (kernel, dilation) lists of the Dilated Reparam Block per large kernel size K
# (AILab-CVC/UniRepLKNet, unireplknet.py, DilatedReparamBlock.__init__).
DILATED_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 2), (3, 3)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}
# dilated: the table; same_kernel: the same small kernels, dilation 1; same_equivalent: dense kernels of the
# dilated ones' equivalent sizes (k−1)r+1 (the paper's two controls). The names are declared in depthlab.choices.
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


def reparam_kernels(kernel: int, reparam: str) -> tuple[tuple[int, int], ...]:
    """The (kernel, dilation) of each small depthwise conv beside the K×K one."""
    if reparam == "none":
        return ()
    table = DILATED_BRANCHES[kernel]
    if reparam == "dilated":
        return table
    if reparam == "same_kernel":
        return tuple((k, 1) for k, _ in table)
    return tuple(((k - 1) * r + 1, 1) for k, r in table)  # same_equivalent


def dense_kernel(weight: torch.Tensor, dilation: int, size: int) -> torch.Tensor:
    """The dense size×size kernel equal to a dilated one: zeros inserted between its taps, centred, padded."""
    k = weight.shape[-1]
    span = (k - 1) * dilation + 1
    dense = weight.new_zeros(*weight.shape[:-2], span, span)
    dense[..., ::dilation, ::dilation] = weight
    pad = (size - span) // 2
    return F.pad(dense, (pad, pad, pad, pad))


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(x) = x·scale + shift per channel in eval mode."""
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return inv, bn.bias - bn.running_mean * inv


def make_norm(kind: str, channels: int, group_size: int) -> nn.Module:
    """Norm over `channels` (M·stuff). `group_size` keeps GroupNorm groups inside one branch of one model."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // group_size), channels)
    return nn.Identity()


def gn_group_size(channels: int) -> int:
    """Channels per GroupNorm group for a branch of `channels` channels (8 groups when it divides)."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return channels // groups
    return channels


def _norm_reference(norm: nn.Module, z: torch.Tensor, views: dict, prefix: str, per_model_groups: int):
    """A norm applied with one branch's slices of its parameters and statistics."""
    if isinstance(norm, nn.BatchNorm2d):
        use_batch = norm.training or norm.running_mean is None
        return F.batch_norm(z, None if use_batch else views[f"{prefix}.running_mean"].reshape(-1).clone(),
                            None if use_batch else views[f"{prefix}.running_var"].reshape(-1).clone(),
                            views[f"{prefix}.weight"].reshape(-1), views[f"{prefix}.bias"].reshape(-1), use_batch,
                            0.0, norm.eps)
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(z, per_model_groups, views[f"{prefix}.weight"].reshape(-1),
                            views[f"{prefix}.bias"].reshape(-1), norm.eps)
    return z


def _norm_views(views: dict, prefix: str, norm: nn.Module, models: int, part: slice) -> None:
    """Views of one branch's slice `part` of a norm's per-channel tensors (channels [model][...])."""
    for key in _NORM_KEYS:
        tensor = getattr(norm, key, None)
        if isinstance(tensor, torch.Tensor):
            views[f"{prefix}.{key}"] = tensor.view(models, -1)[:, part]


def hidden_slice(layer, branch: int) -> slice:
    """Where branch `branch`'s hidden channels lie inside each model's [branch][hidden] block (branches may be
    of different widths: `layer.hidden` holds one width per branch)."""
    start = sum(layer.hidden[:branch])
    return slice(start, start + layer.hidden[branch])


def _fold(conv_weight, conv_bias, bn: nn.BatchNorm2d):
    """conv → BN(eval) as one conv: W' = W·γ/σ, b' = (b − μ)·γ/σ + β."""
    scale, shift = bn_affine(bn)
    bias = conv_bias if conv_bias is not None else torch.zeros_like(shift)
    return conv_weight * scale.reshape(-1, *([1] * (conv_weight.dim() - 1))), bias * scale + shift


def _conv_like(weight: torch.Tensor, bias: torch.Tensor | None, *, groups: int, padding: int) -> nn.Conv2d:
    # skip_init: no initial weights drawn (from the global RNG, which a caller may hold seeded) to be overwritten
    conv = nn.utils.skip_init(nn.Conv2d, weight.shape[1] * groups, weight.shape[0], weight.shape[-1],
                              padding=padding, groups=groups, bias=bias is not None, device=weight.device,
                              dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@runtime_checkable
class BranchType(Protocol):
    """What a branch type is: its layout and mathematics, and the capabilities the rest of depthlab asks it about
    instead of testing its name. Implemented by classes of static methods (registered in `BRANCHES`). `layer` is
    the `depthlab.models.layers.ResidualLayer` the front lives on; a `key` names one of its tensors as
    `block_weights` does (the parameter's or buffer's name inside the layer: "conv1.weight", "norm.running_mean")."""

    name: str
    reparams: tuple[str, ...]      # the re-params it takes ("none" first; ("none",) for a type without any)
    channels_last_on_cpu: bool     # whether its activations run channels_last on a CPU in float32
    float32_depthwise_on_cpu: bool  # whether its depthwise convs compute in float32 under CPU bf16 autocast

    def last_kernel(self, kernel: int) -> int: ...  # the kernel of the layer's last (linear) conv

    def build(self, layer, *, norm: str, act: str, reparam: str) -> None: ...

    def front(self, layer, x: torch.Tensor) -> torch.Tensor: ...

    def views(self, layer, branch: int) -> dict[str, torch.Tensor]: ...

    def roles(self, key: str) -> tuple: ...  # the width rule: what each axis of a view indexes (for the crop)

    def equal_widths(self, norm: str) -> str | None: ...  # why one layer's branches share a width, or None

    def decays(self, key: str) -> bool: ...

    def prunable(self, key: str) -> bool: ...

    def reference(self, layer, views: dict, x: torch.Tensor) -> torch.Tensor: ...

    def fuse(self, layer) -> None: ...

    def fixup(self, layer, blocks: int) -> None: ...

    def params(self, c: int, h: int, k: int, norm: str, reparam: str, merged: bool) -> int: ...

    def macs(self, c: int, h: int, k: int, reparam: str, merged: bool) -> int: ...

    def activations(self, c: int, h: int, k: int, norm: str, reparam: str) -> int: ...

    def reach(self, kernel: int) -> int: ...


class ConvBranch:
    """F(x) = conv_k(act(norm(conv_k(x)))): the front is conv1 → norm → act on the layer."""

    name = "conv"
    reparams = ("none",)
    channels_last_on_cpu = False  # recipe 1's float32 CPU training is NCHW, bit for bit
    float32_depthwise_on_cpu = False  # it has no depthwise conv

    @staticmethod
    def last_kernel(kernel: int) -> int:
        return kernel

    @staticmethod
    def build(layer, *, norm: str, act: str, reparam: str) -> None:
        m, c, k = layer.models, layer.width, layer.kernel
        total = sum(layer.hidden)
        layer.conv1 = nn.Conv2d(m * c, m * total, k, padding=k // 2, groups=m, bias=norm == "none")
        layer.norm = make_norm(norm, m * total, gn_group_size(layer.hidden[0]))  # equal widths with GroupNorm
        layer.act = make_act(act)

    @staticmethod
    def front(layer, x: torch.Tensor) -> torch.Tensor:
        return layer.act(layer.norm(layer.conv1(x)))

    @staticmethod
    def views(layer, branch: int) -> dict[str, torch.Tensor]:
        m, c, k = layer.models, layer.width, layer.kernel
        part = hidden_slice(layer, branch)
        views = {"conv1.weight": layer.conv1.weight.view(m, -1, c, k, k)[:, part]}
        if layer.conv1.bias is not None:
            views["conv1.bias"] = layer.conv1.bias.view(m, -1)[:, part]
        _norm_views(views, "norm", layer.norm, m, part)
        return views

    @staticmethod
    def roles(key: str) -> tuple:
        """What each axis of a view (model axis excluded) indexes: the branch's hidden channels, the stream's
        channels, or neither (kernel taps)."""
        if key == "conv1.weight":
            return ("hidden", "stream", None, None)
        return ("hidden",)  # conv1.bias, norm.*

    @staticmethod
    def equal_widths(norm: str) -> str | None:
        """GroupNorm over the layer's [model][branch][hidden] channels groups them evenly; otherwise every branch
        may have its own width."""
        return "GroupNorm over the hidden channels needs equal groups" if norm == "group" else None

    @staticmethod
    def decays(key: str) -> bool:
        """The first conv's weight decays; its bias and the norm do not."""
        return key == "conv1.weight"

    prunable = decays  # the same tensor: pruning scores the convolution's weights

    @staticmethod
    def reference(layer, views: dict, x: torch.Tensor) -> torch.Tensor:
        m, c, k = layer.models, layer.width, layer.kernel
        h = views["conv1.weight"].shape[1]
        bias = views["conv1.bias"].reshape(-1) if "conv1.bias" in views else None
        z = F.conv2d(x, views["conv1.weight"].reshape(m * h, c, k, k), bias, padding=k // 2, groups=m)
        groups = getattr(layer.norm, "num_groups", 0) // (layer.models * layer.branches) * m
        return layer.act(_norm_reference(layer.norm, z, views, "norm", groups))

    @staticmethod
    def fuse(layer) -> None:
        if isinstance(layer.norm, nn.BatchNorm2d):
            weight, bias = _fold(layer.conv1.weight, layer.conv1.bias, layer.norm)
            layer.conv1 = _conv_like(weight, bias, groups=layer.models, padding=layer.kernel // 2)
            layer.norm = nn.Identity()

    @staticmethod
    def fixup(layer, blocks: int) -> None:
        """Fixup (Zhang et al., 2019) for two-layer branches: the first He-initialised × n^(-1/2)."""
        nn.init.kaiming_normal_(layer.conv1.weight, mode="fan_in", nonlinearity="relu")
        with torch.no_grad():
            layer.conv1.weight.mul_(blocks ** -0.5)
            if layer.conv1.bias is not None:
                nn.init.zeros_(layer.conv1.bias)

    @staticmethod
    def params(c: int, h: int, k: int, norm: str, reparam: str, merged: bool) -> int:
        """Parameters of one branch's front (the last conv is the layer's)."""
        total = c * h * k * k
        total += h if norm == "none" or (merged and norm == "batch") else 0     # conv1 bias (a folded BN's shift)
        total += 2 * h if norm == "group" or (norm == "batch" and not merged) else 0   # norm affine
        return total

    @staticmethod
    def macs(c: int, h: int, k: int, reparam: str, merged: bool) -> int:
        """Multiply-accumulates per output position of one branch's front."""
        return c * h * k * k

    @staticmethod
    def activations(c: int, h: int, k: int, norm: str, reparam: str) -> int:
        """Values autograd keeps per output position for one block: conv1's, the norm's and the activation's
        outputs (h each), the last conv's output and the sum (c each)."""
        return 3 * h + 2 * c

    @staticmethod
    def reach(kernel: int) -> int:
        """Input positions one branch adds to the receptive field (minus one): two k×k convs."""
        return 2 * (kernel - 1)


class LargeKernelBranch:
    """F(x) = pw2(act(pw1(norm(dw_K(x))))), with an optional Dilated Reparam Block as dw_K (see module doc).

    On the layer: `dw` (the K×K depthwise conv over the stream repeated per branch), `dw_extra` (the small
    re-param convs, same layout), `dw_norms` (their BatchNorms, the K×K one's first; only with norm "batch"),
    `norm` (over [model][branch][channel]), `pw1` (grouped by model and branch) and `act`."""

    name = "lk"
    reparams = REPARAMS
    # the depthwise weight gradient is ~3x slower in NCHW on one thread, 10-100x with several on a busy machine
    # (bench/lk_speed.py)
    channels_last_on_cpu = True
    # under bf16 autocast on a CPU the depthwise convs and their norms compute in float32: oneDNN's bf16 depthwise
    # weight gradient is 3-15x slower than float32's, where every other convolution gains from bf16
    # (bench/lk_speed.py, "bf16 depthwise")
    float32_depthwise_on_cpu = True

    @staticmethod
    def last_kernel(kernel: int) -> int:
        return 1

    @staticmethod
    def build(layer, *, norm: str, act: str, reparam: str) -> None:
        m, b, c, k = layer.models, layer.branches, layer.width, layer.kernel
        h = layer.hidden[0]  # a grouped pointwise pair: every branch of a layer has the same width
        layer.reparam = reparam
        extra = reparam_kernels(k, reparam)
        bias = norm == "none"
        channels = m * b * c
        layer.dw = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=bias)
        layer.dw_extra = nn.ModuleList(
            nn.Conv2d(channels, channels, kk, padding=r * (kk - 1) // 2, dilation=r, groups=channels, bias=bias)
            for kk, r in extra)
        layer.dw_norms = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(1 + len(extra))) \
            if extra and norm == "batch" else nn.ModuleList()
        layer.norm = make_norm(norm, channels, gn_group_size(c))
        layer.pw1 = nn.Conv2d(channels, m * b * h, 1, groups=m * b, bias=True)
        layer.act = make_act(act)

    @staticmethod
    def _repeat(layer, x: torch.Tensor) -> torch.Tensor:
        """The stream (B, M·C, H, W) as b copies per model, channels [model][branch][channel]."""
        if layer.branches == 1:
            return x
        bsz, _, hgt, wid = x.shape
        m, b, c = layer.models, layer.branches, layer.width
        out = x.reshape(bsz, m, 1, c, hgt, wid).expand(bsz, m, b, c, hgt, wid).reshape(bsz, m * b * c, hgt, wid)
        # keep channels_last activations channels_last (the depthwise backward is far slower in NCHW on CPU)
        return out if x.is_contiguous() else out.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def front(layer, x: torch.Tensor) -> torch.Tensor:
        x = LargeKernelBranch._repeat(layer, x)
        cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if cpu_bf16 and LargeKernelBranch.float32_depthwise_on_cpu:
            # K=7's weight gradient for a pack of three at batch 128 on 14x14: 41 ms in bf16, 12 in float32; a 3x3
            # of dilation 3: 57 against 4. pw1 takes the float32 result back into bf16.
            with torch.autocast("cpu", enabled=False):
                z = layer.norm(LargeKernelBranch._depthwise(layer, x.float()))
        else:
            z = layer.norm(LargeKernelBranch._depthwise(layer, x))
        return layer.act(layer.pw1(z))

    @staticmethod
    def _depthwise(layer, x: torch.Tensor) -> torch.Tensor:
        """dw_K(x): the K×K depthwise conv, plus the re-param convs, each with its BatchNorm where it has one."""
        convs = [layer.dw, *layer.dw_extra]
        if len(layer.dw_norms):
            return sum(bn(conv(x)) for conv, bn in zip(convs, layer.dw_norms))
        z = layer.dw(x)
        for conv in layer.dw_extra:
            z = z + conv(x)
        return z

    @staticmethod
    def views(layer, branch: int) -> dict[str, torch.Tensor]:
        m, b, c = layer.models, layer.branches, layer.width
        views = {}
        for name, conv in [("dw", layer.dw)] + [(f"dw_extra.{j}", cv) for j, cv in enumerate(layer.dw_extra)]:
            k = conv.kernel_size[0]
            views[f"{name}.weight"] = conv.weight.view(m, b, c, 1, k, k)[:, branch]
            if conv.bias is not None:
                views[f"{name}.bias"] = conv.bias.view(m, b, c)[:, branch]
        channels = slice(branch * c, (branch + 1) * c)
        for j, bn in enumerate(layer.dw_norms):
            _norm_views(views, f"dw_norms.{j}", bn, m, channels)
        _norm_views(views, "norm", layer.norm, m, channels)
        part = hidden_slice(layer, branch)
        views["pw1.weight"] = layer.pw1.weight.view(m, -1, c, 1, 1)[:, part]
        views["pw1.bias"] = layer.pw1.bias.view(m, -1)[:, part]
        return views

    @staticmethod
    def roles(key: str) -> tuple:
        if key == "pw1.weight":
            return ("hidden", "stream", None, None)
        if key == "pw1.bias":
            return ("hidden",)
        if key.endswith(".weight") and key.startswith(("dw.", "dw_extra.")):  # not dw_norms: per channel
            return ("stream", None, None, None)
        return ("stream",)  # depthwise biases, their norms, the block norm (over the stream's channels)

    @staticmethod
    def equal_widths(norm: str) -> str | None:
        return "the pointwise pair is grouped by branch and needs equal groups"

    @staticmethod
    def decays(key: str) -> bool:
        """The depthwise kernels (the K×K one and the re-param ones) and pw1's weight; not their biases, the
        re-param BatchNorms or the block norm."""
        return key in ("dw.weight", "pw1.weight") or (key.startswith("dw_extra.") and key.endswith(".weight"))

    prunable = decays  # the same tensors: pruning scores the convolutions' weights

    @staticmethod
    def reference(layer, views: dict, x: torch.Tensor) -> torch.Tensor:
        m, c = layer.models, layer.width
        h = views["pw1.weight"].shape[1]
        z = 0
        for j, conv in enumerate([layer.dw, *layer.dw_extra]):
            name = "dw" if j == 0 else f"dw_extra.{j - 1}"
            k = conv.kernel_size[0]
            bias = views[f"{name}.bias"].reshape(-1) if f"{name}.bias" in views else None
            y = F.conv2d(x, views[f"{name}.weight"].reshape(m * c, 1, k, k), bias, padding=conv.padding,
                         dilation=conv.dilation, groups=m * c)
            if len(layer.dw_norms):
                y = _norm_reference(layer.dw_norms[j], y, views, f"dw_norms.{j}", 0)
            z = z + y
        groups = getattr(layer.norm, "num_groups", 0) // (layer.models * layer.branches) * m
        z = _norm_reference(layer.norm, z, views, "norm", groups)
        z = F.conv2d(z, views["pw1.weight"].reshape(m * h, c, 1, 1), views["pw1.bias"].reshape(-1), groups=m)
        return layer.act(z)

    @staticmethod
    def fuse(layer) -> None:
        """One K×K depthwise conv per branch: each re-param BN folded into its conv, each dilated kernel made
        dense and padded to K×K, all summed; then the block's BatchNorm folded in too."""
        k = layer.kernel
        convs = [layer.dw, *layer.dw_extra]
        has_bias = layer.dw.bias is not None or len(layer.dw_norms) > 0
        weight, bias = 0, 0
        for j, conv in enumerate(convs):
            w, b_ = conv.weight, conv.bias
            if len(layer.dw_norms):
                w, b_ = _fold(w, b_, layer.dw_norms[j])
            weight = weight + dense_kernel(w, conv.dilation[0], k)
            bias = bias + (b_ if b_ is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        if isinstance(layer.norm, nn.BatchNorm2d):
            weight, bias = _fold(weight, bias, layer.norm)
            layer.norm, has_bias = nn.Identity(), True
        layer.dw = _conv_like(weight, bias if has_bias else None, groups=weight.shape[0], padding=k // 2)
        layer.dw_extra, layer.dw_norms = nn.ModuleList(), nn.ModuleList()

    @staticmethod
    def fixup(layer, blocks: int) -> None:
        """Fixup for three-layer branches (dw, pw1, pw2): the inner layers × n^(-1/(2·3−2)) = n^(-1/4)."""
        with torch.no_grad():
            for conv in (layer.dw, *layer.dw_extra, layer.pw1):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                conv.weight.mul_(blocks ** -0.25)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    @staticmethod
    def params(c: int, h: int, k: int, norm: str, reparam: str, merged: bool) -> int:
        extra = () if merged else reparam_kernels(k, reparam)
        total = c * k * k + sum(c * kk * kk for kk, _ in extra)                       # depthwise convs
        if merged:
            total += c if norm in ("none", "batch") else 0                            # the merged conv's bias
        else:
            total += c * (1 + len(extra)) if norm == "none" else 0                   # their biases
            total += 2 * c * (1 + len(extra)) if extra and norm == "batch" else 0    # re-param BatchNorms
        total += 2 * c if norm == "group" or (norm == "batch" and not merged) else 0  # block norm
        total += c * h + h                                                            # pw1
        return total

    @staticmethod
    def macs(c: int, h: int, k: int, reparam: str, merged: bool) -> int:
        extra = () if merged else reparam_kernels(k, reparam)
        return c * k * k + sum(c * kk * kk for kk, _ in extra) + c * h

    @staticmethod
    def activations(c: int, h: int, k: int, norm: str, reparam: str) -> int:
        """Values autograd keeps per output position for one block: each depthwise conv's output (and its
        BatchNorm's, in a re-param block), the block norm's, pw1's and the activation's, the last conv's output and
        the sum. (The stream repeated for the branches of a parallel layer is a copy more.)"""
        convs = 1 + len(reparam_kernels(k, reparam))
        depthwise = convs * c * (2 if convs > 1 and norm == "batch" else 1)
        return depthwise + c + 2 * h + 2 * c

    @staticmethod
    def reach(kernel: int) -> int:
        """One K×K depthwise conv (the re-param kernels are no larger) and two pointwise ones."""
        return kernel - 1


BRANCHES = {cls.name: cls for cls in (ConvBranch, LargeKernelBranch)}


# The layer's own tensors, whatever its branch type (`depthlab.models.layers.ResidualLayer`): the last conv's
# weight, its per-branch bias and α, each with (the axis roles of its view, decays, prunable).
LAYER_TENSORS = {"conv2.weight": (("stream", "hidden", None, None), True, True),
                 "bias2": (("stream",), False, False),
                 "alpha": ((), False, False)}


def view_roles(layer, key: str) -> tuple:
    """The axis roles of a `block_weights` view: the branch type's, or the layer's own (last conv, bias, α)."""
    if key in LAYER_TENSORS:
        return LAYER_TENSORS[key][0]
    return layer.branch.roles(key)


def tensor_groups(layer, key: str) -> tuple[bool, bool]:
    """(decays, prunable) of the layer's tensor `key`: the layer's own, or as its branch type declares."""
    if key in LAYER_TENSORS:
        return LAYER_TENSORS[key][1:]
    return layer.branch.decays(key), layer.branch.prunable(key)


def branch_type(name: str) -> BranchType:
    return BRANCHES[name]


def takes_reparam(name: str) -> bool:
    """Whether branch type `name` has re-param variants (a name not registered is left to the spec's validation,
    which names the allowed ones)."""
    return name not in BRANCHES or BRANCHES[name].reparams != ("none",)


def make_act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "identity": nn.Identity()}[kind]


def last_conv_bound(hidden: int, kernel: int) -> float:
    """nn.Conv2d's default bound U(±1/√fan-in) with the fan-in of ONE branch."""
    return 1 / math.sqrt(hidden * kernel * kernel)
