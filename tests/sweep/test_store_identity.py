"""Run identity stable under additions: ids hash the canonical config (without the fields at their neutral value),
a new field with a neutral default renames no stored run and needs no migration, and schema 5, the last
re-keying, moves every older store over: runs, weights, init_from ids and the tables keyed by them."""

import json
import shutil
import sqlite3
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pytest
import torch

from depthlab import records
from depthlab.analysis.compare import pair_records
from depthlab.cli.main import main
from depthlab.errors import DepthlabError
from depthlab.records import added, canonical_config, config_id, declare_run_fields, neutral_values, run_id
from depthlab.train import engine
from depthlab.spec.config import RunConfig, field_names
from depthlab.train.packs import calibration_key
from depthlab.run.runner import plan
from depthlab.spec.grid import load_spec
from depthlab.results.store import SCHEMA_VERSION, Store
from depthlab.results.weights import load_trained, resolve

FIXTURE_V4 = Path(__file__).parents[1] / "fixtures" / "store_v4"
FIXTURE_V0 = Path(__file__).parents[1] / "fixtures" / "store_v0"
# the fields added after the first release (0.1.0, commit 384eef9), with the value every earlier run had
LATER = {"skip": True, "init_from": None, "branch": "conv", "reparam": "none", "param_budget": None,
         "budget_by": "hidden", "prune": "none", "density": 1.0, "prune_structure": "mask", "crop_init": "reinit"}


def raw(path, sql, args=()):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def weights_of(path) -> list[str]:
    return sorted(p.stem for p in Path(f"{path}.weights").glob("*.pt"))


# -- the canonical config ---------------------------------------------------------------------------------------


def test_the_later_fields_declare_their_neutral_value_with_their_default():
    assert dict(records.neutral_defaults()) == LATER == neutral_values(RunConfig)
    defaults = {f.name: f.default for f in fields(RunConfig)}
    assert all(defaults[name] == value for name, value in LATER.items())  # here the neutral value is the default


def test_ids_leave_the_fields_at_their_neutral_value_out():
    full = RunConfig(dataset="synthetic", width=4).to_dict()
    first_release = {k: v for k, v in full.items() if k not in LATER}
    assert canonical_config(full) == first_release
    assert run_id(full, 2) == run_id(first_release, 2) and config_id(full) == config_id(first_release)
    for name, value in [("skip", False), ("branch", "lk"), ("prune", "snip"), ("density", 1)]:  # 1 is not 1.0
        assert run_id({**full, name: value}, 2) != run_id(full, 2), name


def test_a_new_field_with_a_neutral_default_renames_no_stored_run_and_needs_no_migration(store_v4, monkeypatch):
    """A field added the way the next one will be (`added(neutral)` beside the others): every id of a store
    written before it, migrated or not, stays; a sweep naming the field at its neutral value finds its runs."""
    with Store(store_v4) as store:
        before = store.records()
    assert len(before) == 8

    @dataclass(frozen=True)
    class WithDither(RunConfig):  # the new field, declared where a new field would be
        dither: float = added(0.0)

    monkeypatch.setattr(records, "_declared", None)
    declare_run_fields(WithDither)
    assert records.neutral_defaults()["dither"] == 0.0
    for rec in before:
        config = WithDither(**rec.config).to_dict()
        assert config["dither"] == 0.0
        assert run_id(config, rec.recipe) == rec.run_id and config_id(config) == rec.config_id
        assert run_id({**config, "dither": 0.5}, rec.recipe) != rec.run_id
    with Store(store_v4) as store:
        assert store.migrated == [] and store.schema_version == SCHEMA_VERSION  # nothing to migrate
        configs = [WithDither(**r.config).to_dict() for r in before]
        assert store.add_runs(configs, sweep="again", recipe=engine.RECIPE) == [
            r.run_id for r in before]  # the same runs, joined to the sweep: none added
        assert len(store.records()) == 8
    # a store of before the field pairs with runs that hold it at its neutral value
    a, b = before[0], before[1]
    assert (a.config["topology"], b.config["topology"]) == ("sequential", "parallel")
    b = replace(b, config={**b.config, "dither": 0.0})
    pairs, _ = pair_records([a, b], "topology")
    assert pairs == [(a, b)]
    # and an older store migrates to the same ids with the field declared
    old = store_v4.parent / "again" / "store.sqlite"
    old.parent.mkdir()
    shutil.copy(FIXTURE_V4 / "store.sqlite", old)
    with Store(old) as store:
        assert [r.run_id for r in store.records()] == [r.run_id for r in before]


