"""TENT and the reconstructed Core loss: only BN affines change, one step lowers the loss on a fixed batch, the
predictions returned are those from before the step, and an episodic method starts every batch afresh."""

import copy
import math

import pytest
import torch

from depthlab.errors import SpecError
from depthlab.shift.methods import (Method, TestTimeModel, class_correlation_loss, softmax_entropy)
from depthlab.shift.stream import measure, stream_order


def inputs(n=8, seed=0):
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5 + 0.5


def test_tent_changes_only_bn_weight_and_bias(net):
    runner = TestTimeModel(net, Method("tent"))
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner(inputs())
    after = runner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    affine = {n for n in runner.adapted_parameters()}
    assert affine and all(n.endswith((".weight", ".bias")) and "norm" in n for n in affine)
    assert changed == affine  # every BN affine moved, nothing else did (source statistics included)


def test_one_tent_step_lowers_the_entropy_of_a_fixed_batch(net):
    x = inputs(16)
    runner = TestTimeModel(net, Method("tent"))
    first = runner(x)
    with torch.no_grad():
        again = runner.model(x)
    assert softmax_entropy(again).mean() < softmax_entropy(first).mean()


def test_tent_returns_the_predictions_from_before_its_step(net):
    x = inputs()
    runner = TestTimeModel(net, Method("tent"))
    returned = runner(x)
    with torch.no_grad():
        train_mode = copy.deepcopy(net).train()(x)  # TENT's BN is train-mode BN; no step taken yet
        after_step = runner.model(x)
    assert torch.allclose(returned, train_mode, atol=1e-10, rtol=0)
    assert not torch.allclose(returned, after_step, atol=1e-10, rtol=0)


def test_online_tent_keeps_what_it_learnt_and_episodic_starts_afresh(net):
    x, other = inputs(seed=0), inputs(seed=1)
    online = TestTimeModel(net, Method("tent"))
    assert not torch.equal(online(x), online(x))  # the second pass sees the adapted affines
    episodic = TestTimeModel(net, Method("tent", episodic=True))
    initial = {k: v.clone() for k, v in episodic.model.state_dict().items()}
    first = episodic(x)
    episodic(other)
    assert torch.equal(episodic(x), first)
    episodic.reset()
    assert all(torch.equal(v, initial[k]) for k, v in episodic.model.state_dict().items())
    assert episodic.optimizer.state_dict()["state"] == {}  # Adam's moments are reset too
    assert Method("tent", episodic=True).label == "tent_episodic"


def test_the_class_correlation_loss_is_the_off_diagonal_mass():
    k = 4
    confident = torch.full((6, k), -30.0, dtype=torch.float64)
    confident[torch.arange(6), torch.arange(6) % k] = 30.0
    assert float(class_correlation_loss(confident)) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.zeros(5, k, dtype=torch.float64)
    assert float(class_correlation_loss(uniform)) == pytest.approx((k - 1) / k, abs=1e-12)
    logits = torch.randn(7, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = logits.softmax(1)
    c = p.t() @ p / 7
    rows = c / c.sum(1, keepdim=True)
    assert float(class_correlation_loss(logits)) == pytest.approx(float((rows.sum() - rows.trace()) / k), abs=1e-12)


def test_a_core_reconstructed_step_lowers_its_loss_on_a_fixed_batch(net):
    x = inputs(16)
    runner = TestTimeModel(net, Method("core_reconstructed", 0.1))
    first = runner(x)
    with torch.no_grad():
        again = runner.model(x)
    assert class_correlation_loss(again) < class_correlation_loss(first)
    assert Method("core_reconstructed", 0.1).label == "core_reconstructed:0.1"


def test_methods_are_validated_and_labelled():
    with pytest.raises(SpecError, match="method: got 'tnt'; allowed: source, norm, alpha_bn, tent"):
        Method("tnt")
    with pytest.raises(SpecError, match="alpha"):
        Method("alpha_bn", 1.5)
    assert (Method("source").alpha, Method("norm").alpha, Method("tent").alpha) == (0.0, 1.0, 1.0)
    assert Method("alpha_bn").label == "alpha_bn:0.1" and Method("alpha_bn", 0.05).label == "alpha_bn:0.05"
    assert Method("norm", episodic=True).label == "norm"  # nothing to reset
    assert Method("alpha_bn", 1).alpha == 1.0 and isinstance(Method("alpha_bn", 1).alpha, float)


def test_the_stream_order_depends_on_the_seed_alone():
    assert torch.equal(stream_order(50, 3), stream_order(50, 3))
    assert not torch.equal(stream_order(50, 3), stream_order(50, 4))
    assert sorted(stream_order(50, 3).tolist()) == list(range(50))


def test_measure_streams_batches_and_reports_a_blow_up_as_diverged(small_net):
    model = small_net(dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 1, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 5, (10,), generator=g)
    out = measure(model, x, y, (0.5,), (0.25,), Method("norm"), 4, seed=0)  # batches 4, 4, 2
    assert out["status"] == "done" and out["examples"] == 10 and 0 <= out["accuracy"] <= 1
    assert math.isfinite(out["loss"])
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).weight.fill_(float("nan"))
    bad = measure(model, x, y, (0.5,), (0.25,), Method("source"), 4, seed=0)
    assert bad["status"] == "diverged" and bad["loss"] is None and bad["accuracy"] is None


@pytest.mark.parametrize("name", ["source", "norm", "alpha_bn"])
def test_batches_of_one_taken_together_predict_as_one_at_a_time(small_net, name):
    """A method that does not adapt predicts a batch of one from its example alone: `measure` computes its
    batches of one many at a time, each example with its own statistics; the predictions are those of a forward
    pass per example."""
    from depthlab.data import normalise
    from depthlab.shift import stream

    model = small_net(dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (stream.ALONE_AT_ONCE + 9, 1, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 5, (len(x),), generator=g)
    one = TestTimeModel(model, Method(name))
    with torch.no_grad():
        logits = torch.cat([one(normalise(x[i:i + 1], (0.5,), (0.25,))) for i in stream_order(len(x), 3)])
    labels = y[stream_order(len(x), 3)]
    out = measure(model, x, y, (0.5,), (0.25,), Method(name), 1, seed=3)
    assert out["accuracy"] == (logits.argmax(1) == labels).double().mean().item()
    assert out["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)


def test_an_adaptive_method_takes_its_batches_of_one_one_at_a_time(net):
    with pytest.raises(ValueError, match="adapts batch by batch"):
        TestTimeModel(net, Method("tent")).each_example_alone()
