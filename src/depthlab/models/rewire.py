"""The per-branch view of a broad layer, and rewiring between topologies with the same weights.

Block i of a network (0 ≤ i < n) lives in layer i // b as branch i % b (b = branches per layer). Its weights
are slices of the broad layer's tensors, laid out by its branch type (`depthlab.models.branches`; e.g. conv1
rows and norm channels [model][branch][hidden]) and, for the last conv, input channels [branch][hidden] inside
each model's group. `block_weights` returns those slices as views, so the
same code reads a branch and writes one, and `regroup` moves every block to another topology unchanged:
`parallel_from_sequential` is the deep → shallow rewiring (the first-order truncation of the expansion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.models.branches import hidden_slice
from depthlab.models.layers import ResidualLayer
from depthlab.models.network import ResidualNet
from depthlab.models.rng import blank


def block_weights(layer: ResidualLayer, branch: int) -> dict[str, torch.Tensor]:
    """Views (leading dim M) of branch `branch`'s tensors inside `layer`: its front's (as its branch type lays
    them out), then its slice of the last conv, its bias and α."""
    m, b, c = layer.models, layer.branches, layer.width
    if not 0 <= branch < b:
        raise IndexError(f"branch {branch} out of range for a layer of {b} branches")
    views = layer.branch.views(layer, branch)
    k = layer.conv2.kernel_size[0]
    views["conv2.weight"] = layer.conv2.weight.view(m, c, -1, k, k)[:, :, hidden_slice(layer, branch)]
    if layer.bias2 is not None:
        views["bias2"] = layer.bias2[:, branch]
    if layer.alpha is not None:
        views["alpha"] = layer.alpha[:, branch]
    return views


def locate(model: ResidualNet, block: int) -> tuple[ResidualLayer, int]:
    """(layer, branch) holding block `block` of the network."""
    per_layer = model.spec.branches_per_stage
    if not 0 <= block < model.spec.blocks:
        raise IndexError(f"block {block} out of range for a network of {model.spec.blocks} blocks")
    return model.layers[block // per_layer], block % per_layer


def branch_output(layer: ResidualLayer, branch: int, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """s_b·F_b(x) (or F_b(x) when not scaled) computed from the branch's own slices, in the packed layout.

    The reference the fused layer is tested against: it never touches the other branches' weights."""
    w = block_weights(layer, branch)
    m, c, h = layer.models, layer.width, layer.hidden[branch]
    z = layer.branch.reference(layer, w, x)
    k = layer.conv2.kernel_size[0]
    y = F.conv2d(z, w["conv2.weight"].reshape(m * c, h, k, k), padding=k // 2, groups=m)
    if "bias2" in w:
        y = y + w["bias2"].reshape(1, -1, 1, 1)
    if scaled:
        s = layer.branch_scales()[:, branch]
        y = y * s.repeat_interleave(c).reshape(1, -1, 1, 1)
    return y


def regroup(model: ResidualNet, topology: str) -> ResidualNet:
    """The same blocks (same weights, same statistics) wired as `topology`; a new module."""
    spec = model.spec.replace(topology=topology)
    ref = next(model.parameters())
    new = blank(ResidualNet, spec, model.models).to(device=ref.device, dtype=ref.dtype)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("stem.", "head."))}
    new.load_state_dict(state, strict=False)
    with torch.no_grad():
        for i in range(spec.blocks):
            src_layer, src_branch = locate(model, i)
            dst_layer, dst_branch = locate(new, i)
            src, dst = block_weights(src_layer, src_branch), block_weights(dst_layer, dst_branch)
            for key, tensor in src.items():
                dst[key].copy_(tensor)
            dst_layer.scale.copy_(src_layer.scale)
            for src_bn, dst_bn in zip(_batchnorms(src_layer), _batchnorms(dst_layer)):
                dst_bn.num_batches_tracked.copy_(src_bn.num_batches_tracked)
    new.train(model.training)
    return new


def _batchnorms(layer: ResidualLayer):
    return [mod for mod in layer.modules() if isinstance(mod, nn.BatchNorm2d)]


def parallel_from_sequential(model: ResidualNet) -> ResidualNet:
    """Deep → shallow: every block of a trained sequential model reads the same input, x + λΣF_i(x)."""
    return regroup(model, "parallel")