def test_pack_keys_leave_neutral_fields_out():
    config = RunConfig(dataset="synthetic", width=4)
    names = {k for k, _ in config.pack_key()}
    assert not names & set(LATER) and "width" in names
    assert ("skip", "False") in RunConfig(dataset="synthetic", width=4, skip=False).pack_key()


def test_model_fields_are_declared_once_and_composed():
    """The model's fields are ModelFields' (in ModelSpec and RunConfig alike), validated there."""
    from depthlab.errors import SpecError
    from depthlab.models import ModelSpec
    from depthlab.models.spec import ModelFields

    model = [f.name for f in fields(ModelFields)]
    assert [f.name for f in fields(ModelSpec)] == [*model, "in_channels", "num_classes", "input_size"]
    assert set(model) <= set(field_names()) and issubclass(RunConfig, ModelFields)
    config = RunConfig(dataset="synthetic", width=8, topology="parallel", hidden=[4, 4], branch="lk", kernel=5)
    assert config.model_spec() == ModelSpec(width=8, topology="parallel", hidden=(4, 4), branch="lk", kernel=5,
                                            in_channels=1, num_classes=10, input_size=28)
    with pytest.raises(SpecError, match="topology: got 'diagonal'; allowed: sequential, parallel or groups:g"):
        RunConfig(topology="diagonal")
    with pytest.raises(SpecError, match="^norm: got 'layer'; allowed: batch, group, none$"):
        RunConfig(norm="layer")


# -- schema 5: the stores of before -----------------------------------------------------------------------------


def test_a_schema_4_store_migrates_once_and_keeps_every_run(store_v4):
    path = store_v4
    old_rows = raw(path, "SELECT run_id, status, val_loss, history, config FROM runs ORDER BY rowid")
    old_links = raw(path, "SELECT sweep, run_id FROM sweep_runs ORDER BY rowid")
    old_shift = raw(path, "SELECT run_id, method, loss FROM shift_results ORDER BY rowid")
    old_weights = weights_of(path)
    assert raw(path, "PRAGMA user_version") == [(4,)] and len(old_rows) == 8 and len(old_weights) == 7
    with Store(path) as store:
        assert store.migrated == list(range(5, SCHEMA_VERSION + 1)) and store.schema_version == SCHEMA_VERSION
        recs = store.records()
        rekeyed = store.rekeyed()
        shift = store.shift_rows()
    new = {old: rid for old, rid, _ in rekeyed}
    assert set(new) == {r[0] for r in old_rows} and all(done for *_, done in rekeyed)  # every id changed
    # every run kept, in order, with its result, under the id of its canonical config
    assert [(new[r[0]], r[1], r[2], r[3]) for r in old_rows] == [
        (r.run_id, r.status, r.val_loss, json.dumps(r.as_row()["history"], separators=(",", ":"))) for r in recs]
    for rec in recs:
        assert rec.run_id == run_id(rec.config, rec.recipe) == run_id(RunConfig(**rec.config).to_dict(), rec.recipe)
        assert rec.config_id == config_id(rec.config) and set(rec.config) == set(field_names())
    assert raw(path, "SELECT sweep, run_id FROM sweep_runs ORDER BY rowid") == [(s, new[r]) for s, r in old_links]
    assert [(r["run_id"], r["method"], r["loss"]) for r in shift] == [(new[r], m, v) for r, m, v in old_shift]
    # the weights follow their runs; init_from names the new id of the run it starts from (a chain of two)
    assert weights_of(path) == sorted(new[w] for w in old_weights)
    starts = {r.run_id: r.config["init_from"] for r in recs if r.config["init_from"]}
    old_starts = {new[rid]: json.loads(c)["init_from"] for rid, *_, c in old_rows if json.loads(c)["init_from"]}
    assert len(starts) == 2 and starts == {rid: new[source] for rid, source in old_starts.items()}
    assert all(source in {r.run_id for r in recs} for source in starts.values())
    assert any(source in starts for source in starts.values())  # a chain: from a run that starts from another
    with Store(path) as store:  # once: the second open migrates nothing
        assert store.migrated == [] and [r.run_id for r in store.records()] == [r.run_id for r in recs]


