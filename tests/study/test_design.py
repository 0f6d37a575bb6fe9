"""The study's design generator: how many designs each lever builds, every design within 1% of its budget, levers
sharing a design train it once, pairs differ only in their lever's contrast, and bad input is refused in one line."""

import pytest
import yaml

from depthlab.analysis.compare import pairing_key
from depthlab.errors import SpecError
from depthlab.models import spec_params
from depthlab.study.design import (BUDGET_TOLERANCE, LEVERS, StudySpec, designs, lever_designs, lever_pairs,
                                   parse_budgets, study_sweep)
from depthlab.study.levels import LEVELS


@pytest.fixture(scope="module")
def quick():
    spec = StudySpec(name="q")
    return spec, designs(spec)


def test_the_quick_level_has_the_designs_each_lever_asks_for(quick):
    spec, all_designs = quick
    count = lambda lever: len(lever_designs(all_designs, lever, 20_000))
    assert spec.depths == LEVELS["quick"].depths == (1, 2, 4, 8)
    assert count("depth") == 4                      # blocks 1, 2, 4, 8
    assert count("wiring") == 2 + 3 + 4            # d2: seq, parallel; d4: + groups:2; d8: + groups:2, groups:4
    assert count("scaling") == 5                    # BN λ=1, 1/√n, 1/n, SkipInit, Fixup at 8 blocks
    assert count("kernel") == 2 and count("crop") == 3  # quick: lk 7 against 3x3 (standard adds lk 13)
    # shared designs train once: the frontier's d4 is wiring's sequential, kernel's 3x3 and crop's dense design
    assert len(all_designs) == 17
    d4 = next(d for d in all_designs if d.name == "d4")
    assert set(d4.levers) == {"depth", "wiring", "kernel", "crop"}
    assert len(study_sweep(spec, {}).configs()) == 17 * spec.seeds


@pytest.mark.parametrize("budget", [20_000, 80_000])
def test_every_design_meets_its_budget_within_one_percent(budget):
    spec = StudySpec(name="b", budgets=(budget,), level="standard")
    for d in designs(spec):
        params = spec_params(d.config(0).model_spec(), merged=True)
        target = 2 * budget if d.name.endswith(("crop", "mask")) else budget  # cropped at init from twice the budget
        assert abs(params - target) <= BUDGET_TOLERANCE * target, (d.name, params)
        config = d.config(0)
        if config.branch == "lk":  # the kernel lever keeps the 3x3 design's width; its pointwise pair is wide
            continue
        assert 1 / 1.5 <= sum(config.block_hidden) / len(config.block_hidden) / config.width <= 1.5


def test_pairs_differ_in_their_levers_contrast_only_and_share_seeds(quick):
    _, all_designs = quick
    for lever in LEVERS:
        for a, b in lever_pairs(all_designs, lever, 20_000):
            for seed in (0, 2):
                ka = pairing_key(a.config(seed).to_dict(), LEVERS[lever].contrast)
                kb = pairing_key(b.config(seed).to_dict(), LEVERS[lever].contrast)
                assert ka == kb, (lever, a.name, b.name)
            assert a.key != b.key


def test_wirings_of_a_depth_have_equal_parameters(quick):
    _, all_designs = quick
    for a, b in lever_pairs(all_designs, "wiring", 20_000):
        assert spec_params(a.config(0).model_spec(), merged=True) == spec_params(b.config(0).model_spec(), merged=True)


def test_a_budget_too_small_names_the_smallest_that_fits():
    with pytest.raises(SpecError) as err:
        designs(StudySpec(name="s", dataset="synthetic", budgets=(3000,), depths=(1, 2, 4), kernels=(7, 13)))
    assert err.value.field == "budget" and "at least 3,297 parameters" in str(err.value)
    assert "lever kernel" in str(err.value)
    assert "lk" in str(err.value) and "kernel=13" in str(err.value)


def test_bad_fields_are_refused_with_the_allowed_values():
    with pytest.raises(SpecError, match="levers.*depth, wiring, scaling, kernel, crop, shift"):
        StudySpec(name="x", levers=("depth", "breadth"))
    with pytest.raises(SpecError, match="level.*quick, standard, thorough"):
        StudySpec(name="x", level="fast")
    with pytest.raises(SpecError, match="settings.blocks"):
        StudySpec(name="x", settings={"blocks": 3})
    with pytest.raises(SpecError, match="a study field"):
        StudySpec.from_dict({"name": "x", "budget": 5})
    assert parse_budgets("20k, 1.5M,5000") == (20_000, 1_500_000, 5000)
    with pytest.raises(SpecError, match="budget"):
        parse_budgets("lots")


def test_the_spec_round_trips_through_yaml():
    spec = StudySpec(name="rt", dataset="synthetic", budgets=(6000,), depths=(1, 2), seeds=3, max_seeds=7)
    again = StudySpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert again == spec and spec.looks == 3  # 3 seeds, then 5, then 7


def test_a_small_dataset_gets_subsets_that_fit_it():
    spec = StudySpec(name="s", dataset="synthetic")
    assert spec.train_subset is None and spec.settings["val_split"] == 1024 // 5
    assert spec.settings["test_subset"] == 256


def test_a_dataset_without_a_corruption_suite_skips_the_shift_lever_and_says_so():
    from depthlab.study.runner import skipped_levers

    skipped = skipped_levers(StudySpec(name="f", dataset="fashion_mnist"))
    assert list(skipped) == ["shift"] and "fashion_mnist has no corruption suite" in skipped["shift"]
    assert skipped_levers(StudySpec(name="m")) == {}
    assert "add depth" in skipped_levers(StudySpec(name="m", levers=("wiring", "shift")))["shift"]


def test_a_study_recorded_before_a_field_existed_resumes_and_a_changed_one_is_refused(tmp_path):
    """A study recorded by an earlier version lacks the fields added since (eval_every): it reads them at their
    default, as its spec file would, and resumes; a field recorded with another value is named in the refusal."""
    from depthlab.errors import DepthlabError
    from depthlab.results.store import Store
    from depthlab.study.runner import check_recorded

    spec = StudySpec(name="old", dataset="synthetic")
    assert spec.eval_every == LEVELS[spec.level].eval_every
    recorded = {k: v for k, v in spec.to_dict().items() if k != "eval_every"}
    with Store(tmp_path / "s.sqlite") as store:
        store.save_study("old", recorded, 1, {"seeds": {}, "phase": "training"})
        assert check_recorded(store, spec, "s.sqlite")["round"] == 1
        with pytest.raises(DepthlabError, match="differs in eval_every"):
            check_recorded(store, spec.replace(eval_every=1), "s.sqlite")
