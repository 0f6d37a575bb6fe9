"""Width decided at initialisation: pruning-at-initialisation (PAI) scores, masks, and the layer densities that
PreCropping turns into a dense, narrower network.

The scores follow the Synaptic-Flow reference code (Tanaka et al., 2020; github.com/ganguli-lab/Synaptic-Flow,
Pruners/pruners.py): `random`, `magnitude` |θ|, `snip` |∂L/∂θ ⊙ θ| (Lee et al., 2019), `grasp` θ ⊙ Hg with the
logits divided by 200 (Wang et al., 2020), `synflow` |θ ⊙ ∂R/∂θ| with R the sum of the outputs on an all-ones
input once every parameter and BatchNorm statistic is made non-negative, in eval mode, iterated with the
exponential schedule. `erk` is rigl's Erdős–Rényi-kernel layer density (Evci et al., 2020; google-research/rigl,
sparse_utils.py): density ∝ (Σ of a layer's dimensions) / (their product), layers over 1 made dense, random
within each layer. `precrop_params` / `precrop_flops` are the closed-form allocations of PreCropping's later
version (Cai et al., arXiv 2203.02549): maximise Σ_l log p_l under a parameter (FLOP) budget, which gives
p_l = min(1, τ/N_l) with τ found by bisection.

A *layer* here is one weight tensor of one block (its slice of a broad layer: `depthlab.models.block_weights`),
the stem's and the head's, so densities mean the same in every wiring. The tensors the model declares prunable
are scored (`ResidualNet.parameter_groups`: conv and linear weights, not norms, not biases); a score mask is
global over one model's layers and keeps `density` of its weights. A pack is scored per model: every model's loss
and outputs depend on its own parameters only.
"""

from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from depthlab.models import block_weights, locate
from depthlab.models.branches import branch_type, tensor_groups, view_roles

METHODS = ("none", "random", "magnitude", "snip", "grasp", "synflow", "erk", "precrop_params", "precrop_flops")
SCORED = ("random", "magnitude", "snip", "grasp", "synflow")
STRUCTURES = ("mask", "crop")
CROP_INITS = ("reinit", "keep")  # a cropped network starts afresh (its own fan-in) or keeps the dense one's
EXAMPLES_PER_CLASS = 10   # SNIP's and GraSP's data: this many training examples of each class
SYNFLOW_ITERATIONS = 100  # SynFlow's exponential schedule
GRASP_TEMPERATURE = 200


# -- layers -------------------------------------------------------------------------------------------------------


def layer_views(net, tensors: dict | None = None, shadow=None) -> dict[str, torch.Tensor]:
    """{layer name: view with the model index leading} of every prunable weight of `net`, block by block; with
    `tensors` ({parameter name: tensor of its shape}), the same views into those tensors instead (scores,
    masks), through `shadow`, a copy of `net` that lends them its layout (made here when not given)."""
    if tensors is not None:
        net = copy.deepcopy(net) if shadow is None else shadow
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.data = tensors[name]
    m = net.models
    views = {"stem": net.stem.weight.view(m, -1, *net.stem.weight.shape[1:])}
    for i in range(net.spec.blocks):
        layer, branch = locate(net, i)
        for key, view in block_weights(layer, branch).items():
            if tensor_groups(layer, key)[1]:
                views[f"block{i}.{key}"] = view
    views["head"] = net.head.weight
    return views


def layer_sizes(net) -> dict[str, int]:
    """Weights per model in each layer."""
    return {name: view[0].numel() for name, view in layer_views(net).items()}


def density_floor(spec, structure: str) -> tuple[float, str]:
    """The smallest density at which every prunable layer of a `spec` network can stay alive, and what it keeps
    there. A mask keeps round(density · weights) weights, so below (layers / weights) some layer has none (at
    density 1e-9, every layer: a constant network, whatever it is trained on); above it, a score may still empty
    a layer, the layer collapse SynFlow avoids, which is a result of the method. A crop keeps at least one channel
    of the stream and of each block (`crop_spec`): it is never smaller than the network of width 1 and hidden
    width 1."""
    layers, weights = _prunable(spec)
    if structure == "crop":
        narrowest = _prunable(spec.replace(width=1, hidden=1))[1]
        return narrowest / weights, (f"its narrowest crop, width 1 and hidden width 1, keeps {narrowest:,} of its "
                                     f"{weights:,} prunable weights")
    return layers / weights, (f"a mask keeps {layers} of its {weights:,} prunable weights, one per layer: fewer "
                              "leave a layer empty")


