"""α-BN: the statistics each BN layer normalises with are the convex mix of source and batch statistics, α = 0 is
the source model exactly and α = 1 BN on the test batch; the trained model itself never changes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from depthlab.shift.bn import MixedBatchNorm, mixed_layers, with_mixed_bn
from depthlab.shift.methods import Method, TestTimeModel


def bn_layer(channels=3, seed=0):
    bn = torch.nn.BatchNorm2d(channels).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(1 + torch.randn(channels, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=g, dtype=torch.float64))
    return bn.eval()


def batch(n=4, c=3, h=5, w=6, seed=1):
    return 2 + 3 * torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_statistics_are_the_convex_mix_per_channel():
    bn, x = bn_layer(), batch()
    layer = MixedBatchNorm(bn, alpha=0.3)
    mean, var = layer.statistics(x)
    batch_mean = x.mean(dim=(0, 2, 3))
    batch_var = x.var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(mean, 0.7 * bn.running_mean + 0.3 * batch_mean, atol=1e-14, rtol=0)
    assert torch.allclose(var, 0.7 * bn.running_var + 0.3 * batch_var, atol=1e-14, rtol=0)
    expected = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps) \
        * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [1, 4])
def test_alpha_zero_is_the_source_layer_exactly(n):
    bn, x = bn_layer(), batch(n=n)
    assert torch.equal(MixedBatchNorm(bn, 0.0)(x), bn(x))


def test_alpha_one_is_the_test_batch_statistics():
    bn, x = bn_layer(), batch()
    unbiased = MixedBatchNorm(bn, 1.0, unbiased=True)
    mean, var = unbiased.statistics(x)
    assert torch.equal(mean, x.mean(dim=(0, 2, 3))) and torch.equal(var, x.var(dim=(0, 2, 3), unbiased=True))
    # the biased variant is exactly what a BN layer computes in train mode
    train_mode = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    assert torch.allclose(MixedBatchNorm(bn, 1.0, unbiased=False)(x), train_mode, atol=1e-12, rtol=0)
    assert not torch.allclose(unbiased(x), train_mode, atol=1e-6, rtol=0)  # n/(n-1) is visible


def test_a_batch_of_one_normalises_over_its_pixels():
    bn, x = bn_layer(), batch(n=1)
    mean, var = MixedBatchNorm(bn, 1.0).statistics(x)
    assert torch.equal(var, x[0].reshape(3, -1).var(dim=1, unbiased=True))
    assert torch.isfinite(MixedBatchNorm(bn, 0.1)(x)).all()


def test_every_bn_layer_is_swapped_in_a_copy(net):
    before = copy.deepcopy(net.state_dict())
    mixed = with_mixed_bn(net, 0.1)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert len(mixed_layers(mixed)) == n_bn >= 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mixed.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("topology", ["sequential", "parallel"])
@pytest.mark.parametrize("n", [1, 6])
def test_whole_networks_alpha_zero_is_source_and_alpha_one_is_norm(topology, n, small_net):
    model = small_net(topology)
    x = torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 + 1
    with torch.no_grad():
        source = model(x)
    assert torch.equal(TestTimeModel(model, Method("alpha_bn", 0.0))(x), source)
    assert torch.equal(TestTimeModel(model, Method("source"))(x), source)
    norm = TestTimeModel(model, Method("norm"))(x)
    assert torch.equal(TestTimeModel(model, Method("alpha_bn", 1.0))(x), norm)
    assert not torch.allclose(norm, source)
    mixed = TestTimeModel(model, Method("alpha_bn", 0.1))(x)
    assert torch.isfinite(mixed).all() and not torch.allclose(mixed, source) and not torch.allclose(mixed, norm)
    if n > 1:  # the biased variance at α = 1 is train-mode BN, layer by layer
        train = copy.deepcopy(model).train()
        with torch.no_grad():
            assert torch.allclose(with_mixed_bn(model, 1.0, unbiased=False)(x), train(x), atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", [Method("source"), Method("norm"), Method("alpha_bn", 0.3), Method("tent"),
                                    Method("core_reconstructed"), Method("tent", episodic=True)])
def test_the_wrapped_models_state_dict_is_unchanged(method, small_net):
    model = small_net("parallel")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = TestTimeModel(model, method)
    for seed in range(3):
        runner(torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_alpha_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        MixedBatchNorm(bn_layer(), 1.5)
