"""Fixtures every test package may use."""

import shutil
from pathlib import Path

import pytest
import torch

STORE_V0 = Path(__file__).parent / "fixtures" / "store_v0"  # written by depthlab 0.1.0, before schema versions


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


@pytest.fixture
def old_store(tmp_path) -> Path:
    """A copy of the committed store (and its weights) that depthlab wrote before schema versions existed."""
    path = tmp_path / "store.sqlite"
    shutil.copy(STORE_V0 / "store.sqlite", path)
    shutil.copytree(STORE_V0 / "store.sqlite.weights", tmp_path / "store.sqlite.weights")
    return path


def _randomise(model, seed=0):
    """Non-trivial norm affines, running statistics, α and biases, so that no test passes on zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") or "norm" in name or name.endswith("bias2") or name.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return model


@pytest.fixture
def randomise():
    return _randomise
