"""Deep → shallow: rewire a trained sequential network as the parallel one with the same weights.

`parallel_from_sequential` keeps the first-order truncation x + λΣF_i(x) of the expansion: every block now
reads the stem output instead of the stream its predecessors built. The accuracy it keeps measures how much of
the deep network's function lives in first-order terms; a short fine-tune measures how close the shallow
wiring is to a good solution from there.

BatchNorm: each block's running statistics were measured on the input it saw in the deep wiring. In the
parallel wiring it sees the stem output, so the converted model is also evaluated with the statistics
re-estimated on training data (weights unchanged), when training data are given.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from depthlab.analysis.trainer import evaluate, recalibrate_batchnorm, train
from depthlab.errors import DepthlabError
from depthlab.models import ResidualNet, param_count, parallel_from_sequential


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def deep_to_shallow(model: ResidualNet, test_x: torch.Tensor, test_y: torch.Tensor,
                    train_x: torch.Tensor | None = None, train_y: torch.Tensor | None = None,
                    finetune_epochs: float = 0, recalibrate: bool = True, progress: bool | None = None,
                    **train_kwargs) -> tuple[ResidualNet, dict]:
    """Convert `model` (sequential, one model) to the parallel wiring and evaluate both on (test_x, test_y).

    Returns (the parallel model, report). The report has `original`, `converted` ({accuracy, loss}),
    `retained` = converted accuracy / original accuracy, the parameter counts, and when training data are
    given: `recalibrated` (BN statistics re-estimated, only if the model has BatchNorm) and, for
    finetune_epochs > 0, `finetuned` with its `retained_after_finetune` and the training summary. The model
    returned is the last of these stages (fine-tuned if fine-tuning ran). `model` itself is not modified."""
    if model.models != 1 or model.spec.topology != "sequential":
        raise DepthlabError(f"deep → shallow conversion takes one sequential model; got "
                            f"topology={model.spec.topology!r}, models={model.models}")
    if finetune_epochs and (train_x is None or train_y is None):
        raise DepthlabError("fine-tuning the converted model needs training data (train_x, train_y)")
    shallow = parallel_from_sequential(model).eval()
    original, converted = evaluate(model, test_x, test_y), evaluate(shallow, test_x, test_y)
    ratio = lambda r: r["accuracy"] / original["accuracy"] if original["accuracy"] > 0 else float("nan")
    report = {"blocks": model.spec.blocks, "params_original": param_count(model),
              "params_converted": param_count(shallow), "topology": shallow.spec.topology,
              "original": original, "converted": converted, "retained": ratio(converted)}
    if train_x is not None and recalibrate and _has_batchnorm(shallow):
        shallow = recalibrate_batchnorm(copy.deepcopy(shallow), train_x).eval()
        report["recalibrated"] = evaluate(shallow, test_x, test_y)
        report["retained_recalibrated"] = ratio(report["recalibrated"])
    if finetune_epochs:
        shallow = copy.deepcopy(shallow)
        report["finetune"] = train(shallow, train_x, train_y, epochs=finetune_epochs, progress=progress,
                                   **train_kwargs)
        report["finetuned"] = evaluate(shallow, test_x, test_y)
        report["retained_after_finetune"] = ratio(report["finetuned"])
    return shallow, report
