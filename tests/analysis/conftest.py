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
