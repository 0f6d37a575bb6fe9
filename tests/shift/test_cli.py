"""`depthlab shift` against a store: rows per (run, corruption, severity, method, batch size, alpha, seed),
resumed after SIGKILL without recomputing or duplicating one; `compare --table shift`; the report's heat map."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from depthlab.cli.main import main
from depthlab.report import plots
from depthlab.shift.records import load_shift_records
from depthlab.results.store import Store

# the measurements evaluate at `--precision auto`: as on either kind of CPU (tests/conftest.py)
pytestmark = pytest.mark.auto_precision


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "data"))


def shift(store, *args):
    return main(["shift", "--store", str(store), "--quiet", *map(str, args)])


@pytest.fixture
def measured(tmp_path, make_store):
    """Two runs (sequential, parallel) measured on 2 corruptions x 3 methods x 2 batch sizes."""
    store = tmp_path / "s.sqlite"
    make_store(store)
    assert shift(store, "--corruptions", "stripe,shot_noise", "--severity", "5", "--methods",
                 "source,norm,alpha_bn", "--batch-size", "1,8", "--examples", "24") == 0
    return store


def test_one_row_per_key_and_a_rerun_measures_nothing(measured, capsys):
    with Store(measured) as store:
        rows = store.shift_rows()
    assert len(rows) == 2 * 2 * 3 * 2
    assert {(r["corruption"], r["severity"]) for r in rows} == {("stripe", 0), ("shot_noise", 5)}
    assert {(r["method"], r["alpha"]) for r in rows} == {("source", 0.0), ("norm", 1.0), ("alpha_bn", 0.1)}
    assert all(r["status"] == "done" and r["examples"] == 24 and 0 <= r["accuracy"] <= 1 for r in rows)
    capsys.readouterr()
    assert shift(measured, "--corruptions", "stripe,shot_noise", "--severity", "5", "--methods",
                 "source,norm,alpha_bn", "--batch-size", "1,8", "--examples", "24") == 0
    out, err = capsys.readouterr()
    assert "measured 0 row(s)" in out and "24 measurement(s) already in the store" in err
    # another stream length for the same runs would mix streams: refused, with the fix
    assert shift(measured, "--corruptions", "stripe", "--methods", "tent", "--batch-size", "8",
                 "--examples", "12") == 2
    assert "--examples 24" in capsys.readouterr().err


def test_compare_table_shift_pairs_methods_and_wirings(measured, capsys):
    assert main(["compare", "--store", str(measured), "--table", "shift", "--contrast", "method", "--json",
                 "--n-boot", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["values"] == ["alpha_bn:0.1", "norm", "source"] and set(report["paired"]) == {"test_acc",
                                                                                                  "test_loss"}
    first = report["paired"]["test_acc"][0]
    assert first["pairs"]["n_pairs"] == 2 * 2 * 2  # runs x corruptions x batch sizes
    assert any("Table shift" in n for n in report["notes"])
    assert main(["compare", "--store", str(measured), "--table", "shift", "--contrast", "topology", "--by",
                 "method,corruption", "--n-boot", "200", "--metric", "test_acc"]) == 0
    text = capsys.readouterr().out
    assert "method,corruption" in text and "source, stripe" in text and "parallel - sequential" in text
    assert main(["compare", "--store", str(measured), "--table", "shift", "--by", "method,nope"]) == 2
    assert "by: got 'nope'; allowed: corruption, eval_batch_size, method" in capsys.readouterr().err


def test_compare_table_shift_without_measurements_says_how(tmp_path, make_store, capsys):
    store = tmp_path / "s.sqlite"
    make_store(store)
    assert main(["compare", "--store", str(store), "--table", "shift"]) == 2
    assert "holds no shift measurements; measure trained runs with `depthlab shift" in capsys.readouterr().err


def test_shift_records_carry_the_run_and_the_settings(measured):
    with Store(measured, readonly=True) as store:
        records = load_shift_records(store)
        runs = {r.run_id: r for r in store.records()}
    rec = records[0]
    for field in ("topology", "width", "seed", "dataset"):
        assert rec.config[field] == runs[rec.run_id].config[field]
    assert {"corruption", "severity", "method", "eval_batch_size", "shift_seed"} <= set(rec.config)
    assert rec.test_acc is not None and rec.val_loss is None and rec.q == 5.0
    assert {r.config["method"] for r in records} == {"source", "norm", "alpha_bn:0.1"}


def test_the_report_gets_a_heat_map_per_wiring(measured, tmp_path):
    with Store(measured, readonly=True) as store:
        records = load_shift_records(store)
    cells = plots.shift_cells(records)
    assert set(cells) == {(t, b) for t in ("sequential", "parallel") for b in (1, 8)}
    error, n = cells[("parallel", 8)][("stripe", "norm")]
    settings = ("topology", "eval_batch_size", "corruption", "method")
    expected = [1 - r.test_acc for r in records
                if tuple(r.config[k] for k in settings) == ("parallel", 8, "stripe", "norm")]
    assert n == len(expected) == 1 and error == pytest.approx(expected[0])
    out = tmp_path / "r.html"
    assert main(["report", "--store", str(measured), "--out", str(out)]) == 0
    page = out.read_text()
    assert '<section id="shift">' in page and 'alt="shift-heatmap"' in page and 'id="shift-table"' in page
    assert 'href="#shift"' in page


def test_runs_without_weights_are_named_and_the_fix_given(tmp_path, make_store, capsys):
    store = tmp_path / "s.sqlite"
    make_store(store, weights=False)
    assert shift(store, "--corruptions", "stripe") == 2
    assert "--save-weights" in capsys.readouterr().err


def test_bad_values_name_the_field_and_the_allowed_ones(tmp_path, make_store, capsys):
    store = tmp_path / "s.sqlite"
    make_store(store)
    assert shift(store, "--methods", "tnt") == 2
    assert "methods: got 'tnt'; allowed: source, norm, alpha_bn, tent, core_reconstructed" in capsys.readouterr().err
    assert shift(store, "--corruptions", "frog") == 2
    assert "corruption: got 'frog'; allowed: shot_noise" in capsys.readouterr().err
    assert shift(store, "--alpha", "2", "--corruptions", "stripe") == 2
    assert "alpha: got 2.0; allowed: a number from 0 to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shift(store, "--severity", "7")
    assert "--severity: '7'; allowed: severities from 1 to 5" in capsys.readouterr().err


def test_help_explains_the_methods(capsys):
    with pytest.raises(SystemExit):
        main(["shift", "--help"])
    out = capsys.readouterr().out
    assert "core_reconstructed  OUR RECONSTRUCTION" in out and "--save-weights" in out and "--episodic" in out


def rows_in(store) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT run_id, corruption, severity, method, batch_size, alpha, seed, created_at "
                              "FROM shift_results").fetchall()
    except sqlite3.Error:
        return []


def test_a_killed_shift_resumes_without_recomputing_or_duplicating(tmp_path, make_store, killed_when):
    store = tmp_path / "s.sqlite"
    make_store(store)
    command = [sys.executable, "-m", "depthlab.cli.main", "shift", "--store", str(store), "--quiet",
               "--corruptions", "shot_noise,impulse_noise,rotate,stripe,zigzag,brightness", "--severity", "mnistc",
               "--methods", "source,tent", "--batch-size", "1"]
    env = dict(os.environ, DEPTHLAB_DATA=str(tmp_path / "data"))
    total = 2 * 6 * 2
    killed_when(command, lambda: len(rows_in(store)) >= 2, env=env)
    before = rows_in(store)
    assert 2 <= len(before) < total, "the kill should land mid-measurement"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} measurement(s) already in the store" in done.stderr
    after = rows_in(store)
    keys = [r[:7] for r in after]
    assert len(after) == total and len(set(keys)) == total  # every key once
    assert set(before) <= set(after)  # rows finished before the kill kept as they were (created_at included)


def test_runs_without_batchnorm_get_source_only(tmp_path, make_store, capsys):
    """#23 bug 4: tent crashed on a norm-free run ("optimizer got an empty parameter list") and norm/alpha_bn
    stored copies of source; now they are left out of such runs, and said so."""
    store = tmp_path / "s.sqlite"
    make_store(store, topologies=("sequential",), norm="none")
    assert shift(store, "--methods", "source,norm,alpha_bn,tent", "--batch-size", "16", "--corruptions", "shot_noise",
                 "--severity", "1") == 0
    assert "have no BatchNorm" in capsys.readouterr().err
    assert {r[3] for r in rows_in(store)} == {"source"}

