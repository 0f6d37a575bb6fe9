"""`build`: a network of a spec, initialised so that every topology of one seed holds the SAME blocks.

The network is initialised as the deep (sequential) stack and then rewired (`depthlab.models.rewire.regroup`),
so a sequential/parallel pair of one seed differs in its wiring alone.
"""

from __future__ import annotations

from depthlab.models.network import ResidualNet
from depthlab.models.rewire import regroup
from depthlab.models.rng import global_rng, held
from depthlab.models.spec import ModelSpec


def build(spec: ModelSpec, seed: int | None = None, models: int = 1) -> ResidualNet:
    """Build the network of `spec` (a pack of `models` copies of its shape). With a seed, the initial weights
    depend only on it (the global RNG is left untouched), and they are the SAME blocks for every topology:
    the network is initialised as the deep stack and rewired, so a sequential/parallel pair of one seed
    differs in its wiring alone."""
    if seed is None:
        with held():  # drawn from the global RNG as it stands, one thread at a time
            return _initialised(spec, models)
    with global_rng(seed):  # one thread at a time (depthlab.models.rng)
        return _initialised(spec, models)


def _initialised(spec: ModelSpec, models: int) -> ResidualNet:
    if spec.topology == "sequential":
        return ResidualNet(spec, models)
    return regroup(ResidualNet(spec.replace(topology="sequential"), models), spec.topology)
