"""Sweep specs: validation before anything runs, grid expansion, presets."""

import pytest

from depthlab.cli.main import main
from depthlab.errors import DepthlabError, SpecError
from depthlab.spec.config import RunConfig
from depthlab.train.packs import make_packs
from depthlab.spec.grid import MAX_RUNS, SweepSpec, load_spec, parse_overrides


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
        "name": "t", "defaults": {"dataset": "synthetic", "width": 4, "val_split": 64},
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
    from depthlab.records import config_id as run_id
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


# ---------------------------------------------------------------------- bad input, big grids, data sizes


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_exponent_notation_is_a_number_in_spec_files(tmp_path):
    path = write(tmp_path, "defaults:\n  lr: 1e-3\n  weight_decay: 1E-4\ngrid:\n  lr: [1e-3, 5e-4, 2.5e+2, 1.0e-2]\n")
    spec = load_spec(path)
    assert spec.defaults == {"lr": 0.001, "weight_decay": 0.0001}
    assert [c.lr for c in spec.configs()] == [0.001, 0.0005, 250.0, 0.01]
    assert {c.weight_decay for c in spec.configs()} == {0.0001}
    # words and versions stay strings; integers stay integers
    assert load_spec(write(tmp_path, "name: e3\ndescription: 1.2.3\ngrid:\n  seed: [1_0]\n")).grid == {"seed": [10]}
    assert parse_overrides(["lr=2e-3", "epochs=3"]) == {"lr": 0.002, "epochs": 3}


def test_an_empty_spec_file_says_so(tmp_path):
    for text in ("", "# only a comment\n"):
        with pytest.raises(DepthlabError, match="empty spec file; expected a mapping with keys name, description"):
            load_spec(write(tmp_path, text))


def test_a_directory_or_a_binary_file_as_the_spec(tmp_path):
    with pytest.raises(DepthlabError, match="is a directory, not a spec file"):
        load_spec(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"\x80\x02}q\x00" + bytes(range(256)))  # a pickle, say
    with pytest.raises(DepthlabError, match=r"w.pt: not a text file \(byte 0 is not UTF-8\)"):
        load_spec(tmp_path / "w.pt")
    (tmp_path / "z.yaml").write_bytes(b"grid: {}\x00\x00")
    with pytest.raises(DepthlabError, match="a binary file"):
        load_spec(tmp_path / "z.yaml")


def test_yaml_errors_are_one_line_with_the_position(tmp_path):
    with pytest.raises(DepthlabError) as err:
        load_spec(write(tmp_path, "grid:\n  seed: [0, 1\n"))
    assert "\n" not in str(err.value) and "not valid YAML: line 3, column 1" in str(err.value)


def test_duplicate_keys_are_refused_naming_the_key(tmp_path):
    with pytest.raises(DepthlabError, match=r"line 4, column 3: duplicate key 'width'"):
        load_spec(write(tmp_path, "defaults:\n  width: 8\n  blocks: 2\n  width: 16\n"))
    with pytest.raises(DepthlabError, match="duplicate key 'grid'"):
        load_spec(write(tmp_path, "grid: {seed: [0]}\ngrid: {seed: [1]}\n"))
    with pytest.raises(SpecError, match="duplicate key 'seed'"):
        parse_overrides(["x={seed: 1, seed: 2}"])
    # a merge key may override what it merges: that is not a duplicate
    spec = load_spec(write(tmp_path, "defaults: &d {width: 8, blocks: 2}\nruns:\n  - {<<: *d, width: 4}\n"))
    assert spec.runs == [{"width": 4, "blocks": 2}]


