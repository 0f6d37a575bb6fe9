"""Counting helpers: parameters, analytic FLOPs, receptive field, determination ratio Q = K·M/P."""

from __future__ import annotations

from torch import nn

from depthlab.models.branches import BRANCHES
from depthlab.models.spec import ModelSpec


def param_count(model: nn.Module) -> int:
    """Free (trainable) parameters. For a pack, the total over its models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def spec_params(spec: ModelSpec, merged: bool = False) -> int:
    """Parameters of one model of `spec`, computed from the spec alone (no module is built): as trained, or with
    `merged` as `fuse_for_inference` leaves it (BatchNorms folded, re-param kernels merged)."""
    c, k = spec.width, spec.kernel
    branch = BRANCHES[spec.branch]
    bias = spec.norm == "none"
    last = branch.last_kernel(k)
    total = c * spec.in_channels * 9 + (c if bias else 0)                       # stem
    for h in spec.block_hidden:
        total += branch.params(c, h, k, spec.norm, spec.reparam, merged)        # the branch's front
        total += c * h * last * last                                            # its last conv
        total += c if bias else 0                                               # the branch's last-conv bias
        total += 1 if spec.learnable_scale else 0                               # α
    total += 2 * c if spec.norm in ("batch", "group") else 0                    # head norm (an affine when merged)
    features = c if spec.head == "gap" else c * spec.feature_size ** 2
    total += features * spec.num_classes + spec.num_classes                     # classifier
    return total


def flops(spec: ModelSpec, input_hw: tuple[int, int] | int | None = None, merged: bool = False) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of one sample through the convolutions and the classifier
    (norms, activations and additions are not counted), as trained or, with `merged`, in inference form.
    Identical for every topology of the same shape."""
    if input_hw is None:
        input_hw = spec.input_size
    hgt, wid = (input_hw, input_hw) if isinstance(input_hw, int) else input_hw
    s = spec.stem_stride
    ho, wo = (hgt - 1) // s + 1, (wid - 1) // s + 1
    c, k = spec.width, spec.kernel
    branch = BRANCHES[spec.branch]
    last = branch.last_kernel(k)
    total = 2 * spec.in_channels * 9 * c * ho * wo
    total += sum(2 * (branch.macs(c, h, k, spec.reparam, merged) + h * c * last * last) * ho * wo
                 for h in spec.block_hidden)
    features = c if spec.head == "gap" else c * ho * wo
    total += 2 * features * spec.num_classes
    return total


def receptive_field(spec: ModelSpec) -> int:
    """Receptive field (in input pixels) of one output position of the residual stream's deepest path.

    The stem is 3×3; a branch adds its reach (two k×k convs: 2(k−1); a large-kernel branch: K−1), times the stem
    stride. Only the g stages in sequence compound, so the parallel network sees stem + ONE branch while the deep
    stack grows with n. With a `gap` head this alone can decide a comparison."""
    return 3 + spec.stages * BRANCHES[spec.branch].reach(spec.kernel) * spec.stem_stride


def q_ratio(spec: ModelSpec, n_train: int) -> float:
    """Determination ratio Q = K·M/P: training examples × outputs / free parameters."""
    return n_train * spec.num_classes / spec_params(spec)
