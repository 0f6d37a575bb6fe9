"""Geometric complexity (Dherin et al., 2022): the mean over the data of ‖∂f(x)/∂x‖_F², f the logits.

A smooth function of its input has small input gradients; the measure is the discrete Dirichlet energy of the
learnt function, a capacity proxy that can be compared between the deep and the shallow wiring.

Computed with one backward pass per class: the gradient of Σ_b f_k(x_b) w.r.t. the batch is, row by row, each
example's gradient of f_k, because in eval mode the examples do not interact (BatchNorm on running statistics).
"""

from __future__ import annotations

import torch
from torch import nn


def geometric_complexity(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> float:
    """Mean over `inputs` of the squared Frobenius norm of the Jacobian of the logits w.r.t. the input.

    `model` maps (B, ...) to (B, classes); it runs in eval mode (its mode is restored). For logits = W·x + b
    the value is ‖W‖_F² for every input."""
    was_training = model.training
    model.eval()
    ref = next(model.parameters(), None)
    total, count = 0.0, 0
    try:
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size]
            if ref is not None:
                x = x.to(device=ref.device, dtype=ref.dtype)
            x = x.detach().requires_grad_(True)
            logits = model(x)
            classes = logits.shape[-1]
            for k in range(classes):
                (grad,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < classes - 1)
                total += grad.pow(2).sum().item()
            count += len(x)
    finally:
        model.train(was_training)
    return total / count
