"""The mathematics of the model family: fused == per-branch, topologies agree on shared weights, packs == models."""

import pytest
import torch
from torch import nn

from depthlab.errors import SpecError
from depthlab.models import (ModelSpec, ResidualNet, branch_output, build, flops, fuse_for_inference, pack, param_count,
                             parallel_from_sequential, q_ratio, receptive_field, regroup, spec_params, unpack)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


NORMS = [("batch", "1/sqrt(n)"), ("group", "learnable"), ("none", "1/n"), ("none", "learnable")]


@pytest.mark.parametrize("norm,scale", NORMS)
@pytest.mark.parametrize("train", [True, False])
def test_parallel_fused_equals_branch_by_branch(norm, scale, train, randomise):
    spec = ModelSpec(width=6, blocks=4, kernel=3, hidden=8, topology="parallel", norm=norm, residual_scale=scale)
    model = randomise(build(spec, seed=1).double(), seed=2).train(train)
    for models in (1, 3):
        net = model if models == 1 else randomise(pack([build(spec, seed=s).double() for s in range(3)]))
        net.train(train)
        x = torch.randn(5, models * 6, 9, 9, dtype=torch.float64)
        layer = net.layers[0]
        fused = layer(x)
        reference = x + sum(branch_output(layer, b, x) for b in range(4))
        assert rel_err(fused, reference) < 1e-10


@pytest.mark.parametrize("norm,scale", NORMS)
def test_topologies_agree_on_the_same_weights(norm, scale, randomise):
    spec = ModelSpec(width=4, blocks=4, kernel=5, topology="sequential", norm=norm, residual_scale=scale,
                     in_channels=2, input_size=12)
    seq = randomise(build(spec, seed=3).double(), seed=4).eval()
    x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    # sequential == an explicit loop over blocks, each computed from its own slices
    h = seq.stem(x)
    for layer in seq.layers:
        h = h + branch_output(layer, 0, h)
    assert rel_err(seq(x), seq.head(h)) < 1e-10
    # groups:n is the sequential network; groups:1 is the parallel one
    assert rel_err(regroup(seq, "groups:4")(x), seq(x)) < 1e-10
    par = parallel_from_sequential(seq)
    stem = seq.stem(x)
    shallow = stem + sum(branch_output(layer, 0, stem) for layer in seq.layers)
    assert rel_err(par(x), seq.head(shallow)) < 1e-10
    assert rel_err(regroup(par, "groups:1")(x), par(x)) < 1e-10
    # groups:2: two stages, each the sum of two of the deep network's blocks
    mid = regroup(seq, "groups:2")
    h = stem + branch_output(seq.layers[0], 0, stem) + branch_output(seq.layers[1], 0, stem)
    h = h + branch_output(seq.layers[2], 0, h) + branch_output(seq.layers[3], 0, h)
    assert rel_err(mid(x), seq.head(h)) < 1e-10
    # and back: parallel → sequential restores the original
    assert rel_err(regroup(par, "sequential")(x), seq(x)) < 1e-12


