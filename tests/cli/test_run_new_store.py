"""`depthlab run` creates its store only for a sweep that can start: a sweep refused for its spec leaves no empty
store behind (#23), and an existing store is left as it was."""

import pytest
import yaml

from depthlab.cli.main import main

BASE = {"name": "s", "defaults": {"dataset": "synthetic", "val_split": 32, "width": 4, "blocks": 2, "epochs": 1}}


def spec_file(tmp_path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return str(path)


@pytest.mark.parametrize("changes, args, says", [
    ({}, ["--set", "width=-1"], "width: got -1"),                                       # a run that is not valid
    ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, [], "has no runs"),             # nothing left to run
    ({}, ["--set", "init_from=0123456789abcdef"], "init_from: got '0123456789abcdef'"),  # a start nobody saved
    ({}, ["--set", "prune=magnitude", "--set", "density=1e-9"], "density: got 1e-09"),  # no weight left to train
    ({}, ["--set", "width=-1", "--backend", "ray"], "width: got -1"),                   # refused before Ray starts
])
def test_a_refused_sweep_creates_no_store(tmp_path, capsys, changes, args, says):
    store = tmp_path / "new.sqlite"
    assert main(["run", spec_file(tmp_path, **changes), "--store", str(store), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthlab: error: ") and says in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "spec.yaml"]  # no store, journal or weights folder


def test_a_refused_sweep_leaves_an_existing_store_as_it_was(tmp_path, capsys):
    from depthlab.results.store import Store
    from depthlab.spec.config import RunConfig

    store = tmp_path / "old.sqlite"
    with Store(store) as s:
        s.add_runs([RunConfig(dataset="synthetic").to_dict()], sweep="earlier", recipe=1)
    assert main(["run", spec_file(tmp_path), "--store", str(store), "--set", "width=-1", "--quiet"]) == 2
    assert "width: got -1" in capsys.readouterr().err
    with Store(store, readonly=True) as s:
        assert [r.sweeps for r in s.records()] == [("earlier",)]


def test_run_trains_in_the_layout_asked_and_records_it(tmp_path):
    """float32 on a CPU trains NCHW unless --layout says otherwise; each run records what it computed in."""
    from depthlab.results.store import Store

    store = tmp_path / "s.sqlite"
    for seed, layout in enumerate(("auto", "channels_last")):  # another seed each: a run trains once, in any layout
        assert main(["run", spec_file(tmp_path), "--store", str(store), "--quiet", "--precision", "fp32",
                     "--layout", layout, "--no-compare", "--set", f"seed={seed}"]) == 0
    with Store(store, readonly=True) as s:
        assert sorted((r.config["seed"], r.env["channels_last"]) for r in s.records()) == [(0, False), (1, True)]


def test_an_unknown_layout_from_python_is_refused_before_the_store_exists(tmp_path):
    from depthlab.errors import SpecError
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec

    with pytest.raises(SpecError, match="layout: got 'nhwc'.*auto, channels_last, nchw"):
        run_sweep(SweepSpec.from_dict(BASE), tmp_path / "new.sqlite", layout="nhwc", progress=False)
    assert not (tmp_path / "new.sqlite").exists()
