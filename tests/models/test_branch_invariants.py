"""Every invariant, for every branch type: fused == per branch, packed == alone, the counts from the spec == the
built model, merged == training form in eval mode, pruning masks applied and kept, and the capabilities each type
declares (its width rule, its decay and pruning groups, its layout on a CPU, its memory estimate) checked
against what its modules do.

The cases are read from the registry (`depthlab.models.branches.BRANCHES`: every type, with each of its
re-params), plus a throwaway type defined here, `separable`, registered with monkeypatch into the registry and
the choice list: every test runs on it unchanged. A new branch type is a class in branches.py and its name in
`depthlab.choices.BRANCH_TYPES`; this module then checks it. float64 where exactness is claimed (< 1e-10)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab import choices, prune
from depthlab.errors import SpecError
from depthlab.models import (ModelSpec, block_weights, branch_output, build, flops, fuse_for_inference, locate,
                             pack, param_count, parallel_from_sequential, receptive_field, regroup, spec_params,
                             unpack)
from depthlab.models import spec as spec_module
from depthlab.models.branches import (BRANCHES, BranchType, _conv_like, _fold, _norm_reference, _norm_views,
                                      gn_group_size, hidden_slice, make_act, make_norm, view_roles)
from depthlab.train import recipe
from depthlab.train.engine import use_channels_last
from depthlab.train.optim import PackedOptimizer


class SeparableBranch:
    """THROWAWAY, to show that a new type inherits every test: F(x) = pw2(act(norm(pw1(dw_k(x))))), a depthwise
    k×k conv over the stream (repeated per branch, channels [model][branch][channel]), a pointwise expansion
    grouped by model and branch, a norm over the hidden channels; the layer's last conv is pointwise."""

    name = "separable"
    reparams = ("none",)
    channels_last_on_cpu = True
    float32_depthwise_on_cpu = False

    @staticmethod
    def last_kernel(kernel: int) -> int:
        return 1

    @staticmethod
    def build(layer, *, norm: str, act: str, reparam: str) -> None:
        m, b, c, k, h = layer.models, layer.branches, layer.width, layer.kernel, layer.hidden[0]
        layer.dw = nn.Conv2d(m * b * c, m * b * c, k, padding=k // 2, groups=m * b * c, bias=norm == "none")
        layer.pw1 = nn.Conv2d(m * b * c, m * b * h, 1, groups=m * b, bias=norm == "none")
        layer.norm = make_norm(norm, m * b * h, gn_group_size(h))
        layer.act = make_act(act)

    @staticmethod
    def front(layer, x: torch.Tensor) -> torch.Tensor:
        bsz, _, hgt, wid = x.shape
        m, b, c = layer.models, layer.branches, layer.width
        x = x.reshape(bsz, m, 1, c, hgt, wid).expand(bsz, m, b, c, hgt, wid).reshape(bsz, m * b * c, hgt, wid)
        return layer.act(layer.norm(layer.pw1(layer.dw(x))))

    @staticmethod
    def views(layer, branch: int) -> dict[str, torch.Tensor]:
        m, b, c, k = layer.models, layer.branches, layer.width, layer.kernel
        part = hidden_slice(layer, branch)
        views = {"dw.weight": layer.dw.weight.view(m, b, c, 1, k, k)[:, branch],
                 "pw1.weight": layer.pw1.weight.view(m, -1, c, 1, 1)[:, part]}
        if layer.dw.bias is not None:
            views["dw.bias"] = layer.dw.bias.view(m, b, c)[:, branch]
            views["pw1.bias"] = layer.pw1.bias.view(m, -1)[:, part]
        _norm_views(views, "norm", layer.norm, m, part)
        return views

    @staticmethod
    def roles(key: str) -> tuple:
        return {"dw.weight": ("stream", None, None, None), "dw.bias": ("stream",),
                "pw1.weight": ("hidden", "stream", None, None)}.get(key, ("hidden",))  # pw1.bias, norm.*

    @staticmethod
    def equal_widths(norm: str) -> str | None:
        return "pw1 is grouped by branch"

    @staticmethod
    def decays(key: str) -> bool:
        return key in ("dw.weight", "pw1.weight")

    prunable = decays

    @staticmethod
    def reference(layer, views: dict, x: torch.Tensor) -> torch.Tensor:
        m, c, k = layer.models, layer.width, layer.kernel
        h = views["pw1.weight"].shape[1]
        bias = lambda key: views[key].reshape(-1) if key in views else None
        z = F.conv2d(x, views["dw.weight"].reshape(m * c, 1, k, k), bias("dw.bias"), padding=k // 2, groups=m * c)
        z = F.conv2d(z, views["pw1.weight"].reshape(m * h, c, 1, 1), bias("pw1.bias"), groups=m)
        groups = getattr(layer.norm, "num_groups", 0) // (layer.models * layer.branches) * m
        return layer.act(_norm_reference(layer.norm, z, views, "norm", groups))

    @staticmethod
    def fuse(layer) -> None:
        if isinstance(layer.norm, nn.BatchNorm2d):
            weight, bias = _fold(layer.pw1.weight, layer.pw1.bias, layer.norm)
            layer.pw1 = _conv_like(weight, bias, groups=layer.models * layer.branches, padding=0)
            layer.norm = nn.Identity()

    @staticmethod
    def fixup(layer, blocks: int) -> None:
        with torch.no_grad():
            for conv in (layer.dw, layer.pw1):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                conv.weight.mul_(blocks ** -0.25)

    @staticmethod
    def params(c: int, h: int, k: int, norm: str, reparam: str, merged: bool) -> int:
        biases = (c + h) if norm == "none" else h if merged and norm == "batch" else 0
        return c * k * k + c * h + biases + (2 * h if norm == "group" or (norm == "batch" and not merged) else 0)

    @staticmethod
    def macs(c: int, h: int, k: int, reparam: str, merged: bool) -> int:
        return c * k * k + c * h

    @staticmethod
    def activations(c: int, h: int, k: int, norm: str, reparam: str) -> int:
        return c + 3 * h + 2 * c  # dw, pw1, norm and act outputs; the last conv's and the sum

    @staticmethod
    def reach(kernel: int) -> int:
        return kernel - 1


THROWAWAY = SeparableBranch.name
CASES = [(name, reparam) for name, kind in BRANCHES.items() for reparam in kind.reparams] + [(THROWAWAY, "none")]


@pytest.fixture(params=CASES, ids=[name if reparam == "none" else f"{name}-{reparam}" for name, reparam in CASES])
def case(request, monkeypatch):
    """(branch type, re-param) of one case; the throwaway type is registered for the test's duration."""
    name, reparam = request.param
    if name == THROWAWAY:
        monkeypatch.setitem(BRANCHES, THROWAWAY, SeparableBranch)
        monkeypatch.setattr(choices, "BRANCH_TYPES", (*choices.BRANCH_TYPES, THROWAWAY))
        monkeypatch.setattr(spec_module, "BRANCH_TYPES", choices.BRANCH_TYPES)  # bound there at import
    return name, reparam


def make_spec(case, **changes) -> ModelSpec:
    name, reparam = case
    values = dict(width=4, blocks=4, kernel=5, hidden=6, branch=name, reparam=reparam, norm="batch",
                  in_channels=1, input_size=10, num_classes=3)
    values.update(changes)
    return ModelSpec(**values)


def widths(case, norm: str, blocks: int = 4):
    """Unequal per-block widths where the type's width rule allows them in one layer, else one width."""
    return 6 if BRANCHES[case[0]].equal_widths(norm) else [3, 5, 2, 6][:blocks]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def count_flops(model, spec):
    """2 × multiply-accumulates, counted from the convolutions' output shapes and the classifier's weights (as
    tests/models/test_models.py counts them)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += 2 * output[0].numel() * module.in_channels // module.groups * module.kernel_size[0] ** 2

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size, dtype=next(model.parameters()).dtype))
    for h in handles:
        h.remove()
    return total + 2 * model.head.weight.numel()


NORMS = [("batch", "1/sqrt(n)"), ("group", "learnable"), ("none", "1/n"), ("none", "learnable")]


# -- the type and what it declares ------------------------------------------------------------------------------


def test_the_type_declares_the_whole_protocol_and_its_width_rule_matches_its_views(case):
    kind = BRANCHES[case[0]]
    assert isinstance(kind, BranchType) and kind.name == case[0] and kind.reparams[0] == "none"
    spec = make_spec(case, topology="parallel", hidden=widths(case, "batch"))
    net = pack([build(spec, seed=s) for s in range(2)])
    layer = net.layers[0]
    for branch in range(layer.branches):
        for key, view in block_weights(layer, branch).items():
            roles = view_roles(layer, key)  # the crop's axes: hidden and stream ones must be those widths
            assert len(roles) == view.dim() - 1, key
            for size, role in zip(view.shape[1:], roles):
                assert size == {"hidden": layer.hidden[branch], "stream": spec.width}.get(role, size), (key, role)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_unequal_widths_in_a_layer_are_refused_exactly_where_the_type_says(case, norm):
    hidden = [3, 5, 2, 6]
    if BRANCHES[case[0]].equal_widths(norm):
        with pytest.raises(SpecError, match="equal widths for the branches of each layer"):
            make_spec(case, norm=norm, hidden=hidden, topology="parallel")
    else:
        make_spec(case, norm=norm, hidden=hidden, topology="parallel")
    make_spec(case, norm=norm, hidden=hidden, topology="sequential")  # one branch per layer: always fine


def test_reparams_are_validated_against_what_the_type_takes(case):
    name, _ = case
    for reparam in choices.REPARAMS:
        if reparam in BRANCHES[name].reparams:
            make_spec(case, reparam=reparam)
        else:
            with pytest.raises(SpecError, match=f"reparam: got '{reparam}'; allowed: none for branch {name}"):
                make_spec(case, reparam=reparam)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_the_declared_groups_are_the_convolution_and_classifier_weights(case, norm):
    """Weight decay and pruning act on what the model declares (`parameter_groups`): exactly the weights of its
    convolutions and its classifier, never a norm, a bias or α; and the optimizer decays exactly those."""
    spec = make_spec(case, norm=norm, residual_scale="learnable", topology="groups:2")
    net = build(spec, seed=0)
    weights = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.Conv2d)} | {"head.weight"}
    groups = list(net.parameter_groups())
    assert [name for name, *_ in groups] == [name for name, _ in net.named_parameters()]
    assert {name for name, _, decays, _ in groups if decays} == weights
    assert {name for name, _, _, prunable in groups if prunable} == weights
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = PackedOptimizer(net, 1, kind="adam", lr=0.1, weight_decay=0.5, momentum=recipe.TABLE.sgd_momentum,
                                betas=recipe.TABLE.adam_betas, eps=recipe.TABLE.adam_eps)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a weight
    optimizer.step()
    moved = {name for name, p in net.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {name for name in weights if before[name].abs().sum() > 0}


def test_the_engine_asks_the_type_for_the_layout_and_it_computes_the_same(case):
    spec = make_spec(case)
    kind = BRANCHES[case[0]]
    assert use_channels_last(torch.device("cpu"), spec, "fp32") is kind.channels_last_on_cpu
    assert use_channels_last(torch.device("cpu"), spec, "bf16") and use_channels_last(torch.device("cuda"), spec,
                                                                                       "fp32")
    for layout, expected in (("channels_last", True), ("nchw", False)):  # a chosen layout is the layout
        assert all(use_channels_last(torch.device(d), spec, p, layout) is expected
                   for d in ("cpu", "cuda") for p in ("fp32", "bf16"))
    net = build(spec.replace(topology="parallel"), seed=0).double().eval()
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    nchw = net(x)
    net.channels_last = True
    assert rel_err(net(x), nchw) < 1e-10


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_the_memory_estimate_covers_what_autograd_keeps(case, norm):
    """`activations` (the engine's pack-size estimate) bounds the activation values one block keeps for its
    backward per position, and is no more than three times them."""
    spec = make_spec(case, norm=norm, blocks=1, width=8, hidden=12)
    layer = build(spec, seed=0).layers[0]
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.dim() == 4:
            saved[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        layer(x).sum().backward()
    per_position = sum(saved.values()) / (2 * 6 * 6)
    estimate = BRANCHES[case[0]].activations(spec.width, 12, spec.kernel, norm, spec.reparam)
    assert per_position <= estimate <= 3 * per_position


# -- the mathematics ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,scale", NORMS)
@pytest.mark.parametrize("train", [True, False])
def test_the_parallel_layer_equals_its_branches(case, norm, scale, train, randomise):
    """fused == per branch: the broad layer x + Σ s_b·F_b(x) against each branch from its own slices."""
    spec = make_spec(case, norm=norm, residual_scale=scale, topology="parallel", hidden=widths(case, norm))
    for models in (1, 3):
        net = randomise(pack([build(spec, seed=s).double() for s in range(models)]), seed=5).train(train)
        x = torch.randn(5, models * 4, 9, 9, dtype=torch.float64)
        layer = net.layers[0]
        with torch.no_grad():
            assert rel_err(layer(x), x + sum(branch_output(layer, b, x) for b in range(4))) < 1e-10


@pytest.mark.parametrize("norm,scale", NORMS)
def test_every_topology_computes_the_same_blocks(case, norm, scale, randomise):
    spec = make_spec(case, norm=norm, residual_scale=scale, hidden=widths(case, norm))
    seq = randomise(build(spec, seed=3).double(), seed=4).eval()
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        h = stem = seq.stem(x)
        for layer in seq.layers:
            h = h + branch_output(layer, 0, h)
        assert rel_err(seq(x), seq.head(h)) < 1e-10
        shallow = stem + sum(branch_output(layer, 0, stem) for layer in seq.layers)
        par = parallel_from_sequential(seq)
        assert rel_err(par(x), seq.head(shallow)) < 1e-10
        assert rel_err(regroup(par, "sequential")(x), seq(x)) < 1e-12


@pytest.mark.parametrize("topology,norm,scale", [("sequential", "batch", "1"), ("parallel", "batch", "1/n"),
                                                 ("groups:2", "group", "1"), ("parallel", "none", "learnable")])
def test_a_pack_equals_its_models_alone(case, topology, norm, scale, randomise):
    """Outputs, gradients and (BatchNorm) running statistics of a pack are each model's alone."""
    spec = make_spec(case, topology=topology, norm=norm, residual_scale=scale, hidden=widths(case, norm),
                     head="flatten" if norm == "group" else "gap", input_size=8)
    models = [randomise(build(spec, seed=s).double(), seed=s).train() for s in range(3)]
    packed = pack(models)
    x = torch.randn(3, 2, 1, 8, 8, dtype=torch.float64)
    out = packed(x)
    out.square().sum().backward()
    for m, model in enumerate(models):
        alone = model(x[m])
        assert rel_err(out[m], alone) < 1e-10
        alone.square().sum().backward()
    for (name, p), single in zip(packed.named_parameters(), zip(*[m.parameters() for m in models])):
        assert rel_err(p.grad.reshape(3, -1), torch.cat([q.grad.reshape(1, -1) for q in single])) < 1e-10, name
    for unpacked, model in zip(unpack(packed), models):
        for (name, a), b in zip(unpacked.state_dict().items(), model.state_dict().values()):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("head,topology", [("gap", "sequential"), ("flatten", "parallel")])
def test_counts_from_the_spec_equal_the_built_model(case, norm, head, topology):
    """Parameters and FLOPs as trained and merged, from the spec alone, against the modules; equal in every
    topology."""
    spec = make_spec(case, norm=norm, head=head, topology=topology, hidden=widths(case, norm),
                     residual_scale="learnable" if norm == "none" else "1", stem_stride=2)
    model = build(spec, seed=0)
    merged = fuse_for_inference(model)
    assert param_count(model) == spec_params(spec) == param_count(build(spec.replace(topology="groups:2"), seed=0))
    assert param_count(merged) == spec_params(spec, merged=True)
    assert count_flops(model, spec) == flops(spec)
    assert count_flops(merged, spec) == flops(spec, merged=True)


@pytest.mark.parametrize("topology", ["sequential", "parallel", "groups:2"])
def test_the_receptive_field_is_the_gradients_reach(case, topology):
    spec = make_spec(case, blocks=2, norm="none", act="identity", topology=topology, input_size=41, hidden=3)
    model = build(spec, seed=0).double()
    x = torch.randn(1, 1, 41, 41, dtype=torch.float64, requires_grad=True)
    model.features(x)[0, :, 20, 20].sum().backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    assert int(rows.max() - rows.min() + 1) == receptive_field(spec)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("topology", ["sequential", "parallel"])
def test_the_merged_model_equals_the_training_form_in_eval_mode(case, norm, topology, randomise):
    """BatchNorms folded and re-param kernels merged (`fuse`): the same function in eval mode, with fewer
    FLOPs where the type re-parameterises."""
    spec = make_spec(case, norm=norm, topology=topology, hidden=widths(case, norm))
    model = randomise(build(spec, seed=1).double(), seed=2).eval()
    x = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    rng = torch.random.get_rng_state()
    merged = fuse_for_inference(model)
    assert torch.equal(torch.random.get_rng_state(), rng)  # nothing drawn: a caller may hold the RNG seeded
    with torch.no_grad():
        assert rel_err(merged(x), model(x)) < 1e-10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in merged.modules())
    if spec.reparam != "none":
        assert flops(spec, merged=True) < flops(spec) and param_count(merged) < param_count(model)


# -- pruning --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "snip"])
def test_pruning_masks_are_applied_and_kept_through_the_engines_steps(case, method):
    """The masks cover exactly the prunable weights and keep the density per model; the masked weights are zero
    once applied and stay zero through AdamW steps with weight decay (the engine's order: step, then apply)."""
    spec = make_spec(case, topology="parallel", hidden=widths(case, "batch"))
    net = pack([build(spec, seed=s) for s in range(2)])
    x, y = torch.randn(2, 12, 1, 10, 10), torch.arange(12) % 3
    masks = prune.compute_masks(net, method, 0.3, data=(x, y))
    assert set(masks) == {name for name, _, _, prunable in net.parameter_groups() if prunable}
    prune.apply_masks(net, masks)
    optimizer = PackedOptimizer(net, 2, kind="adam", lr=[1e-2, 3e-2], weight_decay=[0.1, 0.2],
                                momentum=recipe.TABLE.sgd_momentum, betas=recipe.TABLE.adam_betas,
                                eps=recipe.TABLE.adam_eps)
    params = dict(net.named_parameters())
    for step in range(3):
        for name, mask in masks.items():
            assert torch.equal(params[name] * (1 - mask), torch.zeros_like(mask)), (step, name)
        out = net(x)
        F.cross_entropy(out.reshape(-1, 3), y.repeat(2)).backward()
        optimizer.step()
        prune.apply_masks(net, masks)
        optimizer.zero_grad()
    views = prune.layer_views(net, {**{n: torch.zeros_like(p) for n, p in params.items()}, **masks})
    for m in range(2):
        kept = sum(v[m].sum().item() for v in views.values())
        assert abs(kept - 0.3 * sum(v[m].numel() for v in views.values())) <= 1


@pytest.mark.parametrize("topology", ["sequential", "parallel"])
def test_crop_gives_the_narrower_dense_network_of_the_mask(case, topology):
    """PreCropping: the cropped spec obeys the type's width rule and holds the mask's weights to within one
    hidden channel per block; crop_init keep copies the kept channels (all of them: the same network)."""
    spec = make_spec(case, width=16, topology=topology, head="flatten", stem_stride=2, input_size=12)
    dense = build(spec, seed=0).double().eval()
    masks = prune.compute_masks(dense, "magnitude", 0.4)
    cropped = build(prune.crop_spec(dense, masks), seed=0)
    kept = sum(m.sum().item() for m in masks.values())
    per_channel = sum(prune.layer_sizes(build(spec.replace(hidden=2)))[n] - prune.layer_sizes(build(spec.replace(
        hidden=1)))[n] for n in prune.layer_sizes(dense) if n.startswith("block"))
    assert abs(sum(prune.layer_sizes(cropped).values()) - kept) <= per_channel
    assert cropped.spec.width < spec.width
    same = build(spec, seed=1).double().eval()
    prune.keep_cropped(dense, masks, same)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(same(x), dense(x))
    small = build(spec.replace(width=6, hidden=4), seed=1).double()
    prune.keep_cropped(dense, masks, small)  # every view cut along its roles' axes
    for i in range(spec.blocks):
        assert all(v.shape[0] == 1 for v in block_weights(*locate(small, i)).values())
