"""The analysis commands on a model trained by the sweep engine and kept with --save-weights."""

import json

import pytest
import torch

from depthlab.cli.main import main
from depthlab.errors import DepthlabError
from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store
from depthlab.results.weights import load_trained

SPEC = {"name": "w", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 256, "test_subset": 64,
                                  "width": 4, "blocks": 3, "stem_stride": 2, "batch_size": 32, "epochs": 2},
        "grid": {"topology": ["sequential"], "seed": [0]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = tmp_path_factory.mktemp("w") / "w.sqlite"
    run_sweep(SweepSpec.from_dict(SPEC), store, device="cpu", progress=False, save_weights=True)
    record = Store(store).records()[0]
    return store, record


def test_saved_weights_reproduce_the_recorded_metrics(trained):
    from depthlab.data import load
    from depthlab.train.engine import evaluate

    store, record = trained
    model, config, rid = load_trained(store, record.run_id[:6])
    assert rid == record.run_id and config.blocks == 3
    ds = load("synthetic", val_split=32, train_subset=256)
    # at the run's precision and layout (bf16 where the CPU has it natively: `depthlab run`'s auto)
    model.channels_last = record.env["channels_last"]
    loss, acc = evaluate(model, ds.val_x, ds.val_y, ds.mean, ds.std, 1, precision=record.env["precision"])
    assert float(loss[0]) == pytest.approx(record.val_loss, rel=1e-5)


def test_missing_weights_say_how_to_keep_them(tmp_path):
    with pytest.raises(DepthlabError, match="--save-weights"):
        load_trained(tmp_path / "none.sqlite", "abc")


@pytest.mark.parametrize("command", [["lesion", "--no-plain"], ["convert"], ["expand", "--batch", "8"],
                                     ["paths", "--batch", "8"]])
def test_analysis_commands_take_a_trained_run(trained, command, capsys):
    store, record = trained
    torch.set_num_threads(1)
    assert main([*command, "--store", str(store), "--run", record.run_id, "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out)
    assert payload["spec"]["blocks"] == 3
