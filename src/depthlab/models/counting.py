"""Counting helpers: parameters, analytic FLOPs, receptive field, determination ratio Q = K·M/P."""

from __future__ import annotations

from torch import nn

from depthlab.models.spec import ModelSpec


def param_count(model: nn.Module) -> int:
    """Free (trainable) parameters. For a pack, the total over its models."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def spec_params(spec: ModelSpec) -> int:
    """Parameters of one model of `spec`, computed from the spec alone (no module is built)."""
    c, n, k, h = spec.width, spec.blocks, spec.kernel, spec.hidden_channels
    bias = spec.norm == "none"
    total = c * spec.in_channels * 9 + (c if bias else 0)                       # stem
    per_block = 2 * c * h * k * k                                               # conv1 + conv2
    per_block += h if bias else 0                                               # conv1 bias
    per_block += c if bias else 0                                               # the branch's conv2 bias
    per_block += 2 * h if spec.norm in ("batch", "group") else 0                # norm affine
    per_block += 1 if spec.learnable_scale else 0                               # α
    total += n * per_block
    total += 2 * c if spec.norm in ("batch", "group") else 0                    # head norm
    features = c if spec.head == "gap" else c * spec.feature_size ** 2
    total += features * spec.num_classes + spec.num_classes                     # classifier
    return total


def flops(spec: ModelSpec, input_hw: tuple[int, int] | int | None = None) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of one sample through the convolutions and the classifier
    (norms, activations and additions are not counted). Identical for every topology of the same shape."""
    if input_hw is None:
        input_hw = spec.input_size
    hgt, wid = (input_hw, input_hw) if isinstance(input_hw, int) else input_hw
    s = spec.stem_stride
    ho, wo = (hgt - 1) // s + 1, (wid - 1) // s + 1
    c, n, k, h = spec.width, spec.blocks, spec.kernel, spec.hidden_channels
    total = 2 * spec.in_channels * 9 * c * ho * wo
    total += n * 2 * (2 * c * h * k * k * ho * wo)
    features = c if spec.head == "gap" else c * ho * wo
    total += 2 * features * spec.num_classes
    return total


def receptive_field(spec: ModelSpec) -> int:
    """Receptive field (in input pixels) of one output position of the residual stream's deepest path.

    A branch is two k×k convolutions, adding 2(k-1) positions; only the g stages in sequence compound, so the
    parallel network sees stem + ONE branch while the deep stack grows with n. With a `gap` head this alone can
    decide a comparison."""
    return 3 + spec.stages * 2 * (spec.kernel - 1) * spec.stem_stride


def q_ratio(spec: ModelSpec, n_train: int) -> float:
    """Determination ratio Q = K·M/P: training examples × outputs / free parameters."""
    return n_train * spec.num_classes / spec_params(spec)
