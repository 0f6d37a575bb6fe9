"""The measurements the engine records and the analyses use: one implementation, checked against oracles."""

import math

import pytest
import torch
import torch.nn.functional as F

from depthlab.measure import evaluate, geometric_complexity, scores
from depthlab.models import ModelSpec, build, pack

IDENTITY = ((0.0,), (1 / 255,))  # mean 0, std 1/255: the "normalised" input is the pixel value itself


def spec(**changes):
    return ModelSpec(**{**dict(width=4, blocks=3, in_channels=1, input_size=6, num_classes=3), **changes})


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_geometric_complexity_matches_full_jacobians(norm, complexity_oracle):
    torch.set_num_threads(1)
    model = build(spec(norm=norm), seed=0).train()
    x = torch.randint(0, 256, (5, 1, 6, 6), generator=torch.Generator().manual_seed(1)).float()
    value = geometric_complexity(model, x, *IDENTITY)
    assert model.training  # the mode is restored
    assert float(value[0]) == pytest.approx(complexity_oracle(model, x), rel=1e-4)
    assert float(geometric_complexity(model, x, *IDENTITY, batch_size=2)[0]) == pytest.approx(float(value[0]),
                                                                                              rel=1e-5)


def test_geometric_complexity_of_a_pack_is_per_model(complexity_oracle):
    models = [build(spec(), seed=s) for s in (0, 1)]
    x = torch.randint(0, 256, (4, 1, 6, 6), generator=torch.Generator().manual_seed(2)).float()
    packed = geometric_complexity(pack(models), x, *IDENTITY)
    assert packed.tolist() == pytest.approx([complexity_oracle(m, x) for m in models], rel=1e-4)


def test_evaluate_is_cross_entropy_and_accuracy_in_eval_mode():
    model = build(spec(), seed=3).train()
    x = torch.randint(0, 256, (7, 1, 6, 6), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    mean, std = (0.4,), (0.3,)
    result = scores(model, x, y, mean, std, batch_size=3)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model((x.float() / 255 - 0.4) / 0.3)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    loss, acc = evaluate(model, x[:0], y[:0], mean, std)
    assert math.isnan(float(loss[0])) and math.isnan(float(acc[0]))


def test_the_erf_of_one_depthwise_layer_spans_its_kernel():
    from depthlab.measure import centred_square_side

    for k in (3, 7, 13):
        conv = torch.nn.Conv2d(2, 2, k, padding=k // 2, groups=2, bias=False)
        torch.nn.init.uniform_(conv.weight, 0.1, 1.0)
        x = torch.randn(4, 2, 31, 31, requires_grad=True)
        (grad,) = torch.autograd.grad(conv(x)[:, :, 15, 15].sum(), x)
        mass = grad.abs().sum(dim=(0, 1))
        assert centred_square_side(mass, 1.0) == k and centred_square_side(mass, 0.0001) <= 3


def test_the_erf_grows_with_depth_in_a_sequential_stack_and_not_in_a_parallel_one():
    from depthlab.measure import effective_receptive_field
    from depthlab.models import receptive_field

    x = torch.randint(0, 256, (8, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for branch, k in (("conv", 3), ("lk", 7)):
        sides = {}
        for topology in ("sequential", "parallel"):
            for n in (1, 8):
                s = spec(width=8, blocks=n, kernel=k, branch=branch, topology=topology, input_size=32,
                         num_classes=10)
                full, = effective_receptive_field(build(s, seed=0), x, (0.5,), (0.25,), fractions=(1.0,))[0]
                assert full <= receptive_field(s)  # all of the mass lies within the theoretical field
                sides[topology, n] = effective_receptive_field(build(s, seed=0), x, (0.5,), (0.25,),
                                                               fractions=(0.99,))[0, 0]
        assert sides["sequential", 8] > sides["sequential", 1]
        assert sides["parallel", 8] == sides["parallel", 1]
