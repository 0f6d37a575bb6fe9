"""A small generated dataset for tests and smoke runs: one smooth random template per class plus noise.

A network can learn it (the class is in the template), yet it is not trivially one pixel. Everything is drawn
from generators seeded by (seed, stream), so train and test are fixed for a seed and independent of each
other's sizes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from depthlab.data import registry
from depthlab.errors import SpecError

ENTRY = registry.entry("synthetic")  # its default shape, classes and sizes
SIGNAL = 0.6  # share of the class template in each pixel; the rest is per-sample noise


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _check(n_train, n_test, shape, num_classes, seed) -> tuple[int, int, int]:
    if not isinstance(n_train, int) or n_train < 1:
        raise SpecError("n_train", n_train, "an integer >= 1")
    if not isinstance(n_test, int) or n_test < 0:
        raise SpecError("n_test", n_test, "an integer >= 0")
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else ()
    if len(dims) != 3 or not all(isinstance(s, int) and s >= 1 for s in dims):
        raise SpecError("shape", shape, "(channels, height, width), positive integers")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError("num_classes", num_classes, "an integer >= 2")
    if not isinstance(seed, int) or seed < 0:
        raise SpecError("seed", seed, "an integer >= 0")
    return dims


def _samples(templates: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    k = templates.shape[0]
    y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # balanced classes, shuffled
    noise = torch.rand((n, *templates.shape[1:]), generator=g)
    x = SIGNAL * templates[y] + (1 - SIGNAL) * noise
    return (x * 255).round().clamp(0, 255).to(torch.uint8), y.to(torch.int64)


def generate(
    root=None,
    download: bool = True,
    *,
    n_train: int = ENTRY.sizes[0],
    n_test: int = ENTRY.sizes[1],
    shape=ENTRY.shape,
    num_classes: int = ENTRY.num_classes,
    seed: int = 0,
) -> dict:
    """Generate the synthetic splits (root and download are accepted and ignored, like every loader's)."""
    c, h, w = _check(n_train, n_test, shape, num_classes, seed)
    # Smooth templates: coarse random grids upsampled, so that neighbouring pixels agree as in real images.
    coarse = torch.rand((num_classes, c, max(2, h // 4), max(2, w // 4)), generator=_generator(seed, 0))
    templates = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    train_x, train_y = _samples(templates, n_train, _generator(seed, 1))
    test_x, test_y = _samples(templates, n_test, _generator(seed, 2))
    return dict(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,  # an option here: the registry's count is only the default
        source="generated",
        complete=True,  # generated at the sizes asked for: nothing is missing even when they are not the defaults
    )


def locate(root=None) -> str:
    """Always available: it is generated."""
    return "generated"
