"""Lesions: deleting a block is exact and reversible, and a trained residual network survives it far better than
a trained plain network of the same shape (Veit et al., 2016)."""

import json

import pytest
import torch
import torch.nn.functional as F

import depthlab.cli.main as cli_main
from depthlab.analysis.lesion import PlainNet, lesion_study, lesioned, plain_lesioned
from depthlab.analysis.trainer import evaluate, train
from depthlab.errors import DepthlabError
from depthlab.models import ModelSpec, block_weights, build, locate



def spec_of(**changes):
    values = dict(width=8, blocks=6, kernel=3, norm="batch", in_channels=1, input_size=8, num_classes=4)
    values.update(changes)
    return ModelSpec(**values)


def pattern_task(n, seed, classes=4, size=8):
    """Four smooth templates (fixed) plus noise: learnable in a few hundred steps by a tiny network."""
    g = torch.Generator().manual_seed(1234)
    templates = F.interpolate(torch.randn(classes, 1, 3, 3, generator=g), size=(size, size), mode="bilinear")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return templates[y] + 0.5 * torch.randn(n, 1, size, size, generator=g), y



@pytest.mark.parametrize("topology", ["sequential", "parallel", "groups:2"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_lesion_deletes_exactly_that_block_and_restores_it(topology, norm, randomise_bn):
    model = randomise_bn(build(spec_of(topology=topology, norm=norm, blocks=4), seed=1).double()).eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        intact = model(x)
        with lesioned(model, 2):
            hurt = model(x)
        # reference: the same model with block 2's branch taken out by hand (conv2 and its bias zero)
        ref = build(model.spec, seed=1).double()
        ref.load_state_dict(state)
        ref.eval()
        views = block_weights(*locate(ref, 2))
        views["conv2.weight"].zero_()
        if "bias2" in views:
            views["bias2"].zero_()
        expected = ref(x)
    assert torch.equal(hurt, expected)
    assert not torch.allclose(hurt, intact)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_lesion_of_a_zero_branch_changes_nothing(randomise_bn):
    model = randomise_bn(build(spec_of(blocks=4), seed=2).double()).eval()
    with torch.no_grad():
        block_weights(*locate(model, 1))["conv2.weight"].zero_()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad(), lesioned(model, 1):
        hurt = model(x)
    assert torch.equal(hurt, model(x).detach())


def test_lesion_restores_weights_after_an_error():
    model = build(spec_of(blocks=3), seed=3)
    before = model.layers[1].conv2.weight.clone()
    with pytest.raises(RuntimeError):
        with lesioned(model, 1):
            assert model.layers[1].conv2.weight.abs().sum() == 0
            raise RuntimeError("boom")
    assert torch.equal(model.layers[1].conv2.weight, before)


def test_plain_network_and_its_lesion():
    net = build(spec_of(blocks=3), seed=4).double().eval()
    plain = PlainNet(net).eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        h = net.stem(x)
        for layer in net.layers:
            h = layer.residual(h)
        assert torch.equal(plain(x), net.head(h)[0])
        with plain_lesioned(plain, 1):  # block 1 skipped: its input goes on to block 2 unchanged
            hurt = plain(x)
        h = net.layers[2].residual(net.layers[0].residual(net.stem(x)))
        assert torch.equal(hurt, net.head(h)[0])
    assert plain.skip == set()
    with pytest.raises(DepthlabError):
        PlainNet(build(spec_of(topology="parallel"), seed=0))


@pytest.mark.slow
def test_residual_network_survives_lesions_a_plain_one_does_not():
    xtr, ytr = pattern_task(1024, seed=0)
    xte, yte = pattern_task(512, seed=100)
    spec = spec_of()
    res = build(spec, seed=0)
    plain = PlainNet(build(spec, seed=0))
    for model in (res, plain):
        summary = train(model, xtr, ytr, steps=200, batch_size=32, lr=3e-3, seed=0)
        assert not summary["diverged"]
    a, b = lesion_study(res, xte, yte), lesion_study(plain, xte, yte)
    # both learn the task (chance is 0.25) ...
    assert a["intact"]["accuracy"] > 0.9 and b["intact"]["accuracy"] > 0.9
    # ... but deleting one block costs the plain network far more: over seeds 0-3 the mean accuracy drop is
    # 0.18-0.30 for the residual network and 0.55-0.74 (near chance) for the plain one
    assert a["mean_accuracy_drop"] < b["mean_accuracy_drop"] - 0.15
    assert len(a["lesions"]) == len(b["lesions"]) == spec.blocks
    assert a["lesions"][0]["accuracy_drop"] == pytest.approx(a["intact"]["accuracy"] - a["lesions"][0]["accuracy"])
    # the study leaves the model intact
    assert evaluate(res, xte, yte) == a["intact"]


def test_cli_lesion(monkeypatch, capsys):
    pytest.importorskip("depthlab.data")
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["analyse"])
    argv = ["lesion", "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1",
            "--width", "4", "--blocks", "2", "--quiet"]
    assert cli_main.main(argv) == 0
    out = capsys.readouterr().out
    assert "plain acc" in out and "residual acc" in out and "none (intact)" in out
    assert cli_main.main(argv + ["--json", "--no-plain"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "plain" not in result and len(result["residual"]["lesions"]) == 2
    assert result["n_train"] == 64 and result["n_test"] == 32