def test_the_calibrated_pack_size_keeps_its_shape(store_v4):
    (old_key,) = [k for (k,) in raw(store_v4, "SELECT key FROM pack_sizes")]
    with Store(store_v4):
        pass
    (key,) = [k for (k,) in raw(store_v4, "SELECT key FROM pack_sizes")]
    config = RunConfig(dataset="synthetic", val_split=32, train_subset=128, test_subset=32, width=4, blocks=2,
                       stem_stride=2, batch_size=32, epochs=1)
    now = json.loads(calibration_key(config, torch.device("cpu"), "fp32", 1))
    assert json.loads(key)["pack_key"] == now["pack_key"] != json.loads(old_key)["pack_key"]
    assert {k: v for k, v in json.loads(key).items() if k != "pack_key"} == \
        {k: v for k, v in json.loads(old_key).items() if k != "pack_key"}  # the machine part as it was


def test_a_read_only_open_sees_the_new_ids_and_changes_nothing(store_v4):
    before, weights = store_v4.read_bytes(), weights_of(store_v4)
    with Store.existing(store_v4, readonly=True) as store:
        seen = [r.run_id for r in store.records()]
    assert store_v4.read_bytes() == before and weights_of(store_v4) == weights
    with Store(store_v4) as store:
        assert [r.run_id for r in store.records()] == seen


def test_rerunning_the_specs_trains_nothing(store_v4, tmp_path, monkeypatch):
    """`depthlab run` of the fixture's specs after the migration: the finished runs are found under their new ids
    (the specs that start from a stored run name it by its new id), and only the run left pending trains."""
    with Store(store_v4) as store:
        new = {old: rid for old, rid, _ in store.rekeyed()}
        before = {r.run_id: (r.status, r.attempts) for r in store.records()}
    specs = []
    for name in ("fx.yaml", "fx2.yaml", "fx3.yaml"):
        text = (FIXTURE_V4 / name).read_text()
        for old, rid in new.items():
            text = text.replace(f"init_from: {old}", f"init_from: {rid}")
        (tmp_path / name).write_text(text)
        specs.append(load_spec(tmp_path / name))
    with Store(store_v4) as store:
        todo = [c for spec in specs for c in plan(spec, store, torch.device("cpu"), save_weights=True,
                                                   store_path=store_v4).todo]
    assert [(c.branch, c.seed) for c in todo] == [("lk", 1)]  # the one fixture-b left pending
    for name in ("fx.yaml", "fx3.yaml"):
        assert main(["run", str(tmp_path / name), "--store", str(store_v4), "--save-weights", "--quiet",
                     "--no-compare", "--precision", "fp32"]) == 0
    with Store(store_v4) as store:
        assert {r.run_id: (r.status, r.attempts) for r in store.records()} == before


