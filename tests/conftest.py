"""Fixtures every test package may use."""

import pytest
import torch


def _jacobian_complexity(model, x: torch.Tensor) -> float:
    """The test oracle of the geometric complexity: mean over the examples of ‖∂logits/∂x‖_F², each example's
    full Jacobian computed by autograd on its own (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        total = sum(torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).pow(2).sum().item()
                    for xi in x)
    finally:
        model.train(was_training)
    return total / len(x)


@pytest.fixture
def complexity_oracle():
    return _jacobian_complexity
