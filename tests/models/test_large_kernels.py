"""Large-kernel branches: the broad layer equals its branches, re-parameterised blocks merge exactly, counts and
reach follow from the spec (UniRepLKNet's block and Dilated Reparam Block)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.errors import SpecError
from depthlab.models import (DILATED_BRANCHES, REPARAMS, ModelSpec, branch_output, build, dense_kernel, flops,
                             fuse_for_inference, param_count, receptive_field, spec_params)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def lk(**changes):
    values = dict(width=4, blocks=3, kernel=7, hidden=6, branch="lk", norm="batch", in_channels=1, input_size=16,
                  num_classes=3)
    values.update(changes)
    return ModelSpec(**values)


def test_the_dilated_table_is_unireplknets():
    assert DILATED_BRANCHES[13] == ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))
    assert sorted(DILATED_BRANCHES) == [5, 7, 9, 11, 13, 15, 17]
    for k, pairs in DILATED_BRANCHES.items():
        assert all((kk - 1) * r + 1 <= k for kk, r in pairs)  # every equivalent kernel fits in K×K


@pytest.mark.parametrize("kernel,reparam", [(k, r) for k in DILATED_BRANCHES for r in REPARAMS])
def test_merged_model_equals_the_training_time_model_in_eval_mode(kernel, reparam, randomise):
    spec = lk(kernel=kernel, reparam=reparam, topology="parallel", input_size=2 * kernel)
    model = randomise(build(spec, seed=1).double(), seed=2).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(3, 1, 2 * kernel, 2 * kernel, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-10
        layer = fused.layers[0]
        assert len(layer.dw_extra) == 0 and len(layer.dw_norms) == 0 and layer.dw.kernel_size == (kernel, kernel)
        assert all(m.dilation == (1, 1) for m in fused.modules() if isinstance(m, nn.Conv2d))  # no dilated conv
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert param_count(fused) == spec_params(spec, merged=True)
    # float32 too
    model32, x32 = randomise(build(spec, seed=1), seed=2).eval(), x.float()
    with torch.no_grad():
        assert rel_err(fuse_for_inference(model32)(x32), model32(x32)) < 1e-5
    # in train mode BatchNorm uses the batch's statistics: the two forms differ (documented in fuse_for_inference)
    model.train()
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) > 1e-3


@pytest.mark.parametrize("kernel,dilation", [(3, 2), (3, 5), (5, 2), (7, 2), (9, 2)])
def test_a_dilated_kernel_is_a_dense_one_with_zeros(kernel, dilation):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1, kernel, kernel, generator=g, dtype=torch.float64)
    x = torch.randn(2, 4, 23, 23, generator=g, dtype=torch.float64)
    span = (kernel - 1) * dilation + 1
    dilated = F.conv2d(x, w, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=4)
    dense = F.conv2d(x, dense_kernel(w, dilation, span + 4), padding=(span + 4) // 2, groups=4)
    assert rel_err(dense, dilated) < 1e-12


def test_lk_topologies_share_blocks_and_parameters(randomise):
    spec = lk(reparam="dilated", blocks=4)
    seq = randomise(build(spec, seed=3).double(), seed=4).eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    h = seq.stem(x)
    with torch.no_grad():
        for layer in seq.layers:
            h = h + branch_output(layer, 0, h)
        assert rel_err(seq(x), seq.head(h)) < 1e-10
    counts = {param_count(build(spec.replace(topology=t), seed=0)) for t in ("sequential", "parallel", "groups:2")}
    assert counts == {spec_params(spec)}


@pytest.mark.parametrize("branch,norm,reparam,head", [
    (b, n, r, h) for b, n, r, h in itertools.product(["conv", "lk"], ["batch", "group", "none"], REPARAMS,
                                                      ["gap", "flatten"])
    if b == "lk" or r == "none"])
def test_parameter_counts_from_the_spec(branch, norm, reparam, head):
    spec = ModelSpec(width=4, blocks=2, kernel=5, hidden=3, branch=branch, norm=norm, reparam=reparam, head=head,
                     input_size=10, residual_scale="learnable" if norm == "none" else "1")
    model = build(spec, seed=0)
    assert param_count(model) == spec_params(spec)
    assert param_count(fuse_for_inference(model)) == spec_params(spec, merged=True)
    if reparam != "none":
        assert flops(spec, merged=True) < flops(spec)
    else:
        assert flops(spec, merged=True) == flops(spec)


def test_receptive_field_of_a_large_kernel():
    assert receptive_field(lk(kernel=13, blocks=8, topology="parallel", stem_stride=1)) == 3 + 12
    assert receptive_field(lk(kernel=13, blocks=8, topology="sequential", stem_stride=1)) == 3 + 8 * 12
    assert receptive_field(lk(kernel=13, blocks=8, topology="groups:2", stem_stride=2)) == 3 + 2 * 12 * 2
    conv = ModelSpec(kernel=3, blocks=8, topology="parallel")
    assert receptive_field(conv) == 3 + 4


def test_bad_large_kernel_specs_name_the_allowed_values():
    with pytest.raises(SpecError, match=r"kernel: got 3; allowed: one of 5, 7, 9, 11, 13, 15, 17"):
        lk(kernel=3, reparam="dilated")
    with pytest.raises(SpecError, match="reparam: got 'dilated'; allowed: none for branch conv"):
        ModelSpec(reparam="dilated", kernel=7)
    with pytest.raises(SpecError, match="branch: got 'big'; allowed: conv, lk"):
        ModelSpec(branch="big")
    with pytest.raises(SpecError, match="reparam"):
        lk(reparam="wide")
    assert lk(kernel=3).reparam == "none"  # any odd K without a re-param


def test_channels_last_reaches_the_depthwise_conv_of_a_one_channel_model():
    """A (B, 1, H, W) input already counts as channels_last-contiguous: the layout must still be switched, or
    the whole network stays NCHW (the depthwise backward is several times slower there on CPU)."""
    model = build(lk(kernel=7, input_size=8), seed=0)
    model.channels_last = True
    seen = []
    model.layers[0].dw.register_forward_pre_hook(
        lambda mod, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)
                                     and not inp[0].is_contiguous()))
    model(torch.randn(2, 1, 8, 8))
    assert seen == [True]


@pytest.mark.parametrize("reparam", REPARAMS)
def test_under_cpu_bf16_autocast_the_depthwise_convs_compute_in_float32(reparam):
    """oneDNN's bf16 depthwise weight gradient is several times slower than float32's on a CPU
    (bench/lk_speed.py): the lk branch runs its depthwise convs and their norms in float32 under bf16 autocast,
    and the pointwise convs in bf16. The gradients reach every weight either way."""
    net = build(lk(reparam=reparam), seed=0, models=2).train()
    net.channels_last = True
    seen = {}
    layer = net.layers[0]
    hooks = [conv.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.dtype))
             for name, conv in [("dw", layer.dw), ("pw1", layer.pw1),
                                *((f"dw_extra.{j}", c) for j, c in enumerate(layer.dw_extra))]]
    x = torch.randn(2, 8, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    for hook in hooks:
        hook.remove()
    out.float().sum().backward()
    assert seen.pop("pw1") == torch.bfloat16
    assert seen and set(seen.values()) == {torch.float32}, seen
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    with torch.no_grad():  # and it computes the float32 network, to bf16's round-off
        assert rel_err(out.float(), net(x)) < 0.05
