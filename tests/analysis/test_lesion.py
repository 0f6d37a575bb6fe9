"""Lesions: deleting a block is exact and reversible, and a trained residual network survives it far better than
a trained plain network of the same shape (Veit et al., 2016)."""

import json

import pytest
import torch
import torch.nn.functional as F

import depthlab.cli.main as cli_main
from depthlab.analysis.lesion import lesion_study, lesioned
from depthlab.measure import scores
from depthlab.models import ModelSpec, block_weights, branch_output, build, locate



def spec_of(**changes):
    values = dict(width=8, blocks=6, kernel=3, norm="batch", in_channels=1, input_size=8, num_classes=4)
    values.update(changes)
    return ModelSpec(**values)


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
    spec = spec_of(blocks=3)
    net = build(spec, seed=4).double().eval()
    plain = build(spec.replace(skip=False), seed=4).double().eval()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values()))
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        h = net.stem(x)
        for layer in net.layers:
            h = layer.residual(h)
        assert torch.equal(plain(x), net.head(h)[0])  # x_i = F_i(x_{i-1}): no identity
        with lesioned(plain, 1):  # block 1 skipped: its input goes on to block 2 unchanged
            hurt = plain(x)
        h = net.layers[2].residual(net.layers[0].residual(net.stem(x)))
        assert torch.equal(hurt, net.head(h)[0])
    assert all(isinstance(layer, type(net.layers[0])) for layer in plain.layers)  # restored


def test_plain_parallel_lesion_removes_one_branch():
    spec = spec_of(blocks=3, topology="parallel", skip=False)
    plain = build(spec, seed=5).double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        stem = plain.stem(x)
        layer = plain.layers[0]
        expected = plain.head(branch_output(layer, 0, stem) + branch_output(layer, 2, stem))[0]
        with lesioned(plain, 1):
            assert torch.allclose(plain(x), expected, atol=1e-12)


def engine_data(n_train, n_test):
    """The pattern task as the engine sees it: uint8 images of 4 smooth templates plus noise."""
    from depthlab.data import load

    return load("synthetic", n_train=n_train, n_test=n_test, shape=(1, 8, 8), num_classes=4, seed=7)


@pytest.mark.slow
def test_residual_network_survives_lesions_a_plain_one_does_not():
    from depthlab.spec.config import RunConfig
    from depthlab.train.engine import train_pack

    data = engine_data(1024, 512)
    base = RunConfig(dataset="synthetic", val_split=0, width=8, blocks=6, norm="batch", batch_size=32, epochs=6,
                     lr=3e-3, schedule="constant", seed=0)
    (residual,) = train_pack([base], data, keep_weights=True)  # one engine, one recipe, one data order
    (plain,) = train_pack([base.replace(skip=False)], data, keep_weights=True)
    test = (data.test_x, data.test_y, data.mean, data.std)
    models = []
    for result in (residual, plain):
        assert result.status == "done"
        model = build(result.config.model_spec(1, 8, 4))
        model.load_state_dict(result.state_dict)
        models.append(model.eval())
    a, b = lesion_study(models[0], *test), lesion_study(models[1], *test)
    assert (a["network"], b["network"]) == ("residual", "plain")
    # both learn the task (chance is 0.25) ...
    assert a["intact"]["accuracy"] > 0.9 and b["intact"]["accuracy"] > 0.9
    # ... but deleting one block costs the plain network far more
    assert a["mean_accuracy_drop"] < b["mean_accuracy_drop"] - 0.15
    assert len(a["lesions"]) == len(b["lesions"]) == base.blocks
    assert a["lesions"][0]["accuracy_drop"] == pytest.approx(a["intact"]["accuracy"] - a["lesions"][0]["accuracy"])
    # the study leaves the model intact
    assert scores(models[0], *test) == a["intact"]