@functools.lru_cache(maxsize=256)
def _prunable(spec) -> tuple[int, int]:
    """(prunable layers, their weights) of one model of `spec`: a grid's runs share a few shapes."""
    from depthlab.models import ResidualNet
    from depthlab.models.rng import blank

    sizes = layer_sizes(blank(ResidualNet, spec))
    return len(sizes), sum(sizes.values())


def layer_flops(net) -> dict[str, int]:
    """Multiply-accumulates per sample of each layer (weights × the output positions they slide over)."""
    spec = net.spec
    positions = spec.feature_size ** 2
    return {name: size * (1 if name == "head" else positions) for name, size in layer_sizes(net).items()}


# -- scores -------------------------------------------------------------------------------------------------------


def _params(net) -> dict[str, torch.Tensor]:
    """The prunable parameters, as the model declares them."""
    return {name: p for name, p, _, prunable in net.parameter_groups() if prunable}


def scores(net, method: str, data=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """{parameter name: score} for the prunable weights of `net` (a pack is scored per model). `data`:
    (inputs (M, B, C, H, W) float, labels (B,)) for snip and grasp. `net` is left as it was."""
    params = _params(net)
    if method == "random":
        g = torch.Generator(device="cpu").manual_seed(seed)
        return {n: torch.randn(p.shape, generator=g).to(p) for n, p in params.items()}
    if method == "magnitude":
        return {n: p.detach().abs() for n, p in params.items()}
    if method in ("snip", "grasp"):
        if data is None:
            raise ValueError(f"{method} needs a batch of training data")
        return _snip(net, params, data) if method == "snip" else _grasp(net, params, data)
    if method == "synflow":
        spec = net.spec
        ones = torch.ones(net.models, 1, spec.in_channels, spec.input_size, spec.input_size,
                          device=next(net.parameters()).device)
        return synflow_scores(net, params, ones)
    raise ValueError(f"no score for {method!r}")


def _loss(net, inputs, labels, temperature: float = 1.0) -> torch.Tensor:
    """Sum over the models of each one's mean cross-entropy: model m's gradient is that of its own loss."""
    out = net(inputs) / temperature
    m, b, k = out.shape
    return F.cross_entropy(out.reshape(m * b, k), labels.repeat(m), reduction="sum") / b


@contextmanager
def _scoring(net):
    """Train mode for a data-dependent score, and the network as it was afterwards: its mode, and every buffer
    (BatchNorm's running statistics, which a train-mode forward updates). The scores use the batch's statistics
    (at initialisation the running ones are the defaults 0 and 1, which describe no data); restoring the buffers
    keeps scoring from changing the network, so that one method's scores do not depend on another's having run."""
    was = net.training
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    net.train()
    try:
        yield
    finally:
        net.train(was)
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])


def _snip(net, params, data):
    with _scoring(net):
        grads = torch.autograd.grad(_loss(net, *data), list(params.values()))
    return {n: (g * p).detach().abs() for (n, p), g in zip(params.items(), grads)}


def _grasp(net, params, data):
    """θ ⊙ Hg: g the gradient of the loss (logits / 200), Hg by differentiating g_stopped · g."""
    with _scoring(net):
        weights = list(params.values())
        stopped = [g.detach() for g in torch.autograd.grad(_loss(net, *data, GRASP_TEMPERATURE), weights)]
        grads = torch.autograd.grad(_loss(net, *data, GRASP_TEMPERATURE), weights, create_graph=True)
        hg = torch.autograd.grad(sum((s * g).sum() for s, g in zip(stopped, grads)), weights)
    return {n: (h * p).detach() for (n, p), h in zip(params.items(), hg)}


