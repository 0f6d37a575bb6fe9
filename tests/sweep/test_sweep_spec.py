"""Sweep specs: validation before anything runs, grid expansion, presets."""

import pytest

from depthlab.errors import DepthlabError, SpecError
from depthlab.sweep.config import RunConfig
from depthlab.sweep.packs import make_packs
from depthlab.sweep.spec import SweepSpec, load_spec, parse_overrides


def test_paper_preset_has_6912_runs_and_is_valid():
    spec = load_spec("paper")
    configs = spec.configs()
    assert len(configs) == 6912
    assert {c.dataset for c in configs} == {"mnist", "cifar10"}
    assert {c.head for c in configs} == {"gap", "flatten"}
    # every run has a partner that differs only in topology
    keys = {}
    for c in configs:
        d = c.to_dict()
        d.pop("topology")
        keys.setdefault(tuple(sorted(d.items())), set()).add(c.topology)
    assert all(v == {"sequential", "parallel"} for v in keys.values()) and len(keys) == 3456


def test_demo_and_smoke_presets():
    assert len(load_spec("demo").configs()) == 20
    assert len(load_spec("smoke").configs()) == 4


def test_grid_runs_and_exclude():
    spec = SweepSpec.from_dict({
        "name": "t", "defaults": {"dataset": "synthetic", "width": 4},
        "grid": {"topology": ["sequential", "parallel"], "blocks": [2, 4], "seed": [0, 1, 2]},
        "runs": [{"norm": "batch"}, {"norm": "none", "residual_scale": ["1/n", "learnable"]}],
        "exclude": [{"blocks": 4, "norm": "none", "residual_scale": "learnable"}],
    })
    configs = spec.configs()
    assert len(configs) == 12 + 24 - 6
    assert all(c.width == 4 and c.dataset == "synthetic" for c in configs)


def test_exclude_matches_fields_left_at_their_defaults():
    spec = SweepSpec.from_dict({"name": "t", "grid": {"norm": ["batch", "none"], "kernel": [3, 4]},
                                "exclude": [{"norm": "batch"}, {"kernel": 4}]})
    assert [(c.norm, c.kernel) for c in spec.configs()] == [("none", 3)]  # the invalid kernel 4 is excluded
    assert SweepSpec.from_dict({"name": "t", "grid": {"seed": [0, 1]},
                                "exclude": [{"head": "gap"}]}).configs() == []  # gap is the default head


def test_duplicates_are_removed():
    spec = SweepSpec.from_dict({"name": "t", "grid": {"seed": [0, 0, 1]}})
    assert len(spec.configs()) == 2


@pytest.mark.parametrize("values,field,allowed", [
    ({"grid": {"topolgy": ["parallel"]}}, "grid.topolgy", "topology"),
    ({"grid": {"norm": ["batch", "layer"]}}, "norm", "batch, group, none"),
    ({"grid": {"kernel": [3, 4]}}, "kernel", "odd"),
    ({"defaults": {"optimizer": "lamb"}}, "optimizer", "adam, sgd"),
    ({"grid": {"augment": ["flip"]}}, "augment", "translate"),         # digits must not be flipped
    ({"grid": {"blocks": [4], "topology": ["groups:3"]}}, "topology", "groups:g"),
    ({"grdi": {}}, "grdi", "grid"),
    ({"defaults": {"epochs": 0}}, "epochs", "positive"),
])
def test_bad_values_are_rejected_naming_field_and_allowed(values, field, allowed):
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict({"name": "t", **values}).configs()
    assert info.value.field == field
    assert allowed in str(info.value)


