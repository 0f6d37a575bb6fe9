"""Residual CNNs whose depth can be traded for width at equal parameters.

`build(spec)` gives the deep (sequential), shallow (parallel, one broad layer) or in-between (groups:g) network;
`pack` / `unpack` hold M models of one shape in one module; `parallel_from_sequential` rewires a trained deep
network as a shallow one with the same weights.
"""

from depthlab.models.branches import BRANCHES, DILATED_BRANCHES, REPARAMS, dense_kernel
from depthlab.models.counting import flops, param_count, q_ratio, receptive_field, spec_params
from depthlab.models.fuse import fuse_for_inference
from depthlab.models.layers import ResidualLayer
from depthlab.models.factory import build
from depthlab.models.network import ResidualNet
from depthlab.models.pack import pack, unpack
from depthlab.models.rewire import block_weights, branch_output, locate, parallel_from_sequential, regroup
from depthlab.models.spec import ModelSpec

__all__ = [
    "ModelSpec", "ResidualNet", "ResidualLayer", "build", "pack", "unpack", "param_count", "spec_params", "flops",
    "receptive_field", "q_ratio", "fuse_for_inference", "parallel_from_sequential", "regroup", "block_weights",
    "branch_output", "locate", "BRANCHES", "DILATED_BRANCHES", "REPARAMS", "dense_kernel",
]
