"""The Python API the way a notebook meets it: `import depthlab` stays light, the example under examples/ runs,
and the DataFrames hold every field, measurement and pack a run has."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import depthlab
from depthlab.errors import DepthlabError

pd = pytest.importorskip("pandas")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


def test_import_depthlab_brings_neither_torch_nor_pandas():
    code = "import sys, depthlab; depthlab.__all__; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert {"runs", "history", "compare", "run_sweep", "run_study"} <= set(dir(depthlab))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "api.sqlite"
    sys_argv, sys.argv = sys.argv, [str(EXAMPLE), str(path)]
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = sys_argv
    return path


def test_runs_hold_every_field_measurement_and_pack(store):
    runs = depthlab.runs(store)
    assert len(runs) == 6 and set(runs["status"]) == {"done"}
    for column in ("lr", "epochs", "optimizer", "dataset", "width", "val_acc", "test_acc", "train_seconds",
                   "env.precision", "env.torch", "pack", "pack_size", "pack_seconds"):
        assert column in runs.columns, column
    assert runs["lr"].nunique() == 1  # a constant field is kept
    per_pack = runs.groupby("pack").agg(seconds=("seconds", "first"), share=("pack_seconds", "sum"))
    assert per_pack["seconds"].to_numpy() == pytest.approx(per_pack["share"].to_numpy())


def test_history_is_one_row_per_run_and_epoch(store):
    curves = depthlab.history(store)
    assert len(curves) == 6 * 8 and set(curves["epoch"]) == set(range(1, 9))
    assert {"run_id", "val_loss", "train_loss"} <= set(curves.columns)


def test_compare_is_one_row_per_metric_pair_and_band(store):
    verdicts = depthlab.compare(store, metrics=["val_acc", "val_loss"])
    assert set(verdicts["metric"]) == {"val_acc", "val_loss"}
    assert {"a", "b", "n_pairs", "mean", "ci_low", "ci_high", "tost_p", "verdict"} <= set(verdicts.columns)
    assert set(verdicts["a"]) == {"sequential"} and set(verdicts["b"]) == {"parallel"}


def test_a_missing_store_is_one_clear_error(tmp_path):
    with pytest.raises(DepthlabError, match="no results store"):
        depthlab.runs(tmp_path / "none.sqlite")


def test_a_study_from_python(tmp_path):
    result = depthlab.run_study(dataset="synthetic", budgets=[6000], depths=[1, 2], levers=["depth"], seeds=3,
                            max_seeds=3, epochs=1, store=tmp_path / "s.sqlite", progress=False, log=lambda m: None)
    assert result["study"] == "synthetic-quick-6k-depth" and len(result["budgets"][0]["designs"]) == 2
