"""Fixtures for the shift tests: small BN networks with non-trivial statistics, and a store holding two "trained"
runs (random weights, saved like `depthlab run --save-weights` saves them; nothing is trained, so it takes no
time) on generated data."""

from __future__ import annotations

import pytest
import torch

from depthlab.models import ModelSpec, build, param_count
from depthlab.spec.config import RunConfig
from depthlab.train.engine import RECIPE
from depthlab.results.store import Store, owner_token
from depthlab.results.weights import save_weights


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise_bn(model, seed=0):
    """Non-trivial BN affines and running statistics, so that source, norm and the mixes all differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def _small_net(topology="sequential", blocks=3, dtype=torch.float64, seed=0):
    spec = ModelSpec(width=4, blocks=blocks, kernel=3, topology=topology, stem_stride=2, in_channels=1,
                     input_size=12, num_classes=5)
    return randomise_bn(build(spec, seed=seed), seed).to(dtype).eval()


@pytest.fixture
def small_net():
    """small_net(topology="sequential", blocks=3, dtype=float64, seed=0): a 12×12, 5-class BN network in eval
    mode with random BN statistics."""
    return _small_net


@pytest.fixture
def net():
    return _small_net()


RUN = dict(dataset="synthetic", val_split=32, train_subset=128, test_subset=48, width=4, blocks=2, stem_stride=2,
           batch_size=32, epochs=1)


def _make_store(path, topologies=("sequential", "parallel"), seeds=(0,), weights=True, **fields) -> list[str]:
    """A store of done runs (random weights with random BN statistics) whose weights are saved next to it;
    `fields` change the runs' config."""
    configs = [RunConfig(**{**RUN, **fields}, topology=t, seed=s) for s in seeds for t in topologies]
    with Store(path) as store:
        ids = store.add_runs([c.to_dict() for c in configs], sweep="fake", recipe=RECIPE)
        owner = owner_token()
        store.claim(ids, owner)
        for config, rid in zip(configs, ids):
            model = randomise_bn(build(config.model_spec(), seed=config.seed), config.seed)
            if weights:
                save_weights(path, rid, config, model.state_dict())
            store.finish(rid, owner, status="done", final={"test_acc": 0.1, "test_loss": 2.3}, history=[],
                         params=param_count(model), q=5.0, seconds=1.0, env={})
    return ids


@pytest.fixture
def make_store():
    """make_store(path, topologies=("sequential", "parallel"), seeds=(0,), weights=True) -> run ids."""
    return _make_store
