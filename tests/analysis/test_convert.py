"""Deep → shallow conversion: exact when the blocks are zero, same parameters, an honest report; fine-tuning
is the engine training a run that starts from the deep run's weights."""

import json

import pytest
import torch

import depthlab.cli.main as cli_main
from depthlab.analysis.convert import deep_to_shallow, recalibrate_batchnorm
from depthlab.data import load
from depthlab.errors import DepthlabError
from depthlab.measure import scores
from depthlab.models import ModelSpec, block_weights, build, locate, param_count


def spec_of(**changes):
    values = dict(width=4, blocks=4, kernel=3, norm="batch", in_channels=1, input_size=8, num_classes=3)
    values.update(changes)
    return ModelSpec(**values)


@pytest.fixture(scope="module")
def data():
    return load("synthetic", n_train=128, n_test=64, shape=(1, 8, 8), num_classes=3, seed=4)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_conversion_of_zero_blocks_is_exact(norm, data):
    model = build(spec_of(norm=norm), seed=0).eval()
    with torch.no_grad():
        for i in range(model.spec.blocks):
            views = block_weights(*locate(model, i))
            views["conv2.weight"].zero_()
            if "bias2" in views:
                views["bias2"].zero_()
    shallow, report = deep_to_shallow(model, data, recalibrate=False)
    assert shallow.spec.topology == "parallel" and len(shallow.layers) == 1
    assert param_count(shallow) == param_count(model) == report["params_converted"] == report["params_original"]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(shallow(x), model(x))
    assert report["converted"] == report["original"] and report["retained"] == 1.0


def test_report_of_a_nontrivial_conversion(data):
    model = build(spec_of(norm="none"), seed=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shallow, report = deep_to_shallow(model, data)
    test = (data.test_x, data.test_y, data.mean, data.std)
    assert report["converted"] == scores(shallow, *test) and report["original"] == scores(model, *test)
    assert report["retained"] == pytest.approx(report["converted"]["accuracy"] / report["original"]["accuracy"])
    assert "recalibrated" not in report  # no BatchNorm: nothing to re-estimate
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(shallow(x), model(x))  # the wiring changed the function
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(DepthlabError):
        deep_to_shallow(build(spec_of(topology="parallel"), seed=0), data)


def test_recalibration_is_the_cumulative_batch_statistics(data):
    model = build(spec_of(blocks=2), seed=2).eval()
    shallow, report = deep_to_shallow(model, data)
    assert {"recalibrated", "retained_recalibrated"} <= set(report)
    # the stem output is what the parallel branches read: their BN mean is the mean of conv1 over the training set
    from depthlab.data import normalise

    x = normalise(data.train_x, data.mean, data.std)
    with torch.no_grad():
        z = shallow.layers[0].conv1(shallow.stem(x))
    assert torch.allclose(shallow.layers[0].norm.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not shallow.training and shallow.layers[0].norm.momentum == 0.1  # restored
    again = recalibrate_batchnorm(build(spec_of(norm="none"), seed=0), data.train_x, data.mean, data.std)
    assert again is not None  # no BatchNorm: nothing to do


@pytest.mark.auto_precision
def test_cli_convert_fine_tunes_through_the_engine(tmp_path, capsys):
    from depthlab.results.store import Store

    store = tmp_path / "s.sqlite"
    argv = ["convert", "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1",
            "--width", "4", "--blocks", "2", "--quiet", "--store", str(store)]
    assert cli_main.main(argv + ["--finetune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "parallel (converted)" in out and "re-estimated" in out and "fine-tuned" in out
    with Store(store) as s:
        deep, tuned = s.records(sweep="convert")
    # the fine-tune is a run of its own: the deep run's config, parallel, starting from the deep run's weights
    assert tuned.config["init_from"] == deep.run_id and tuned.config["topology"] == "parallel"
    assert {k: v for k, v in tuned.config.items() if k not in ("init_from", "topology")} == \
        {k: v for k, v in deep.config.items() if k not in ("init_from", "topology")}
    assert tuned.status == "done" and tuned.recipe == deep.recipe
    assert cli_main.main(argv + ["--json", "--norm", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["topology"] == "parallel" and result["params_original"] == result["params_converted"]
    assert "recalibrated" not in result and 0 <= result["converted"]["accuracy"] <= 1


def test_fine_tuning_starts_from_the_given_weights(data):
    """One step at learning rate ~0 leaves the converted weights as they were: the engine started from them."""
    from depthlab.models import parallel_from_sequential
    from depthlab.spec.config import RunConfig
    from depthlab.train.engine import train_pack

    deep = RunConfig(dataset="synthetic", val_split=0, width=4, blocks=2, epochs=1, batch_size=128, lr=1e-12,
                     seed=3)
    (trained,) = train_pack([deep], data, keep_weights=True)
    model = build(deep.model_spec(1, 8, 3))
    model.load_state_dict(trained.state_dict)
    start = parallel_from_sequential(model)
    tune = deep.replace(topology="parallel", init_from="0" * 16)
    (tuned,) = train_pack([tune], data, keep_weights=True, initial=[start])
    for key, value in start.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(tuned.state_dict[key], value, atol=1e-8), key
    with pytest.raises(ValueError, match="another shape"):
        train_pack([tune.replace(width=8)], data, initial=[start])
