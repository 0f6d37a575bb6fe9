"""One torch thread for the analysis tests: their tensors are tiny, and extra intra-op threads only add
synchronisation (on a busy 2-core machine a single tiny convolution became 40x slower)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn(model, seed=0):
    """Non-trivial BatchNorm affines and running statistics, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if "norm." in name and t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
    return model


@pytest.fixture
def randomise_bn():
    return _randomise_bn
