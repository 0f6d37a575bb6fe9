"""Signal growth with depth at initialisation: why deep residual networks needed normalisation.

At λ = 1 the expansion of n blocks has C(n, k) terms of order k, and without normalisation the residual
stream's norm compounds block after block: x_k = x_{k-1} + F_k(x_{k-1}) multiplies the second moment by about
(1 + g) per block (g: the branch's gain). Scaling the branches by 1/√n keeps the product bounded as n grows,
1/n keeps it near 1, and a learnable α initialised at 0 (SkipInit/ReZero) makes the network the identity.

Measured on a freshly built network, no gradient, small width and input so depths up to 1,000 are cheap.
BatchNorm runs in train mode (batch statistics, as in the first training step): in eval mode its initial
running statistics (mean 0, variance 1) would make it the identity and the 'with normalisation' rows would
equal the rows without it.
"""

from __future__ import annotations

import contextlib

import torch

from depthlab.run.progress import progress_bar
from depthlab.models import ModelSpec, build

SCALES = ("1", "1/sqrt(n)", "1/n", "learnable")
NORMS = ("none", "batch")


def example_rms(t: torch.Tensor) -> torch.Tensor:
    """Per-example root-mean-square over every other dimension (B values)."""
    return t.reshape(t.shape[0], -1).pow(2).mean(1).sqrt()


@torch.no_grad()
def stream_and_logit_rms(model, inputs: torch.Tensor) -> tuple[float, float, float]:
    """(stem output RMS, residual stream RMS after the last block, logit RMS), each per example, batch mean.
    Non-finite values (overflow at extreme depth) are reported as inf rather than raising."""
    model.train()  # BatchNorm on batch statistics; the other layers do not depend on the mode
    x = model.stem(inputs)
    stem = example_rms(x).mean().item()
    for layer in model.layers:
        x = layer(x)
    stream = example_rms(x).mean().item()
    logits = model.head(x)[0]
    logit = example_rms(logits).mean().item()
    as_inf = lambda v: v if v == v else float("inf")  # NaN arises only from inf − inf
    return stem, as_inf(stream), as_inf(logit)


@contextlib.contextmanager
def one_thread():
    """Run on one intra-op thread: these tensors are tiny, so more threads only add synchronisation (and on a
    busy machine a spinning thread pool makes each small convolution up to 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def signal_growth(depths=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000), scales=SCALES, norms=NORMS,
                  width: int = 8, input_size: int = 8, batch: int = 16, kernel: int = 3, act: str = "relu",
                  in_channels: int = 1, num_classes: int = 10, seed: int = 0, inputs: torch.Tensor | None = None,
                  dtype=torch.float32, progress: bool | None = None) -> list[dict]:
    """One row per (norm, λ rule, depth): the per-example RMS of the residual stream after the last block and
    of the logits of a freshly initialised sequential network (seeded), and their ratio to the stem output.

    `inputs` default to a fixed batch of standard normal images (seed `seed`)."""
    if inputs is None:
        g = torch.Generator().manual_seed(seed)
        inputs = torch.randn(batch, in_channels, input_size, input_size, generator=g)
    inputs = inputs.to(dtype)
    in_channels, input_size = inputs.shape[1], inputs.shape[-1]
    rows = []
    combos = [(norm, scale, int(n)) for norm in norms for scale in scales for n in depths]
    for norm, scale, n in progress_bar(combos, desc="signal", enabled=progress):
        spec = ModelSpec(width=width, blocks=n, kernel=kernel, norm=norm, act=act, residual_scale=scale,
                         in_channels=in_channels, input_size=input_size, num_classes=num_classes)
        with one_thread():
            model = build(spec, seed=seed).to(dtype)
            stem, stream, logit = stream_and_logit_rms(model, inputs)
        rows.append({"norm": norm, "scale": str(scale), "blocks": n, "lambda": spec.scale, "stem_rms": stem,
                     "stream_rms": stream, "growth": stream / stem, "logit_rms": logit})
    return rows
