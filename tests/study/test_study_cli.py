"""`depthlab study` end to end through the CLI on a tiny synthetic study: killed with SIGKILL mid-training and
resumed without training a finished run again; the answer in text and JSON; `status` showing the study; and bad
input refused in one line."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from depthlab.cli.main import main

SPEC = {"name": "tiny", "dataset": "synthetic", "budgets": [6000], "depths": [1, 2], "levers": ["depth", "wiring",
        "shift"], "seeds": 3, "max_seeds": 3, "epochs": 2, "shift_examples": 16, "shift_corruptions": 1,
        "settings": {"lr": 0.01}}


def done_runs(store) -> dict:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT run_id, finished_at FROM runs WHERE status = 'done'").fetchall())
    except sqlite3.Error:
        return {}


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def test_a_killed_study_resumes_and_answers(tmp_path, spec_file, killed_when):
    store = tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "depthlab.cli.main", "study", str(spec_file), "--store", str(store), "--quiet",
               "--precision", "fp32"]
    env = dict(os.environ, DEPTHLAB_DATA=str(tmp_path / "data"))
    killed_when(command, lambda: len(done_runs(store)) >= 2, env=env)
    before = done_runs(store)
    assert 2 <= len(before) < 9, "the kill should land mid-training"
    done = subprocess.run(command + ["--json"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    after = done_runs(store)
    assert len(after) == 9  # 3 designs (d1, d2, d2-parallel: d2 is both levers') x 3 seeds
    assert {k: after[k] for k in before} == before  # runs finished before the kill were not trained again
    from depthlab.results.store import Store

    with Store(store, readonly=True) as s:  # the level validates every 4th epoch and the last: of 2, the last
        recs = s.records(sweep="study tiny")
    assert {r.env.get("eval_every") for r in recs} == {4}
    # float32 on a CPU, where `depthlab run` trains NCHW: the study asks for channels_last (levels.LAYOUT)
    assert {(r.env["precision"], r.env["channels_last"]) for r in recs} == {("fp32", True)}
    assert all(["val_acc" in h for h in r.history] == [False, True] for r in recs)
    result = json.loads(done.stdout)
    (budget,) = result["budgets"]
    assert {d["name"] for d in budget["designs"]} == {"d1", "d2", "d2-parallel"}
    assert all(d["seeds"] == 3 and d["params"] and d["latency_b1_ms"] > 0 for d in budget["designs"])
    assert budget["robustness"]["cells"] and not budget["robustness"]["skipped"]
    assert budget["robustness"]["precisions"] == ["fp32"]  # on a CPU, whatever the training precision
    # a third time: nothing to train, the same answer in text, and status shows the study
    text = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "budget 6,000 parameters" in text.stdout and "depth" in text.stdout
    assert "in fp32 (channels_last)" in text.stdout
    assert "trained 0 runs" not in text.stdout
    status = subprocess.run([sys.executable, "-m", "depthlab.cli.main", "status", "--store", str(store)],
                            capture_output=True, text=True, timeout=60)
    assert "study tiny" in status.stdout and "done" in status.stdout


def test_the_spec_is_written_and_read_back(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    assert main(["study", "--dataset", "synthetic", "--budget", "6k", "--levers", "depth,wiring",
                 "--write-spec", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# depthlab study spec") and "d2-parallel" in text
    values = yaml.safe_load(text)
    assert values["name"] == "synthetic-quick-6k-depth+wiring" and values["budgets"] == [6000]
    assert main(["study", str(path), "--write-spec", str(tmp_path / "again.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "again.yaml").read_text()) == values


def test_bad_input_gets_one_line(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    with pytest.raises(SystemExit) as stop:
        main(["study", "--levers", "depth,breadth", "--store", store])
    assert stop.value.code == 2
    assert "unknown lever 'breadth'; the levers: depth, wiring, scaling, kernel, crop, shift" in capsys.readouterr().err
    assert main(["study", "--dataset", "synthetic", "--budget", "1000", "--store", store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1,020 is the next that fits" in err and "blocks=2" in err
    assert "(or leave it out with --levers)" in err
    assert not os.path.exists(store)  # refused before the store was created
    assert main(["study", "--dataset", "synthetic", "--budget", "6k", "--store", store, "--report", store]) == 2
    assert "results store" in capsys.readouterr().err


def test_a_changed_design_under_the_same_name_is_refused(tmp_path, spec_file, capsys):
    store = str(tmp_path / "s.sqlite")
    from depthlab.results.store import Store
    from depthlab.study.design import StudySpec

    with Store(store) as s:  # a study of this name was recorded with 5 seeds
        s.save_study("tiny", StudySpec.from_dict({**SPEC, "seeds": 5, "max_seeds": 5}).to_dict(), 0, {})
    assert main(["study", str(spec_file), "--store", store]) == 2
    err = capsys.readouterr().err
    assert "was run with another design (it differs in max_seeds, seeds)" in err and "--name" in err


def test_rounds_decide_with_the_costs_the_answer_uses(tmp_path, monkeypatch):
    """Which designs get more seeds depends on which are cheaper than the recommendation: the rounds must see the
    measured latencies, as the final answer does (they saw none, and ordered by parameters alone)."""
    from depthlab.study import decide
    from depthlab.study.design import StudySpec
    from depthlab.study.runner import run_study

    seen, real = [], decide.next_seeds
    monkeypatch.setattr(decide, "next_seeds", lambda spec, seeds, result: seen.append(result) or real(spec, seeds,
                                                                                                        result))
    spec = StudySpec(name="costs", dataset="synthetic", budgets=(6000,), depths=(1, 2), levers=("depth",), seeds=3,
                     max_seeds=3, epochs=1)
    run_study(spec, tmp_path / "s.sqlite", progress=False, log=lambda msg: None, precision="fp32", layout="nchw")
    assert seen and all(d["latency_b1_ms"] for r in seen for d in r["budgets"][0]["designs"])
    # answered from the store alone, without a layout: the study's recorded one, whose costs the store holds
    again = run_study(spec, tmp_path / "s.sqlite", progress=False, log=lambda msg: None, precision="fp32",
                      train=False)
    assert again["layout"] == "nchw" and all(d["latency_b1_ms"] for d in again["budgets"][0]["designs"])
