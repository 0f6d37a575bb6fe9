"""The global RNG, which PyTorch's layer constructors and `nn.init` draw from, held by one thread at a time.

A sweep trains packs in several threads of one process (depthlab.run.workers). A model built from a seed must
draw its initial weights alone: another thread drawing meanwhile, even for a module whose weights it overwrites
next (packing, unpacking, rewiring), would shift the sequence and change the model. So every construction
takes `global_rng()`: seeded for `build`, unseeded for the modules filled from a state dict; either way the
global RNG is restored afterwards, and the caller's own random stream does not move.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_HELD = threading.RLock()  # re-entrant: a seeded build rewires its network, which constructs one more


@contextmanager
def global_rng(seed: int | None = None):
    """Hold the global (CPU) RNG for the duration, seeded with `seed` when given, and restore it after."""
    with _HELD, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextmanager
def held():
    """Hold the global RNG without seeding or restoring it: for constructions meant to draw from it."""
    with _HELD:
        yield


def blank(cls, *args, **kwargs):
    """`cls(*args, **kwargs)` built without moving the global RNG: for modules whose weights are overwritten."""
    with global_rng():
        return cls(*args, **kwargs)