def synflow_scores(module, params: dict, ones: torch.Tensor) -> dict[str, torch.Tensor]:
    """|θ ⊙ ∂R/∂θ|, R = Σ module(ones) once every parameter and BN statistic is made non-negative (eval mode);
    `module` is restored afterwards. For a linear chain R = 1ᵀ|W_L|…|W_1|1 and every layer's scores sum to R."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            for v in module.state_dict().values():
                if v.is_floating_point():
                    v.abs_()
        grads = torch.autograd.grad(module(ones).sum(), list(params.values()))
        return {n: (g * p).detach().abs() for (n, p), g in zip(params.items(), grads)}
    finally:
        module.load_state_dict(state)
        module.train(was)


# -- masks --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def global_mask(net, score: dict[str, torch.Tensor], density: float, shadow=None) -> dict[str, torch.Tensor]:
    """Per model, keep the round(density · weights) highest-scored weights of all its layers together."""
    shadow = copy.deepcopy(net) if shadow is None else shadow
    masks = {n: torch.zeros_like(s) for n, s in score.items()}
    score_views = {n: v for n, v in layer_views(net, _full(net, score), shadow).items()}
    score_flat = [torch.cat([v[m].reshape(-1) for v in score_views.values()]) for m in range(net.models)]
    mask_views = layer_views(net, _full(net, masks), shadow)
    names = list(mask_views)
    for m in range(net.models):
        flat = score_flat[m]
        keep = round(density * flat.numel())
        chosen = torch.zeros_like(flat)
        chosen[torch.topk(flat, keep).indices] = 1.0
        start = 0
        for n in names:
            view = mask_views[n][m]
            view.copy_(chosen[start:start + view.numel()].view_as(view))
            start += view.numel()
    return masks


@torch.no_grad()
def layer_mask(net, densities: dict[str, float], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random masks realising a density per layer (ERK, PreCrop's allocations)."""
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.zeros_like(p) for n, p in _params(net).items()}
    for name, view in layer_views(net, _full(net, masks)).items():
        for m in range(net.models):
            n = view[m].numel()
            chosen = torch.zeros(n)
            chosen[torch.randperm(n, generator=g)[:round(densities[name] * n)]] = 1.0
            view[m].copy_(chosen.view_as(view[m]))
    return masks


def _full(net, partial: dict) -> dict:
    """Tensors for every parameter of `net`: those given, zeros elsewhere (views of what is given)."""
    return {n: partial[n] if n in partial else torch.zeros_like(p) for n, p in net.named_parameters()}


def erk_densities(sizes: dict[str, tuple], density: float) -> dict[str, float]:
    """rigl's Erdős–Rényi-kernel densities: p_l = ε·(Σ dims)/(Π dims), ε set so that the kept weights total
    `density` of all; layers where that exceeds 1 are made dense and ε is solved again without them."""
    numel = {n: math.prod(s) for n, s in sizes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in sizes.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(density * numel[n] for n in sizes if n not in dense) - sum((1 - density) * numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in sizes if n not in dense)
        eps = rhs / divisor if divisor else 0.0
        over = [n for n in sizes if n not in dense and eps * raw[n] > 1]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in sizes}
        dense.update(over)


def precrop_densities(costs: dict[str, float], density: float) -> dict[str, float]:
    """PreCropping's closed form: maximise Σ log p_l subject to Σ p_l·c_l = density·Σ c_l, 0 < p_l ≤ 1. The KKT
    conditions give p_l = min(1, τ/c_l) (p_l·c_l equal for every uncapped layer); τ by bisection."""
    budget = density * sum(costs.values())
    spent = lambda tau: sum(min(1.0, tau / c) * c for c in costs.values())
    lo, hi = 0.0, max(costs.values())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) < budget else (lo, mid)
    tau = (lo + hi) / 2
    return {n: min(1.0, tau / c) for n, c in costs.items()}


