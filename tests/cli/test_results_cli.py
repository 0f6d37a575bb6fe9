"""`depthlab status`, `depthlab results` and `depthlab compare` through the CLI entry point."""

import csv
import io
import json

import pytest

import depthlab.cli.main as main_mod
from depthlab.results.store import Store


@pytest.fixture(autouse=True)
def only_results_commands(monkeypatch):
    monkeypatch.setattr(main_mod, "COMMAND_MODULES", ["results"])


def make_store(path, n=6, gap=-0.1):
    """n seq/par pairs over two heads (parallel better by `gap` on gap, worse on flatten), one diverged pair,
    one pending run and one running run held by another host."""
    store = Store(path)
    configs = []
    for seed in range(n):
        for head in ("gap", "flatten"):
            for topology in ("sequential", "parallel"):
                configs.append(dict(dataset="mnist", topology=topology, blocks=4, width=8, kernel=3, head=head,
                                    residual_scale="1/n" if seed % 2 else 0.5, epochs=2, seed=seed))
    ids = store.add_runs(configs, sweep="demo", recipe=1)
    extra = store.add_runs([dict(configs[0], seed=99), dict(configs[0], seed=100)], sweep="other", recipe=1)
    owner = "me:1:x"
    store.claim(ids, owner)
    for rid, cfg in zip(ids, configs):
        loss = 1.0 + cfg["seed"] / 100
        if cfg["topology"] == "parallel":
            loss += gap if cfg["head"] == "gap" else -gap
        diverged = cfg["seed"] == 0 and cfg["head"] == "gap" and cfg["topology"] == "parallel"
        store.finish(rid, owner, status="diverged" if diverged else "done",
                     final=dict(train_loss=loss / 2, val_loss=float("nan") if diverged else loss, train_acc=0.9,
                                val_acc=0.8),
                     history=[{"epoch": 0}, {"epoch": 1}], params=1000, q=2.0, seconds=0.5, env={"device": "cpu"})
    store.claim(extra[:1], "node-7:123:abcd")
    store.close()
    return ids


def run(argv, capsys):
    rc = main_mod.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_help(capsys):
    for command, words in (("status", "owner"), ("results", "varies"), ("compare", "TOST")):
        with pytest.raises(SystemExit) as exit_:
            main_mod.main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--store" in out and words in out


def test_status(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    make_store(path)
    rc, out, _ = run(["status", "--store", str(path)], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[1].split() == ["sweep", "pending", "running", "done", "diverged", "failed", "total"]
    assert lines[3].split() == ["demo", "0", "0", "23", "1", "0", "24"]
    assert lines[4].split() == ["other", "1", "1", "0", "0", "0", "2"]
    assert lines[5].split() == ["all", "1", "1", "23", "1", "0", "26"]
    assert "running: 1 run(s) held by 1 owner(s)" in out and "node-7:123:abcd" in out


def test_results_csv_json_and_status_filter(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    ids = make_store(path)
    rc, out, _ = run(["results", "--store", str(path)], capsys)
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 26 and rows[0]["run_id"] == ids[0]
    columns = list(rows[0])
    assert {"head", "residual_scale", "seed", "pack", "pack_seconds"} <= set(columns)  # every config field, packs
    assert columns[-1].startswith("env.")  # then the environment
    rc, out, _ = run(["results", "--store", str(path), "--status", "diverged", "--format", "json"], capsys)
    (row,) = json.loads(out)
    assert row["status"] == "diverged" and row["val_loss"] is None and row["epochs_run"] == 2
    out_file = tmp_path / "done.parquet"
    rc, out, _ = run(["results", "--store", str(path), "--status", "done", "--format", "parquet",
                      "--out", str(out_file)], capsys)
    assert rc == 0 and "wrote 23 run(s)" in out and out_file.stat().st_size > 0


def test_results_errors(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    make_store(path)
    rc, _, err = run(["results", "--store", str(path), "--format", "parquet"], capsys)
    assert rc == 2 and "needs a file" in err
    with pytest.raises(SystemExit):
        main_mod.main(["results", "--store", str(path), "--status", "finished"])
    capsys.readouterr()


def test_compare_text_and_json(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    make_store(path)
    rc, out, _ = run(["compare", "--store", str(path), "--by", "head", "--metric", "val_loss", "--n-boot", "2000",
                      "--details"], capsys)
    assert rc == 0
    assert "val_loss: d = parallel - sequential" in out and "train_loss:" not in out
    assert "diverged: sequential 0, parallel 1" in out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines() if line.startswith("mnist")}
    assert rows[("mnist", "all", "gap")].endswith("parallel better")
    assert rows[("mnist", "all", "flatten")].endswith("sequential better")

    rc, out, _ = run(["compare", "--store", str(path), "--json", "--margin", "0.5"], capsys)
    report = json.loads(out)
    assert set(report["paired"]) == {"val_loss", "train_loss", "val_acc"}
    (val,) = report["paired"]["val_loss"]
    assert report["contrast"] == "topology" and report["values"] == ["sequential", "parallel"]
    assert val["margin"] == 0.5 and val["pairs"]["n_pairs"] == 11 and val["pairs"]["n_excluded"] == 1
    assert val["groups"][0]["verdict"] == "equivalent within ±0.5"


def test_compare_errors(tmp_path, capsys):
    missing = tmp_path / "nope.sqlite"
    rc, _, err = run(["compare", "--store", str(missing)], capsys)
    assert rc == 2 and "nope.sqlite" in err and "depthlab run" in err
    assert not missing.exists()  # reading commands never create a store
    rc, _, err = run(["status", "--store", str(missing)], capsys)
    assert rc == 2 and "nope.sqlite" in err

    path = tmp_path / "runs.sqlite"
    make_store(path)
    rc, _, err = run(["compare", "--store", str(path), "--by", "optimizer"], capsys)
    assert rc == 2 and "by: got 'optimizer'; allowed: head, residual_scale, seed" in err

    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    rc, _, err = run(["compare", "--store", str(empty)], capsys)
    assert rc == 2 and "holds no runs" in err
    with pytest.raises(SystemExit):
        main_mod.main(["compare", "--store", str(path), "--margin", "-1"])
    with pytest.raises(SystemExit):  # a bootstrap that would not finish
        main_mod.main(["compare", "--store", str(path), "--n-boot", "1000000000"])
    capsys.readouterr()
    rc, _, err = run(["compare", "--store", str(path), "--contrast", "optimizer"], capsys)
    assert rc == 2 and "contrast: got 'optimizer'; allowed: head, residual_scale, seed, topology" in err
    rc, out, err = run(["results", "--store", str(path), "--sweep", "nope"], capsys)
    assert rc == 2 and "no sweep 'nope'" in err and "'demo'" in err
