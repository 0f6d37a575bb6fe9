"""Deep → shallow conversion: exact when the blocks are zero, same parameters, an honest report."""

import json

import pytest
import torch

import depthlab.cli.main as cli_main
from depthlab.analysis.convert import deep_to_shallow
from depthlab.analysis.trainer import evaluate
from depthlab.errors import DepthlabError
from depthlab.models import ModelSpec, block_weights, build, locate, param_count



def spec_of(**changes):
    values = dict(width=4, blocks=4, kernel=3, norm="batch", in_channels=1, input_size=8, num_classes=3)
    values.update(changes)
    return ModelSpec(**values)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_conversion_of_zero_blocks_is_exact(norm):
    model = build(spec_of(norm=norm), seed=0).double().eval()
    with torch.no_grad():
        for i in range(model.spec.blocks):
            views = block_weights(*locate(model, i))
            views["conv2.weight"].zero_()
            if "bias2" in views:
                views["bias2"].zero_()
    x, y = data(16, 1)
    x = x.double()
    shallow, report = deep_to_shallow(model, x, y)
    assert shallow.spec.topology == "parallel" and len(shallow.layers) == 1
    assert param_count(shallow) == param_count(model) == report["params_converted"] == report["params_original"]
    with torch.no_grad():
        assert torch.equal(shallow(x), model(x))
    assert report["converted"] == report["original"] and report["retained"] == 1.0


def test_report_of_a_nontrivial_conversion():
    model = build(spec_of(norm="none"), seed=1).eval()
    x, y = data(64, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shallow, report = deep_to_shallow(model, x, y)
    assert report["converted"] == evaluate(shallow, x, y)
    assert report["original"] == evaluate(model, x, y)
    assert report["retained"] == pytest.approx(report["converted"]["accuracy"] / report["original"]["accuracy"])
    assert "recalibrated" not in report and "finetuned" not in report
    with torch.no_grad():
        assert not torch.allclose(shallow(x), model(x))  # the wiring changed the function
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_recalibration_and_finetuning():
    model = build(spec_of(), seed=2)
    xtr, ytr = data(128, 3)
    xte, yte = data(64, 4)
    model.train()
    with torch.no_grad():  # give the deep network's BN statistics of its own
        for i in range(0, 128, 32):
            model(xtr[i:i + 32])
    model.eval()
    shallow, report = deep_to_shallow(model, xte, yte, xtr, ytr, finetune_epochs=1, batch_size=32, seed=0)
    assert {"recalibrated", "finetuned", "finetune", "retained_after_finetune"} <= set(report)
    assert report["finetune"]["steps"] == 4 and not report["finetune"]["diverged"]
    assert report["finetuned"] == evaluate(shallow, xte, yte)
    # without training data there is nothing to re-estimate or fine-tune on
    with pytest.raises(DepthlabError):
        deep_to_shallow(model, xte, yte, finetune_epochs=1)
    with pytest.raises(DepthlabError):
        deep_to_shallow(build(spec_of(topology="parallel"), seed=0), xte, yte)


def test_cli_convert(monkeypatch, capsys):
    pytest.importorskip("depthlab.data")
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["analyse"])
    argv = ["convert", "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1",
            "--width", "4", "--blocks", "2", "--quiet"]
    assert cli_main.main(argv + ["--finetune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "parallel (converted)" in out and "re-estimated" in out and "fine-tuned" in out
    assert cli_main.main(argv + ["--json", "--norm", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["topology"] == "parallel" and result["params_original"] == result["params_converted"]
    assert "recalibrated" not in result and 0 <= result["converted"]["accuracy"] <= 1