@pytest.mark.parametrize("head", ["gap", "flatten"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_equal_parameters_and_flops_across_topologies(head, norm):
    counts, flop_counts = set(), set()
    for topology in ("sequential", "parallel", "groups:2", "groups:4"):
        spec = ModelSpec(width=8, blocks=8, kernel=3, hidden=12, topology=topology, head=head, norm=norm,
                         stem_stride=2, input_size=28)
        model = build(spec)
        assert param_count(model) == spec_params(spec)
        counts.add(param_count(model))
        measured = count_flops(model, spec)
        assert measured == flops(spec)
        flop_counts.add(measured)
    assert len(counts) == 1 and len(flop_counts) == 1


def count_flops(model, spec):
    """2 × multiply-accumulates, counted from the convolutions' output shapes and the classifier's weights."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += 2 * output[0].numel() * module.in_channels // module.groups * module.kernel_size[0] ** 2

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size))
    for h in handles:
        h.remove()
    return total + 2 * model.head.weight.numel()


@pytest.mark.parametrize("topology,norm,scale", [("sequential", "batch", "1"), ("parallel", "batch", "1/n"),
                                                 ("groups:2", "group", "1"), ("sequential", "none", "learnable")])
def test_pack_equals_separate_models(topology, norm, scale, randomise):
    spec = ModelSpec(width=8, blocks=4, kernel=3, topology=topology, norm=norm, residual_scale=scale,
                     head="flatten" if norm == "group" else "gap", input_size=10)
    singles = [randomise(build(spec, seed=s), seed=s) for s in range(3)]
    packed = pack([build(spec, seed=s) for s in range(3)])
    packed.load_state_dict(pack(singles).state_dict())
    xs = torch.randn(3, 4, 1, 10, 10)
    targets = torch.randint(0, 10, (3, 4))
    out = packed(xs)
    loss = sum(nn.functional.cross_entropy(out[m], targets[m]) for m in range(3))
    loss.backward()
    for m, single in enumerate(singles):
        o = single(xs[m])
        nn.functional.cross_entropy(o, targets[m]).backward()
        assert rel_err(out[m], o) < 1e-6
        for (name, p_pack), (_, p_single) in zip(packed.named_parameters(), single.named_parameters()):
            g = p_pack.grad.reshape(3, -1)[m]
            assert rel_err(g, p_single.grad.reshape(-1)) < 1e-5, name
    if norm == "batch":
        for m, (unpacked, single) in enumerate(zip(unpack(packed), singles)):
            for (name, b1), (_, b2) in zip(unpacked.named_buffers(), single.named_buffers()):
                assert torch.allclose(b1.float(), b2.float(), rtol=1e-6, atol=1e-7), name


def test_pack_unpack_roundtrip(randomise):
    spec = ModelSpec(width=4, blocks=2)
    models = [randomise(build(spec, seed=s), s) for s in range(4)]
    for a, b in zip(models, unpack(pack(models))):
        for t1, t2 in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(t1, t2)
    with pytest.raises(ValueError):
        pack([build(spec), build(spec.replace(width=8))])


@pytest.mark.parametrize("topology", ["sequential", "parallel"])
def test_fuse_for_inference_matches_eval(topology, randomise):
    spec = ModelSpec(width=8, blocks=3, topology=topology, kernel=5, norm="batch", residual_scale="1/sqrt(n)")
    model = randomise(build(spec, seed=0).double(), seed=5).eval()
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    assert rel_err(fused(x), model(x)) < 1e-10


@pytest.mark.parametrize("rule", [dict(residual_scale="learnable"), dict(init="skipinit")])
def test_learnable_scale_starts_as_identity(rule):
    spec = ModelSpec(width=8, blocks=5, topology="sequential", **rule)
    model = build(spec, seed=0)
    x = torch.randn(2, 8, 28, 28)
    for layer in model.layers:
        assert torch.equal(layer(x), x)
        assert layer.alpha.requires_grad and float(layer.alpha.detach().abs().sum()) == 0.0
    # ... and the gradient of α is not zero, so training moves it
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert any(float(layer.alpha.grad.abs().sum()) > 0 for layer in model.layers)


def test_fixup_initialisation():
    spec = ModelSpec(width=8, blocks=16, norm="none", init="fixup")
    model = build(spec, seed=0)
    assert float(model(torch.randn(3, 1, 28, 28)).detach().abs().sum()) == 0.0  # zero classifier
    for layer in model.layers:
        assert float(layer.conv2.weight.abs().sum()) == 0.0
        std = float(layer.conv1.weight.std())
        expected = (2 / (8 * 9)) ** 0.5 * 16 ** -0.5
        assert abs(std - expected) / expected < 0.2


def test_receptive_field_matches_gradient_support():
    for topology in ("sequential", "parallel", "groups:2"):
        spec = ModelSpec(width=2, blocks=4, kernel=3, topology=topology, norm="none", act="identity",
                         input_size=31)
        model = build(spec, seed=0).double()
        x = torch.randn(1, 1, 31, 31, dtype=torch.float64, requires_grad=True)
        model.features(x)[0, :, 15, 15].sum().backward()
        rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
        assert int(rows.max() - rows.min() + 1) == receptive_field(spec)
    assert receptive_field(ModelSpec(blocks=8, kernel=3)) == 3 + 8 * 4
    assert receptive_field(ModelSpec(blocks=8, kernel=3, topology="parallel")) == 3 + 4


def test_q_ratio():
    spec = ModelSpec(width=16, blocks=2)
    assert q_ratio(spec, 60000) == pytest.approx(60000 * 10 / spec_params(spec))


@pytest.mark.parametrize("field,value,allowed", [
    ("kernel", 4, "odd"), ("kernel", 33, "odd"), ("topology", "groups:3", "groups:g"), ("norm", "layer", "batch"),
    ("act", "tanh", "relu"), ("head", "mlp", "gap"), ("init", "xavier", "fixup"), ("residual_scale", "1/m", "1/n"),
    ("width", 0, "positive"), ("stem_stride", 3, "1 or 2"),
])
def test_invalid_specs_name_field_and_allowed_values(field, value, allowed):
    with pytest.raises(SpecError) as info:
        ModelSpec(blocks=4, **{field: value})
    assert info.value.field == field and allowed in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_one_seed_gives_the_same_blocks_in_every_topology(norm):
    """A sequential/parallel pair of one seed differs in its wiring alone (same blocks, same initial values)."""
    spec = ModelSpec(width=4, blocks=8, kernel=3, norm=norm, input_size=12)
    seq = build(spec, seed=7)
    x = torch.randn(2, 1, 12, 12)
    for topology in ("parallel", "groups:2", "groups:4"):
        other = build(spec.replace(topology=topology), seed=7)
        assert torch.allclose(regroup(seq, topology).eval()(x), other.eval()(x))


def test_branch_initialisation_does_not_depend_on_the_topology():
    """Each branch's last conv starts with the fan-in of one branch, not of the broad layer."""
    spec = ModelSpec(width=16, blocks=8, kernel=3)
    stds = {}
    for topology in ("sequential", "parallel"):
        torch.manual_seed(0)
        net = ResidualNet(spec.replace(topology=topology))  # the raw constructor, without build's rewiring
        stds[topology] = torch.cat([layer.conv2.weight.flatten() for layer in net.layers]).std().item()
    assert stds["parallel"] == pytest.approx(stds["sequential"], rel=0.05)


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_channels_last_heads_give_the_same_logits_and_a_channels_last_gradient(head):
    """The head reads channels_last activations through their NHWC view: the logits are those of the NCHW path,
    and the gradient of its activation's output is channels_last (an NCHW one sends the activation's and the
    norm's backward down the CPU's slow strided path)."""
    import torch

    from depthlab.models import ModelSpec, build, pack

    spec = ModelSpec(width=4, blocks=2, kernel=3, head=head, in_channels=1, input_size=12, num_classes=10)
    net = pack([build(spec, seed=s) for s in range(3)])
    x = torch.randn(3, 5, 1, 12, 12)
    nchw = net(x)
    feats = net.features(net.to_packed_input(x).to(memory_format=torch.channels_last)).detach().requires_grad_()
    assert feats.is_contiguous(memory_format=torch.channels_last) and not feats.is_contiguous()
    grads = []

    def keep_gradient(module, args, out):
        out.register_hook(grads.append)

    net.head.act.register_forward_hook(keep_gradient)
    logits = net.head(feats)
    assert torch.allclose(logits, nchw, atol=1e-5)
    logits.square().sum().backward()
    (grad,) = grads
    assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()


def test_a_changed_residual_scale_is_used_after_a_forward(randomise):
    """λ = 1 spares its multiplication; a λ loaded afterwards (a pack's models' λ, a state dict) is applied."""
    one = ModelSpec(width=4, blocks=2, topology="sequential", residual_scale="1", input_size=8)
    model, scaled = build(one, seed=0), randomise(build(one.replace(residual_scale="1/n"), seed=0))
    x = torch.randn(2, 1, 8, 8)
    model.eval(), scaled.eval()
    model(x)  # the unit scale is seen here
    model.load_state_dict(scaled.state_dict())
    assert torch.equal(model(x), scaled(x))  # the same weights through the same operators: bit for bit
    mixed = pack([randomise(build(one, seed=1), seed=1), scaled]).eval()
    # a pack computes through grouped convolutions, whose sums the CPU's kernels may order otherwise than a
    # plain convolution's (one float32 step apart on AVX2): a skipped λ = 1/n would be off by far more
    assert rel_err(mixed(torch.stack([x, x]))[1], scaled(x)) < 1e-6
