"""Geometric complexity against cases known in closed form and against a full autograd Jacobian."""

import pytest
import torch
from torch import nn

from depthlab.analysis.complexity import geometric_complexity
from depthlab.models import ModelSpec, build



def test_linear_model_is_the_squared_frobenius_norm_of_w():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 7)).double()
    x = torch.randn(9, 2, 5, 5, dtype=torch.float64)
    expected = model[1].weight.pow(2).sum().item()
    assert geometric_complexity(model, x) == pytest.approx(expected, rel=1e-12)
    assert geometric_complexity(model, x, batch_size=4) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_residual_net_matches_the_autograd_jacobian(norm):
    model = build(ModelSpec(width=4, blocks=3, norm=norm, in_channels=1, input_size=6, num_classes=3),
                  seed=0).double()
    model.train()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value = geometric_complexity(model, x)
    assert model.training  # the mode is restored
    model.eval()
    expected = sum(torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).pow(2).sum().item()
                   for xi in x) / len(x)
    assert value == pytest.approx(expected, rel=1e-10)
