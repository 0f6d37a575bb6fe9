"""`depthlab erf` and `depthlab reparam` on fresh models and on a run the engine trained."""

import json

import pytest
import torch

from depthlab.cli.main import main
from depthlab.models import build, fuse_for_inference
from depthlab.spec.config import RunConfig
from depthlab.run.runner import run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

SPEC = {"name": "lk", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                   "width": 4, "blocks": 2, "branch": "lk", "kernel": 5, "reparam": "dilated",
                                   "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["parallel"], "seed": [0]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = tmp_path_factory.mktemp("lk") / "lk.sqlite"
    run_sweep(SweepSpec.from_dict(SPEC), store, device="cpu", progress=False, save_weights=True)
    (record,) = Store(store).records()
    return store, record


def test_a_trained_lk_run_records_its_reach_and_size(trained):
    _, record = trained
    assert record.status == "done" and record.extra["receptive_field"] == 3 + 4 * 2
    assert record.extra["inference_params"] < record.params  # re-param kernels and BatchNorms merge away
    assert 1 <= record.extra["erf50"] <= record.extra["erf90"] <= 28


def test_reparam_writes_a_merged_model_that_computes_the_same(trained, tmp_path, capsys):
    store, record = trained
    out = tmp_path / "merged.pt"
    assert main(["reparam", "--store", str(store), "--run", record.run_id, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_relative_error"] < 1e-5 and report["test_acc"] == report["test_acc_merged"]
    assert report["params_merged"] == record.extra["inference_params"] < report["params"]
    assert report["flops_merged"] < report["flops"]
    saved = torch.load(out, weights_only=True)
    config = RunConfig.from_dict(saved["config"])
    merged = fuse_for_inference(build(config.model_spec()))
    merged.load_state_dict(saved["state_dict"])  # the documented way back
    assert saved["merged"] is True


def test_reparam_never_writes_over_a_runs_weights_or_the_store(trained, capsys):
    """`reparam --out STORE.weights/ID.pt` once replaced a run's trained weights with a file nothing could load."""
    store, record = trained
    weights = store.parent / f"{store.name}.weights" / f"{record.run_id}.pt"
    before = {path: path.read_bytes() for path in (store, weights)}
    for out in (weights, store):
        assert main(["reparam", "--store", str(store), "--run", record.run_id, "--out", str(out)]) == 2
        assert "results store" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before


def test_reparam_out_at_a_folder_or_in_a_missing_one_is_one_line(trained, tmp_path, capsys):
    """#23 bug 12: torch's file errors were raw tracebacks; now one line and exit 2, and nothing is left behind."""
    store, record = trained
    for out, says in ((tmp_path, "directory"), (tmp_path / "missing" / "merged.pt", "cannot write")):
        assert main(["reparam", "--store", str(store), "--run", record.run_id, "--out", str(out)]) == 2
        err = capsys.readouterr().err  # the run it read, then why it wrote nothing
        assert says in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_erf_on_fresh_models_and_a_stored_run(trained, capsys):
    assert main(["erf", "--kernels", "3,7", "--blocks", "1,4", "--branch", "lk", "--input-size", "24", "--batch",
                 "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 * 2 * 2
    deep = {(r["kernel"], r["blocks"]): r for r in rows if r["topology"] == "sequential"}
    assert deep[7, 4]["receptive_field"] == 3 + 4 * 6 and deep[7, 1]["receptive_field"] == 3 + 6
    assert all(r["erf50"] <= r["erf90"] <= r["receptive_field"] for r in rows)
    store, record = trained
    assert main(["erf", "--store", str(store), "--run", record.run_id[:8]]) == 0
    out = capsys.readouterr().out
    assert "ERF 90%" in out and "lk" in out
    with pytest.raises(SystemExit):
        main(["erf", "--kernels", "three"])