def test_the_name_must_be_a_short_string(tmp_path):
    assert load_spec(write(tmp_path, "name: 2024\ngrid: {seed: [0]}\n")).name == "2024"
    assert load_spec(write(tmp_path, "name: ''\ngrid: {seed: [0]}\n", "fallback.yaml")).name == "fallback"
    for text, says in [("name: [a, b]\n", "name: got 'list'"), ("name: {a: 1}\n", "name: got 'dict'"),
                       ("name: true\n", "name: got 'bool'"), (f"name: {'n' * 201}\n", "at most 200 characters"),
                       ("name: \"a\\nb\"\n", "without control characters"),
                       ("name: \"a\\x9bb\"\n", "without control characters"),       # C1 (CSI)
                       ("name: \"ab\\u202Ec\"\n", "or text-direction overrides")]:  # right-to-left override
        with pytest.raises(SpecError, match=says) as err:
            load_spec(write(tmp_path, text))
        assert err.value.field == "name"
    with pytest.raises(SpecError, match="description: got 'list'"):
        load_spec(write(tmp_path, "description: [a]\n"))


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcde", "bcdef"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("name: *f")  # 9**6 strings once expanded (each level more multiplies by 9: counted, not expanded)
    with pytest.raises(DepthlabError, match="line 6, column 4: more than 100,000 values once aliases are expanded"):
        load_spec(write(tmp_path, "\n".join(lines) + "\n"))
    with pytest.raises(DepthlabError, match="a loop"):
        load_spec(write(tmp_path, "grid: &g {seed: *g}\n"))
    with pytest.raises(DepthlabError, match="nested too deeply"):
        load_spec(write(tmp_path, "grid: " + "[" * 20000 + "]" * 20000 + "\n"))


def test_size_counts_runs_without_expanding_and_absurd_grids_are_refused():
    spec = SweepSpec.from_dict({"name": "t", "grid": {"seed": [0, 1, 2], "width": [4, 8], "norm": "batch"},
                                "runs": [{}, {"blocks": [2, 4, 6]}], "exclude": [{"seed": 0}]})
    assert spec.size() == 6 + 18 and len(spec.configs()) == 4 + 12 - 4  # size: before exclude and duplicates
    huge = SweepSpec.from_dict({"name": "huge", "grid": {"seed": list(range(200)), "lr": [0.1 * k for k in
                               range(1, 101)], "width": list(range(1, 101)), "blocks": list(range(1, 11))}})
    assert huge.size() == 20_000_000 > MAX_RUNS
    with pytest.raises(DepthlabError, match=r"sweep 'huge' has 20,000,000 runs .* at most 1,000,000 are allowed"):
        huge.configs()


