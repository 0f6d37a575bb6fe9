"""Measurements of a network on data, the same for the engine (each run's metrics) and for `analysis/`
(lesions, conversions): loss and accuracy in eval mode, and the geometric complexity.

Inputs are a split as the engine keeps it: uint8 images N×C×H×W with the training set's per-channel mean and
std (normalised batch by batch on the device). A network is a `ResidualNet` holding M ≥ 1 models; every model
sees the same examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from depthlab import precision as precisions

# Examples per evaluation forward by default: speed and memory, and the float32 round-off of the summed losses
# (eval mode: the examples do not interact). The engine caps its evaluation batch with it; how many examples it
# measures a run on is the recipe's (`depthlab.train.recipe.TABLE`).
EVAL_BATCH = 1000


def evaluate(net, x, y, mean, std, models: int | None = None, precision: str = "fp32",
             batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy and accuracy over (x, y), in eval mode (the mode is restored after) and
    inference mode, at `precision` (auto, fp32, bf16: `depthlab.precision`; the loss is summed in float32).
    NaN for an empty split. `models` defaults to `net.models` (give it for a compiled wrapper)."""
    from depthlab.data import eval_batches

    models = net.models if models is None else models
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros(models, device=x.device)
    correct = torch.zeros(models, device=x.device)
    count = 0
    try:
        with torch.inference_mode(), precisions.autocast(precision, x.device):
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


def scores(net, x, y, mean, std, batch_size: int = EVAL_BATCH, precision: str = "fp32") -> dict:
    """{"accuracy", "loss"} of a one-model network: `evaluate` as plain floats."""
    loss, acc = evaluate(net, x, y, mean, std, precision=precision, batch_size=batch_size)
    return {"accuracy": float(acc[0]), "loss": float(loss[0])}


def geometric_complexity(net, x, mean, std, models: int | None = None,
                         batch_size: int | None = None) -> torch.Tensor:
    """Geometric complexity (Dherin et al., 2022), per model: the mean over the examples `x` of
    ‖∂logits/∂input‖_F² (eval mode, float32), the discrete Dirichlet energy of the learnt function; `batch_size`
    examples at a time (None: all of them at once).

    One backward pass per class: in eval mode the examples do not interact, so the gradient of Σ_b f_k(x_b)
    w.r.t. the batch is, row by row, each example's gradient of f_k; and each model's logits depend only on its
    own copy of the input, so one pass serves the whole pack."""
    from depthlab.data import normalise

    models = net.models if models is None else models
    was_training = net.training
    net.eval()
    total = torch.zeros(models, device=x.device)
    batch_size = batch_size or max(1, x.shape[0])
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


ERF_FRACTIONS = (0.5, 0.9)  # the mass fractions of erf50 and erf90: the metrics' names say them


def centred_square_side(mass: torch.Tensor, fraction: float) -> int:
    """The side of the smallest square centred on the middle of `mass` (H×W, non-negative) that holds at least
    `fraction` of its total (odd sides 1, 3, 5, ...; at most the larger of H and W)."""
    mass = mass.double()  # sums of the same values in another order must agree to far below the tolerance
    h, w = mass.shape[-2:]
    total = float(mass.sum())
    if total <= 0:
        return 0
    ci, cj = h // 2, w // 2
    for side in range(1, 2 * max(h, w) + 1, 2):
        r = side // 2
        held = float(mass[max(0, ci - r):ci + r + 1, max(0, cj - r):cj + r + 1].sum())
        if held >= fraction * total * (1 - 1e-6):
            return min(side, max(h, w))
    return max(h, w)


def effective_receptive_field(net, x, mean, std, models: int | None = None,
                              fractions=ERF_FRACTIONS) -> torch.Tensor:
    """Effective receptive field as in RepLKNet (Ding et al., 2022, "Scaling Up Your Kernels to 31x31"): the
    gradient of the residual stream's central position (summed over its channels) with respect to the input,
    |grad| summed over the images `x` and the input channels, reported per model as the side of the centred
    square holding each of `fractions` of that mass. (M, len(fractions)) in input pixels; eval mode."""
    from depthlab.data import normalise

    models = net.models if models is None else models
    was_training = net.training
    net.eval()
    try:
        inputs = normalise(x, mean, std).unsqueeze(0).repeat(models, 1, 1, 1, 1).requires_grad_(True)
        feats = net.features(net.to_packed_input(inputs))  # (B, M·C, H', W')
        centre = feats[:, :, feats.shape[2] // 2, feats.shape[3] // 2]
        (grad,) = torch.autograd.grad(centre.sum(), inputs)  # each model's stream depends on its own input only
    finally:
        net.train(was_training)
    mass = grad.abs().sum(dim=(1, 2))  # (M, H, W)
    return torch.tensor([[centred_square_side(mass[m], f) for f in fractions] for m in range(models)])
