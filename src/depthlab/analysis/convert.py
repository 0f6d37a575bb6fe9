"""Deep → shallow: rewire a trained sequential network as the parallel one with the same weights.

`parallel_from_sequential` keeps the first-order truncation x + λΣF_i(x) of the expansion: every block now
reads the stem output instead of the stream its predecessors built. The accuracy it keeps measures how much of
the deep network's function lives in first-order terms. Fine-tuning the converted network (how close the
shallow wiring is to a good solution from there) is training, so the engine does it: a run whose config
starts from the deep run's weights (`init_from`); see `depthlab convert`.

BatchNorm: each block's running statistics were measured on the input it saw in the deep wiring. In the
parallel wiring it sees the stem output, so the converted model is also evaluated with the statistics
re-estimated on training data (weights unchanged; no gradient step).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from depthlab.errors import DepthlabError, SpecError
from depthlab.measure import scores
from depthlab.models import ResidualNet, param_count, parallel_from_sequential


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: ResidualNet, x, mean, std, batch_size: int = 256) -> ResidualNet:
    """Re-estimate every BatchNorm's running statistics on the uint8 images `x` (cumulative average over the
    batches, no weight changes), in place; the model's mode is restored."""
    from depthlab.data import eval_batches

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    was_training = model.training
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for xb, _ in eval_batches(x, x.new_zeros(len(x)), batch_size, mean, std):
        model(xb)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.train(was_training)
    return model


def unconvertible(spec, models: int = 1) -> str | None:
    """Why `models` networks of `spec` cannot be rewired deep → shallow with their weights, or None when they can
    (what `depthlab convert` refuses)."""
    if models != 1 or spec.topology != "sequential":
        return (f"deep → shallow conversion takes one sequential model; got topology={spec.topology!r}, "
                f"models={models}")
    try:  # a crop gives each block a hidden width of its own, which some parallel layers cannot hold
        spec.replace(topology="parallel")
    except SpecError as err:
        return (f"deep → shallow conversion keeps each block as trained, and the parallel wiring cannot hold "
                f"these blocks (hidden widths {list(spec.block_hidden)}; a crop gives each block its own): it needs "
                f"{err.allowed}")
    return None


# The fields that made a crop-pruned run's network narrower than its config's: once made, that network is a dense
# one of its cropped widths, and its fine-tuning trains it as it is, neither budgeted nor pruned again.
_CROPPING = ("param_budget", "budget_by", "prune", "density", "prune_structure", "crop_init")


def finetune_config(config, spec, run_id: str, epochs: int, lr: float | None = None):
    """The run that fine-tunes the converted network of run `run_id` (`config`, the `RunConfig` it trained, and
    `spec`, its network's `ModelSpec`): the same run wired in parallel, starting from its weights (`init_from`),
    for `epochs` epochs at `lr` (default: the run's). A crop-pruned run is the dense network of its cropped widths
    (PreCropping, Cai et al., arXiv 2203.02549): that network, as `spec` says."""
    changes = dict(topology="parallel", epochs=epochs, init_from=run_id, lr=config.lr if lr is None else lr)
    if config.cropped:
        from depthlab.spec.config import neutral

        changes.update({name: neutral()[name] for name in _CROPPING}, width=spec.width, hidden=spec.hidden)
    return config.replace(**changes)


def deep_to_shallow(model: ResidualNet, data, recalibrate: bool = True,
                    precision: str = "fp32") -> tuple[ResidualNet, dict]:
    """Convert `model` (one sequential model) to the parallel wiring and measure both on `data`'s test split
    (a `depthlab.data.Dataset`: uint8 splits with the training mean and std) at `precision`.

    Returns (the parallel model, report). The report has `original`, `converted` ({accuracy, loss}),
    `retained` = converted accuracy / original accuracy, the parameter counts, and with `recalibrate` and
    BatchNorm: `recalibrated` (statistics re-estimated on the training split) and `retained_recalibrated`. The
    model returned is the last of these stages. `model` itself is not modified."""
    why = unconvertible(model.spec, model.models)
    if why is not None:
        raise DepthlabError(why)
    test = (data.test_x, data.test_y, data.mean, data.std)
    shallow = parallel_from_sequential(model).eval()
    original, converted = scores(model, *test, precision=precision), scores(shallow, *test, precision=precision)
    ratio = lambda r: r["accuracy"] / original["accuracy"] if original["accuracy"] > 0 else float("nan")
    report = {"blocks": model.spec.blocks, "params_original": param_count(model),
              "params_converted": param_count(shallow), "topology": shallow.spec.topology,
              "original": original, "converted": converted, "retained": ratio(converted)}
    if recalibrate and _has_batchnorm(shallow):
        shallow = recalibrate_batchnorm(copy.deepcopy(shallow), data.train_x, data.mean, data.std).eval()
        report["recalibrated"] = scores(shallow, *test, precision=precision)
        report["retained_recalibrated"] = ratio(report["recalibrated"])
    return shallow, report