def test_spec_file_errors(tmp_path):
    with pytest.raises(DepthlabError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(DepthlabError, match="not valid YAML"):
        load_spec(bad)
    good = tmp_path / "mine.yaml"
    good.write_text("grid:\n  seed: [0, 1]\n")
    assert load_spec(good).name == "mine"


def test_examples_are_valid_specs():
    from pathlib import Path
    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples, "examples/ holds documented specs"
    for path in examples:
        assert load_spec(path).configs(), path


def test_overrides_give_a_field_one_value_in_every_run_or_vary_it():
    spec = load_spec("examples/normfree_depth.yaml")
    assert {c.width for c in spec.configs()} == {16} and {c.norm for c in spec.configs()} == {"none", "batch"}
    small = spec.with_overrides(parse_overrides(["width=8", "epochs=2"]))
    assert small.name == "normfree-depth[width=8,epochs=2]"
    assert len(small.configs()) == 54 and {(c.width, c.epochs) for c in small.configs()} == {(8, 2)}
    # a field the spec's runs vary is replaced there too; duplicates that result are dropped
    bn_only = spec.with_overrides({"norm": "batch", "init": "default", "residual_scale": "1"})
    assert {(c.norm, c.init, c.residual_scale) for c in bn_only.configs()} == {("batch", "default", "1")}
    assert len(bn_only.configs()) == 9  # 3 depths x 3 seeds
    # a list becomes the field's grid axis
    deeper = spec.with_overrides(parse_overrides(["blocks=[2, 4]"]))
    assert {c.blocks for c in deeper.configs()} == {2, 4} and len(deeper.configs()) == 36
    assert spec.with_overrides({}) is spec


def test_each_residual_scale_has_one_spelling_so_equal_runs_share_an_id():
    from depthlab.sweep.store import run_id
    ids = {run_id(RunConfig(residual_scale=v).to_dict()) for v in (1, 1.0, "1", "1.0", " 1 ")}
    assert len(ids) == 1 and RunConfig(residual_scale=1).residual_scale == "1"
    assert RunConfig(residual_scale="1/ sqrt(n)").residual_scale == "1/sqrt(n)"
    assert RunConfig(residual_scale="0.5").residual_scale == RunConfig(residual_scale=0.5).residual_scale == 0.5
    # numbers in one spelling too: 0 and 0.0 weight decay, lr 1 and 1.0, val_split 0 and 0.0 are one run
    assert run_id(RunConfig(weight_decay=0, lr=1).to_dict()) == run_id(RunConfig(weight_decay=0.0, lr=1.0).to_dict())
    assert RunConfig(val_split=0.0).val_split == 0 and RunConfig(val_split=0.1).val_split == 0.1
    assert parse_overrides(["lr=1e-3", "weight_decay=5e-4"]) == {"lr": 0.001, "weight_decay": 0.0005}
    # so an override read as the integer 1 names the spec's own runs
    spec = load_spec("examples/normfree_depth.yaml")
    ours = {run_id(c.to_dict()) for c in spec.configs()}
    bn = spec.with_overrides(parse_overrides(["norm=batch", "init=default", "residual_scale=1",
                                              "weight_decay=0", "lr=1e-3"]))
    assert {run_id(c.to_dict()) for c in bn.configs()} <= ours


@pytest.mark.parametrize("items, field", [(["widht=8"], "widht"), (["width"], "--set"), (["=3"], "--set"),
                                          (["width=[1"], "--set width"),
                                          (["seed=[]"], "--set seed"), (["width=8", "width=16"], "--set width")])
def test_bad_overrides_name_the_field(items, field):
    with pytest.raises(SpecError) as err:
        load_spec("demo").with_overrides(parse_overrides(items))
    assert field in err.value.field


def test_overridden_values_are_validated():
    with pytest.raises(SpecError, match="odd integer") as err:
        load_spec("demo").with_overrides({"kernel": 4}).configs()
    assert err.value.field == "kernel"


def test_packs_group_runs_by_shape_and_training_loop():
    configs = SweepSpec.from_dict({"name": "t", "grid": {
        "topology": ["sequential", "parallel"], "seed": [0, 1, 2], "lr": [0.001, 0.01]}}).configs()
    packs = make_packs(configs, "cpu")
    assert len(packs) == 2 and sorted(len(p) for p in packs) == [6, 6]
    assert len(make_packs(configs, "cpu", max_models=4)) == 4
    assert all(len({c.pack_key() for c in p}) == 1 for p in packs)


def test_pack_key_ignores_only_per_model_fields():
    a = RunConfig(seed=0, lr=0.1, weight_decay=0.0, augment="none")
    b = RunConfig(seed=3, lr=0.2, weight_decay=1e-4, augment="translate", residual_scale="1/n")
    assert a.pack_key() == b.pack_key()
    assert a.pack_key() != RunConfig(batch_size=64).pack_key()
    assert a.pack_key() != RunConfig(residual_scale="learnable").pack_key()
