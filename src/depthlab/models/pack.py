"""Packs: M models of one shape held side by side in one module (see `depthlab.models.layers` for the layout).

Every parameter and buffer of a pack has the model index as its leading block, so packing is a concatenation
along dim 0 and unpacking a split (scalars such as BatchNorm's step counter are shared).
"""

from __future__ import annotations

import torch

from depthlab.models.network import ResidualNet
from depthlab.models.rng import blank


def pack(models: list[ResidualNet]) -> ResidualNet:
    """One module computing every model of the list at once (all must share a shape: a spec up to a fixed λ)."""
    if not models:
        raise ValueError("pack() needs at least one model")
    spec = models[0].spec
    for other in models[1:]:
        if not same_shape(other.spec, spec):
            raise ValueError(f"pack() needs models of one shape; got {spec} and {other.spec}")
    ref = models[0]
    packed = blank(ResidualNet, spec, models=sum(m.models for m in models)).to(
        device=next(ref.parameters()).device, dtype=next(ref.parameters()).dtype)
    states = [m.state_dict() for m in models]
    merged = {}
    for key, value in states[0].items():
        if value.dim() == 0:
            merged[key] = value.clone()
        else:
            merged[key] = torch.cat([s[key] for s in states], dim=0)
    packed.load_state_dict(merged)
    packed.train(ref.training)
    return packed


def _shape(spec):
    """A spec up to its fixed residual scale λ, which lives in a per-model buffer and so may differ in a pack
    (the pack's spec is its first model's; each model's λ is in `layer.scale`)."""
    return spec.replace(residual_scale="learnable" if spec.residual_scale == "learnable" else 1.0)


def same_shape(a, b) -> bool:
    """Whether models of specs `a` and `b` can share a pack (they differ at most in a fixed λ)."""
    return _shape(a) == _shape(b)


def unpack(packed: ResidualNet) -> list[ResidualNet]:
    """The pack's models as separate modules (copies of their weights and statistics)."""
    m = packed.models
    ref = next(packed.parameters())
    singles = [blank(ResidualNet, packed.spec, 1).to(device=ref.device, dtype=ref.dtype) for _ in range(m)]
    state = packed.state_dict()
    for i, single in enumerate(singles):
        part = {}
        for key, value in state.items():
            part[key] = value.clone() if value.dim() == 0 else value.chunk(m, dim=0)[i].clone()
        single.load_state_dict(part)
        single.train(packed.training)
    return singles


def model_view(tensor: torch.Tensor, models: int) -> torch.Tensor:
    """(M, -1) view of a packed parameter: row m holds model m's values."""
    return tensor.reshape(models, -1)
