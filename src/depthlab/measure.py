"""Measurements of a network on data, the same for the engine (each run's metrics) and for `analysis/`
(lesions, conversions): loss and accuracy in eval mode, and the geometric complexity.

Inputs are a split as the engine keeps it: uint8 images N×C×H×W with the training set's per-channel mean and
std (normalised batch by batch on the device). A network is a `ResidualNet` holding M ≥ 1 models; every model
sees the same examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EVAL_BATCH = 1000
COMPLEXITY_EXAMPLES = 128  # training examples over which the engine averages the geometric complexity


def evaluate(net, x, y, mean, std, models: int | None = None, amp: bool = False, batch_size: int = EVAL_BATCH) \
        -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy and accuracy over (x, y), in eval mode (the mode is restored after).
    NaN for an empty split. `models` defaults to `net.models` (give it for a compiled wrapper)."""
    from depthlab.data import eval_batches

    models = net.models if models is None else models
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros(models, device=x.device)
    correct = torch.zeros(models, device=x.device)
    count = 0
    try:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            for xb, yb in eval_batches(x, y, batch_size, mean, std):
                b = yb.shape[0]
                out = net(xb.unsqueeze(0).expand(models, *xb.shape)).float()
                loss_sum += F.cross_entropy(out.reshape(models * b, -1), yb.repeat(models), reduction="none") \
                    .view(models, b).sum(1)
                correct += (out.argmax(-1) == yb).float().sum(1)
                count += b
    finally:
        net.train(was_training)
    if count == 0:
        nan = torch.full((models,), float("nan"), device=x.device)
        return nan, nan
    return loss_sum / count, correct / count


def scores(net, x, y, mean, std, batch_size: int = EVAL_BATCH) -> dict:
    """{"accuracy", "loss"} of a one-model network: `evaluate` as plain floats."""
    loss, acc = evaluate(net, x, y, mean, std, batch_size=batch_size)
    return {"accuracy": float(acc[0]), "loss": float(loss[0])}


def geometric_complexity(net, x, mean, std, models: int | None = None,
                         batch_size: int = COMPLEXITY_EXAMPLES) -> torch.Tensor:
    """Geometric complexity (Dherin et al., 2022), per model: the mean over the examples `x` of
    ‖∂logits/∂input‖_F² (eval mode, float32), the discrete Dirichlet energy of the learnt function.

    One backward pass per class: in eval mode the examples do not interact, so the gradient of Σ_b f_k(x_b)
    w.r.t. the batch is, row by row, each example's gradient of f_k; and each model's logits depend only on its
    own copy of the input, so one pass serves the whole pack."""
    from depthlab.data import normalise

    models = net.models if models is None else models
    was_training = net.training
    net.eval()
    total = torch.zeros(models, device=x.device)
    try:
        for start in range(0, x.shape[0], batch_size):
            chunk = normalise(x[start:start + batch_size], mean, std)
            inputs = chunk.unsqueeze(0).repeat(models, 1, 1, 1, 1).requires_grad_(True)
            logits = net(inputs)
            for k in range(logits.shape[-1]):
                (grad,) = torch.autograd.grad(logits[..., k].sum(), inputs, retain_graph=k < logits.shape[-1] - 1)
                total += grad.pow(2).flatten(1).sum(1)
            del logits, inputs
    finally:
        net.train(was_training)
    return total / x.shape[0]
