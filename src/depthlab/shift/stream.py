"""One measurement: a trained model, a test-time method, a test stream of one corrupted set.

The stream is the set in one fixed order, drawn from the seed alone (`stream_order`), cut into consecutive
batches of the evaluation batch size (the last may be smaller): the same stream for every method and every run,
so a paired comparison differs only in what is compared. Loss and accuracy are over the predictions the method
made online, batch by batch.

A method that does not adapt predicts each batch of one from that example alone (source: the source model; norm,
alpha_bn: the example's own statistics), so its batches of one are computed `ALONE_AT_ONCE` examples at a time, each
normalised with its own statistics: the same predictions, without a forward pass per example (a batch of one is
dispatch-bound: 0.5-0.8 ms a forward for a 20k-parameter network on a CPU).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from depthlab import precision as precisions
from depthlab.data import normalise
from depthlab.shift.methods import ADAPTIVE, Method, TestTimeModel

STREAM = 0x5731  # the stream of the seed's generators that draws the order (corruptions use others)
ALONE_AT_ONCE = 64  # batches of one computed together by a method that does not adapt (module docstring)


def stream_order(n: int, seed: int) -> torch.Tensor:
    """The order in which a set of n examples is streamed: a permutation fixed by the seed."""
    return torch.from_numpy(np.random.default_rng([int(seed), STREAM]).permutation(n))


def measure(model, x: torch.Tensor, y: torch.Tensor, mean, std, method: Method, batch_size: int, seed: int,
            precision: str = "fp32") -> dict:
    """{"status", "loss", "accuracy", "examples", "seconds"} of `method` on the stream of (x uint8 N×C×H×W, y),
    the network (and an adaptation's forward and backward) under `precision`'s autocast (`depthlab.precision`).
    A NaN or infinite loss (an adaptation that blew up) gives status 'diverged' and no metrics."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    started = time.perf_counter()
    runner = TestTimeModel(model, method)
    step = batch_size
    if batch_size == 1 and method.name not in ADAPTIVE:  # each batch of one predicted from its example alone
        runner.each_example_alone()
        step = ALONE_AT_ONCE
    order = stream_order(len(x), seed).to(x.device)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), step):
        idx = order[start:start + step]
        with precisions.autocast(precision, x.device):
            logits = runner(normalise(x[idx], mean, std)).float()
        loss_sum += float(F.cross_entropy(logits, y[idx], reduction="sum"))
        correct += int((logits.argmax(1) == y[idx]).sum())
    seconds = time.perf_counter() - started
    n = len(x)
    if n == 0 or not math.isfinite(loss_sum):
        return dict(status="diverged", loss=None, accuracy=None, examples=n, seconds=seconds)
    return dict(status="done", loss=loss_sum / n, accuracy=correct / n, examples=n, seconds=seconds)