@pytest.mark.auto_precision
def test_cli_lesion_trains_both_networks_through_the_engine_with_one_recipe(tmp_path, capsys):
    from depthlab.records import run_id
    from depthlab.train import engine
    from depthlab.spec.config import RunConfig
    from depthlab.results.store import Store

    store = tmp_path / "s.sqlite"
    argv = ["lesion", "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1",
            "--width", "4", "--blocks", "2", "--quiet", "--store", str(store)]
    assert cli_main.main(argv) == 0
    out = capsys.readouterr().out
    assert "plain acc" in out and "residual acc" in out and "none (intact)" in out and "final train loss" in out
    with Store(store) as s:
        records = s.records(sweep="lesion")
    residual, plain = sorted(records, key=lambda r: not r.config["skip"])
    # the plain network is the residual run's config with skip off: skip restored, it IS the residual run
    assert RunConfig.from_dict(plain.config).replace(skip=True).to_dict() == residual.config
    assert run_id(dict(plain.config, skip=True), plain.recipe) == residual.run_id
    # ... trained by the same engine and recipe (optimizer, schedule, data order all follow from the config)
    assert residual.recipe == plain.recipe == engine.RECIPE
    assert residual.status == plain.status == "done"
    assert residual.env["recipe"] == plain.env["recipe"] == engine.RECIPE
    # the second time, both runs are found in the store: nothing is trained again
    assert cli_main.main(argv + ["--json", "--no-plain"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "plain" not in result and len(result["residual"]["lesions"]) == 2
    assert result["n_train"] == 64 and result["n_test"] == 32
    assert result["residual"]["run"]["run_id"] == residual.run_id
    assert result["residual"]["run"]["train_loss"] == pytest.approx(residual.train_loss)
    with Store(store) as s:
        assert len(s.records()) == 2


@pytest.mark.auto_precision
def test_cli_lesion_of_a_stored_run_reports_its_recorded_loss_and_refuses_training_flags(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    base = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1", "--width",
            "4", "--blocks", "2", "--quiet", "--store", str(store)]
    assert cli_main.main(["lesion", *base, "--no-plain", "--json"]) == 0
    rid = json.loads(capsys.readouterr().out)["residual"]["run"]["run_id"]
    assert cli_main.main(["lesion", "--store", str(store), "--run", rid[:8], "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.split("final train loss")[1].split(";")[0]  # the stored value, not nan
    assert cli_main.main(["lesion", "--store", str(store), "--run", rid, "--width", "8", "--quiet"]) == 2
    assert "drop --width" in capsys.readouterr().err
    for bad in ("*", "../x", "zz"):  # ids are ids: never a glob pattern or a path
        assert cli_main.main(["lesion", "--store", str(store), "--run", bad, "--quiet"]) == 2
        assert "not a run id" in capsys.readouterr().err


def test_cli_lesion_of_a_stored_run_names_its_own_wiring(tmp_path, capsys):
    """#23: `lesion --run` of a parallel run printed 'sequential network'; a stored plain run was labelled the
    residual one and lesioned twice, as itself and as its own plain contrast."""
    from depthlab.results.store import Store
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec

    spec = SweepSpec.from_dict({
        "name": "w", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64, "test_subset": 16,
                                  "width": 4, "blocks": 2, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "runs": [{"topology": "parallel"}, {"topology": "groups:2", "skip": False}]})
    store = tmp_path / "s.sqlite"
    run_sweep(spec, store, device="cpu", progress=False, save_weights=True, precision="fp32")
    runs = {r.config["topology"]: r.run_id for r in Store(store).records()}
    lesion = ["lesion", "--store", str(store), "--quiet", "--precision", "fp32", "--run"]
    assert cli_main.main([*lesion, runs["parallel"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lesions: parallel residual network of 2 blocks") and "sequential" not in out
    assert "residual acc" in out and "plain acc" in out
    assert cli_main.main([*lesion, runs["groups:2"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["spec", "dataset", "n_train", "n_test", "store", "precision", "plain"]
    assert result["plain"]["network"] == "plain" and result["plain"]["run"]["run_id"] == runs["groups:2"]
    assert cli_main.main([*lesion, runs["groups:2"]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lesions: groups:2 plain network of 2 blocks") and "residual" not in out