def test_dry_run_of_a_big_grid_counts_without_expanding(tmp_path, capsys):
    big = write(tmp_path, "grid:\n  seed: [" + ",".join(map(str, range(2000))) + "]\n  width: [4, 8, 16, 32, 64]\n"
                "  blocks: [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]\n", "big.yaml")
    store = tmp_path / "s.sqlite"
    assert main(["run", str(big), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep big: at most 100,000 runs" in out and "nothing trained" in out and not store.exists()
    huge = write(tmp_path, big.read_text() + "  kernel: [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21]\n", "huge.yaml")
    assert main(["run", str(huge), "--store", str(store), "--dry-run"]) == 2
    assert "sweep 'huge' has 1,100,000 runs" in capsys.readouterr().err and not store.exists()


@pytest.mark.parametrize("fields, field, says", [
    ({"dataset": "synthetic"}, "val_split", "a count below 1024 or a fraction in [0, 1) (synthetic has 1024 train"),
    ({"dataset": "synthetic", "val_split": 64, "train_subset": 961}, "train_subset",
     "at most 960 (synthetic has 1024 train and 256 test examples; val_split holds out 64)"),
    ({"dataset": "synthetic", "val_split": 0.5, "train_subset": 513}, "train_subset", "at most 512"),
    ({"dataset": "synthetic", "val_split": 64, "test_subset": 257}, "test_subset", "at most 256"),
    ({"dataset": "mnist", "val_split": 60000}, "val_split", "a count below 60000"),
    ({"dataset": "cifar10", "train_subset": 45001}, "train_subset", "at most 45000"),
])
def test_data_fields_larger_than_the_dataset_are_refused_up_front(fields, field, says):
    with pytest.raises(SpecError) as err:
        SweepSpec.from_dict({"name": "t", "defaults": fields, "grid": {"seed": [0]}}).configs()
    assert err.value.field == field and says in str(err.value) and "in sweep 't'" in str(err.value)


def test_data_fields_that_fit_are_accepted_and_excluded_runs_need_not_fit():
    ok = SweepSpec.from_dict({"name": "t", "defaults": {"dataset": "synthetic", "val_split": 64, "train_subset":
                                                        960, "test_subset": 256}, "grid": {"seed": [0]}})
    assert len(ok.configs()) == 1
    assert len(SweepSpec.from_dict({"name": "t", "grid": {"dataset": ["synthetic", "mnist"]},
                                    "exclude": [{"dataset": "synthetic"}]}).configs()) == 1


def test_a_boolean_never_matches_a_number_in_exclude():
    spec = SweepSpec.from_dict({"name": "t", "grid": {"kernel": [1, 3]}, "exclude": [{"kernel": True}]})
    assert [c.kernel for c in spec.configs()] == [1, 3]


def test_long_overrides_name_the_sweep_by_a_short_hash():
    seeds = [f"seed=[{', '.join(map(str, range(40)))}]", "width=4"]
    spec = load_spec("smoke").with_overrides(parse_overrides(seeds))
    assert spec.name.startswith("smoke[seed,width #") and len(spec.name) < 40  # the fields, then a hash
    assert spec.name == load_spec("smoke").with_overrides(parse_overrides(seeds)).name  # stable: same sweep
    other = load_spec("smoke").with_overrides(parse_overrides([seeds[0], "width=8"]))
    assert other.name != spec.name and other.name.startswith("smoke[seed,width #")
    assert load_spec("smoke").with_overrides(parse_overrides(["width=4"])).name == "smoke[width=4]"


def test_name_option_renames_the_sweep(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    assert main(["run", "smoke", "--set", "width=2", "--name", "mine", "--store", str(store), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("sweep mine: 4 runs")


def test_a_field_given_as_the_spec_points_to_set():
    """`depthlab run epochs=1` (Hydra's habit) names --set instead of only saying the file is missing."""
    with pytest.raises(DepthlabError, match=r"epochs=1: no such spec file; .*--set epochs=1 "):
        load_spec("epochs=1")


def test_a_list_that_could_be_one_per_block_value_is_refused_with_both_spellings(tmp_path, capsys):
    """#23: a per-block `hidden` list given in grid:, runs: or --set silently became a grid axis (runs of one
    width each). Where a flat list is as long as a run's blocks it reads either way: refused, naming both."""
    base = {"name": "h", "defaults": {"dataset": "synthetic", "width": 4, "val_split": 64}}
    with pytest.raises(SpecError, match=r"^grid.hidden: got \[8, 16\]; allowed: \[\[8, 16\]\] for hidden \[8, 16\], "
                       r"one per block .* or runs: \[\{hidden: 8\}, \{hidden: 16\}\] for a run of each$"):
        SweepSpec.from_dict({**base, "grid": {"hidden": [8, 16]}})
    with pytest.raises(SpecError, match=r"^runs\[1\].hidden: got \[8, 16, 4\]"):
        SweepSpec.from_dict({**base, "runs": [{"blocks": 2}, {"hidden": [8, 16, 4], "blocks": [2, 3]}]})
    # each spelling the error shows does what it says: one run of a width per block; a run of each width
    (one,) = SweepSpec.from_dict({**base, "grid": {"hidden": [[8, 16]]}}).configs()
    assert one.hidden == (8, 16)
    assert [c.hidden for c in SweepSpec.from_dict({**base, "runs": [{"hidden": 8}, {"hidden": 16}]}).configs()] == \
        [8, 16]
    # a list that cannot be one value (3 widths for 2 blocks) varies the field, as every grid list does; a list
    # in defaults is one value
    assert [c.hidden for c in SweepSpec.from_dict({**base, "grid": {"hidden": [8, 16, 32]}}).configs()] == [8, 16, 32]
    defaults = {**base["defaults"], "hidden": [8, 16]}
    assert [c.hidden for c in SweepSpec.from_dict({**base, "defaults": defaults}).configs()] == [(8, 16)]
    # --set: the same rule, with the --set spelling that works
    spec = SweepSpec.from_dict({**base, "grid": {"seed": [0, 1]}})
    with pytest.raises(SpecError, match=r"^--set hidden: got \[8, 16\]; allowed: --set 'hidden=\[\[8,16\]\]'"):
        spec.with_overrides(parse_overrides(["hidden=[8,16]"]))
    assert [c.hidden for c in spec.with_overrides(parse_overrides(["hidden=[[8,16]]"])).configs()] == [(8, 16)] * 2
    assert main(["run", "smoke", "--set", "hidden=[8,16]", "--dry-run", "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthlab: error: --set hidden: got [8, 16]") and err.count("\n") == 1
    # exclude matches a per-block value (validation makes a tuple of the list)
    spec = SweepSpec.from_dict({**base, "grid": {"hidden": [[8, 16], [4, 4]]}, "exclude": [{"hidden": [4, 4]}]})
    assert [c.hidden for c in spec.configs()] == [(8, 16)]
