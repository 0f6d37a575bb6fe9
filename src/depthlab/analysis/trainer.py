"""A small local trainer for the analyses that need a trained network (lesions, conversion).

Deliberately plain: Adam over float tensors already in memory, a fixed seed for the batch order, no packs, no
store. The sweep engine is the place for real experiments; this is enough to train a tiny model on CPU in
seconds, and it trains any module mapping (B, C, H, W) to (B, classes) (the plain-network wrapper included).
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.errors import DataError, DepthlabError


def progress_bar(iterable=None, *, total=None, desc="", enabled=None):
    """tqdm on stderr, shown by default only when stderr is a terminal (tests and pipes stay quiet)."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: float = 1.0, steps: int | None = None,
          batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0,
          progress: bool | None = None) -> dict:
    """Train `model` in place with Adam on (x, y) (float inputs, int64 labels), leave it in eval mode, and return
    {steps, diverged, final_train_loss (mean over the last epoch's worth of steps)}.

    `steps` overrides `epochs` when given. A non-finite loss stops training and is reported as diverged
    (the model is then left as it was at that step)."""
    if len(x) != len(y) or len(x) == 0:
        raise DepthlabError(f"train: need as many labels as inputs (and at least one); got {len(x)} and {len(y)}")
    n = len(x)
    batch_size = min(batch_size, n)
    per_epoch = max(1, n // batch_size)  # drop the ragged last batch: every step sees a full batch
    total = steps if steps is not None else max(1, math.ceil(epochs * per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses, order, diverged, step = [], None, False, 0
    bar = progress_bar(total=total, desc="train", enabled=progress)
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(n, generator=g)
        idx = order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(1)
    bar.close()
    model.eval()
    tail = losses[-max(1, per_epoch):]  # the last epoch's worth of steps
    return {"steps": len(losses), "diverged": diverged,
            "final_train_loss": sum(tail) / len(tail) if tail else float("nan")}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict:
    """Accuracy and mean cross-entropy of `model` in eval mode (the mode it was in is restored)."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return {"accuracy": correct / len(x), "loss": loss / len(x)}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on `x` (cumulative average, no weight changes).

    Needed after rewiring: a block's statistics were measured on the input it saw in the old wiring."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    was_training = model.training
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.train(was_training)
    return model


def load_tensors(name: str, *, train_subset: int | None = None, n_test: int | None = None, seed: int = 0) -> dict:
    """A dataset from `depthlab.data` as float tensors, normalised with the training statistics.

    Returns train_x, train_y, test_x, test_y (float32 / int64), num_classes, shape (C, H, W). `synthetic` is
    generated (train_subset examples, default 1024). Any failure becomes one clear DepthlabError."""
    try:
        import depthlab.data as data
    except ImportError as err:  # the data package is written separately
        raise DataError(f"cannot load dataset {name!r}: depthlab.data is not available ({err})") from None
    try:
        if name == "synthetic":
            ds = data.load("synthetic", n_train=train_subset or 1024, n_test=n_test or 256,
                           shape=(1, 28, 28), num_classes=10, seed=seed)
        else:
            ds = data.load(name, val_split=0, train_subset=train_subset)
    except DepthlabError:
        raise
    except Exception as err:  # a loader failing for any other reason is still the user's to fix
        raise DataError(f"cannot load dataset {name!r}: {type(err).__name__}: {err}. "
                        "Try --dataset synthetic (generated, needs no files).") from None
    test_x = ds.test_x if n_test is None else ds.test_x[:n_test]
    test_y = ds.test_y if n_test is None else ds.test_y[:n_test]
    train_x = data.normalise(ds.train_x, ds.mean, ds.std).float()
    return {"train_x": train_x, "train_y": ds.train_y.long(),
            "test_x": data.normalise(test_x, ds.mean, ds.std).float(), "test_y": test_y.long(),
            "num_classes": int(ds.num_classes), "shape": tuple(train_x.shape[1:])}