def compute_masks(net, method: str, density: float, data=None, seed: int = 0,
                  iterations: int = SYNFLOW_ITERATIONS) -> dict[str, torch.Tensor]:
    """{parameter name: 0/1 mask} keeping `density` of each model's prunable weights by `method`."""
    if method in ("erk", "precrop_params", "precrop_flops"):
        views = layer_views(net)
        if method == "erk":
            densities = erk_densities({n: tuple(v.shape[1:]) for n, v in views.items()}, density)
        else:
            costs = layer_sizes(net) if method == "precrop_params" else layer_flops(net)
            densities = precrop_densities(costs, density)
        return layer_mask(net, densities, seed)
    if method != "synflow":
        return global_mask(net, scores(net, method, data, seed), density)
    # SynFlow's exponential schedule: prune to density^(k/K) at step k, scoring the masked network each time
    work, shadow = copy.deepcopy(net), copy.deepcopy(net)
    params = _params(work)
    masks = {n: torch.ones_like(p) for n, p in params.items()}
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for n, p in params.items():
                p.mul_(masks[n])
        masks = global_mask(work, scores(work, "synflow"), density ** (k / iterations), shadow)
    return masks


def apply_masks(net, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights (in place): at initialisation and after every optimizer step."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in masks:
                p.mul_(masks[name].to(p.dtype))


@torch.no_grad()
def layer_densities(net, masks: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per model, the kept fraction of each layer."""
    views = layer_views(net, _full(net, masks))
    return [{n: float(v[m].float().mean()) for n, v in views.items()} for m in range(net.models)]


# -- PreCropping ------------------------------------------------------------------------------------------------


def block_density(densities: dict[str, float], sizes: dict[str, int], block: int) -> float:
    """The kept fraction of one block's weights (all its layers together)."""
    names = [n for n in sizes if n.startswith(f"block{block}.")]
    return sum(densities[n] * sizes[n] for n in names) / sum(sizes[n] for n in names)


def crop_spec(net, masks: dict[str, torch.Tensor]):
    """The dense, narrower spec that realises the layer densities of a one-model mask (PreCropping). The stream
    width C' follows the head's density (the classifier reads C' channels); then each block's hidden width is
    chosen so that the blocks hold what the mask kept in them, plus what rounding C' made the stem and the head
    miss, shared in proportion: the cropped network has the mask's weights to within one hidden channel per
    block. Parallel layers whose branch type needs equal widths (`equal_widths`) get one width per layer."""
    from depthlab.models import ResidualNet
    from depthlab.models.rng import blank

    spec = net.spec
    densities = layer_densities(net, masks)[0]
    sizes = layer_sizes(net)
    kept = {n: densities[n] * sizes[n] for n in sizes}
    width = max(1, min(spec.width, round(densities["head"] * spec.width)))
    blocks = range(spec.blocks)
    per_block = lambda s: [sum(v for n, v in s.items() if n.startswith(f"block{i}.")) for i in blocks]
    # block weights are a·h + b; only the shapes count, so the modules are not drawn from the global RNG
    one = layer_sizes(blank(ResidualNet, spec.replace(width=width, hidden=1)))
    two = per_block(layer_sizes(blank(ResidualNet, spec.replace(width=width, hidden=2))))
    slope = [t - o for t, o in zip(two, per_block(one))]
    offset = [o - a for o, a in zip(per_block(one), slope)]
    outside = sum(v for n, v in one.items() if not n.startswith("block"))
    target_blocks = per_block(kept)
    budget = sum(kept.values()) - outside
    share = [budget * t / max(sum(target_blocks), 1e-12) for t in target_blocks]
    hidden = [max(1, round((s - b) / a)) for s, a, b in zip(share, slope, offset)]
    if branch_type(spec.branch).equal_widths(spec.norm):
        b = spec.branches_per_stage
        for start in range(0, len(hidden), b):
            mean = max(1, round(sum(hidden[start:start + b]) / b))
            hidden[start:start + b] = [mean] * b
    return spec.replace(width=width, hidden=tuple(hidden))


def class_batch(x, y, classes: int, per_class: int = EXAMPLES_PER_CLASS):
    """The first `per_class` examples of each class (SNIP's and GraSP's data), in class order."""
    chosen = [torch.nonzero(y == k).flatten()[:per_class] for k in range(classes)]
    index = torch.cat(chosen)
    return x[index], y[index]


@torch.no_grad()
def keep_cropped(dense, masks: dict[str, torch.Tensor], cropped) -> None:
    """crop_init keep: fill the cropped one-model network with the dense network's weights (and statistics) of the
    channels the mask used most: the C' stream channels and, per block, the h' hidden channels holding the most
    kept weights. Each cropped width must be at most the dense one."""
    spec, small = dense.spec, cropped.spec
    stream, hidden_scores = _kept_per_channel(dense, masks)
    too_wide = [(i, h, s.numel()) for i, (h, s) in enumerate(zip(small.block_hidden, hidden_scores)) if h > s.numel()]
    if small.width > spec.width or too_wide:
        raise ValueError(f"crop_init keep: the cropped network is wider than the dense one (stream {small.width} of "
                         f"{spec.width}; blocks {too_wide}): use crop_init reinit")
    keep_stream = torch.topk(stream, small.width).indices.sort().values
    keep_hidden = [torch.topk(s, h).indices.sort().values for s, h in zip(hidden_scores, small.block_hidden)]
    _copy_channels(dense, cropped, keep_stream, keep_hidden)


@torch.no_grad()
def _kept_per_channel(dense, masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The kept weights that touch each channel: of the residual stream (stem, head and the blocks' prunable
    weights), and of each block's hidden channels. Counted on a copy of `dense` whose parameters are their masks
    (zeros where a parameter has none)."""
    spec = dense.spec
    mask_net = copy.deepcopy(dense)
    for name, p in mask_net.named_parameters():
        p.data = masks[name].clone() if name in masks else torch.zeros_like(p)
    stream = torch.zeros(spec.width)
    stream += mask_net.stem.weight.reshape(spec.width, -1).sum(1)
    stream += mask_net.head.weight[0].reshape(spec.num_classes, spec.width, -1).sum((0, 2))
    hidden_scores = []
    for i in range(spec.blocks):
        layer, branch = locate(mask_net, i)
        score = torch.zeros(layer.hidden[branch])
        for key, view in block_weights(layer, branch).items():
            if not tensor_groups(layer, key)[1]:
                continue  # only the prunable weights carry the mask
            roles = view_roles(layer, key)
            for axis, role in enumerate(roles):
                dims = tuple(d + 1 for d in range(len(roles)) if d != axis)
                if role == "stream":
                    stream += view.sum(dims)[0] if dims else view[0]
                if role == "hidden":
                    score += view.sum(dims)[0] if dims else view[0]
        hidden_scores.append(score)
    return stream, hidden_scores


@torch.no_grad()
def _copy_channels(dense, cropped, keep_stream: torch.Tensor, keep_hidden: list[torch.Tensor]) -> None:
    """Copy `dense`'s weights at the kept channels into `cropped`: the stem's and the head's (with its norm's
    statistics) at the kept stream channels, each block's at the kept stream and hidden channels, and each
    block's residual scale."""
    spec = dense.spec
    pick = {"stream": keep_stream}
    cropped.stem.weight.copy_(dense.stem.weight[keep_stream])
    if dense.stem.bias is not None:
        cropped.stem.bias.copy_(dense.stem.bias[keep_stream])
    for i in range(spec.blocks):
        (big_layer, big_branch), (small_layer, small_branch) = locate(dense, i), locate(cropped, i)
        small_views = block_weights(small_layer, small_branch)
        pick["hidden"] = keep_hidden[i]
        for key, view in block_weights(big_layer, big_branch).items():
            for axis, role in enumerate(view_roles(big_layer, key)):
                if role is not None:
                    view = view.index_select(axis + 1, pick[role])
            small_views[key].copy_(view)
        small_layer.scale.copy_(big_layer.scale)
    for key in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(dense.head.norm, key, None)
        if isinstance(tensor, torch.Tensor):
            getattr(cropped.head.norm, key).copy_(tensor[keep_stream])
    weight = dense.head.weight.reshape(1, spec.num_classes, spec.width, -1)[:, :, keep_stream]
    cropped.head.weight.copy_(weight.reshape(cropped.head.weight.shape))
    cropped.head.bias.copy_(dense.head.bias)