@pytest.mark.parametrize("command", [["lesion", "--no-plain"], ["expand", "--batch", "8"]])
def test_analyses_of_a_stored_run_find_its_weights_by_its_new_id(store_v4, command, capsys):
    with Store(store_v4) as store:
        rec = next(r for r in store.records() if r.config["init_from"])
    torch.set_num_threads(1)
    assert main([*command, "--store", str(store_v4), "--run", rec.run_id, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["topology"] == "parallel"


def test_an_old_id_is_refused_with_its_new_one(store_v4):
    old = raw(store_v4, "SELECT run_id FROM runs ORDER BY rowid LIMIT 1")[0][0]
    with Store(store_v4) as store:
        fresh = dict((o, n) for o, n, _ in store.rekeyed())[old]
    with pytest.raises(DepthlabError, match=f"run '{old[:8]}' is run {fresh} now"):
        resolve(store_v4, old[:8])
    assert resolve(store_v4, fresh).stem == fresh


def test_a_new_id_seen_before_the_store_was_opened_for_writing_finds_its_weights(store_v4):
    """`depthlab results` (read-only) shows the new ids of a store not migrated yet; `--run NEW` then opens it for
    writing once, which migrates it and renames the weights."""
    with Store.existing(store_v4, readonly=True) as store:
        rid = next(r.run_id for r in store.records() if r.status == "done")
    assert raw(store_v4, "PRAGMA user_version") == [(4,)]
    model, config, full = load_trained(store_v4, rid[:10])
    assert full == rid and raw(store_v4, "PRAGMA user_version") == [(SCHEMA_VERSION,)] and rid in weights_of(store_v4)


def test_a_run_stored_twice_before_its_fields_were_canonical_is_kept_once(store_v4):
    """A store written between two field additions (the first schema-2 stores) could hold one run twice: with and
    without a later field at its neutral value. The migration keeps the finished row and both sweeps' links."""
    rid, text = raw(store_v4, "SELECT run_id, config FROM runs ORDER BY rowid LIMIT 1")[0]
    config = {k: v for k, v in json.loads(text).items() if k not in ("branch", "reparam")}  # as stored before lk
    con = sqlite3.connect(store_v4)
    con.execute("INSERT INTO runs (run_id, config, status, created_at, recipe) VALUES (?, ?, 'pending', 0, 2)",
                ("0123456789abcdef", json.dumps(config)))
    con.execute("INSERT INTO sweep_runs (sweep, run_id) VALUES ('older', '0123456789abcdef')")
    con.commit()
    con.close()
    with Store(store_v4) as store:
        recs = store.records()
        new = {old: fresh for old, fresh, _ in store.rekeyed()}
    assert len(recs) == 8 and new["0123456789abcdef"] == new[rid]
    (kept,) = [r for r in recs if r.run_id == new[rid]]
    assert kept.status == "done" and kept.sweeps == ("fixture", "older")
    assert new[rid] in weights_of(store_v4)


# -- crash safety of the weights renames --------------------------------------------------------------------------


def test_a_kill_between_the_commit_and_the_renames_strands_no_weights(store_v4, monkeypatch):
    """The re-keyings are committed with the migration; the renames follow, on this open or, if it was killed
    first (or midway), on the next write open."""
    old_weights = weights_of(store_v4)

    def killed(self):
        raise KeyboardInterrupt  # as a kill right after the commit

    monkeypatch.setattr(Store, "_rename_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        Store(store_v4)
    assert raw(store_v4, "PRAGMA user_version") == [(SCHEMA_VERSION,)] and weights_of(store_v4) == old_weights
    monkeypatch.undo()
    pending = raw(store_v4, "SELECT old_id, new_id FROM rekeyed WHERE renamed = 0")
    assert len(pending) == 8
    folder = Path(f"{store_v4}.weights")
    first = next((o, n) for o, n in pending if (folder / f"{o}.pt").is_file())
    (folder / f"{first[0]}.pt").replace(folder / f"{first[1]}.pt")  # killed midway: one file renamed
    with Store(store_v4) as store:
        assert store.migrated == [] and all(done for *_, done in store.rekeyed())
        ids = {r.run_id for r in store.records()}
    new = dict(pending)
    assert weights_of(store_v4) == sorted(new[w] for w in old_weights) and set(weights_of(store_v4)) <= ids


def test_the_v0_store_reruns_under_its_recipe_without_training(old_store, monkeypatch):
    """The store of 0.1.0 (before schema versions) moves to canonical ids too: its specs, planned under the recipe
    that trained them, find every finished run."""
    with Store(old_store) as store:
        assert store.migrated == list(range(1, SCHEMA_VERSION + 1))
        monkeypatch.setattr(engine, "RECIPE", 1)
        todo = {name: plan(load_spec(FIXTURE_V0 / name), store, torch.device("cpu")).todo
                for name in ("fx.yaml", "fx2.yaml")}
    assert [len(t) for t in todo.values()] == [0, 1]  # fixture-b's one pending run
