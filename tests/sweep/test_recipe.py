"""The recipe's table: every constant that decides what training produces, in one place, pinned per recipe version,
read by the engine and recorded by every run."""

import dataclasses
import json

import pytest
import torch

from depthlab.data import load
from depthlab.records import run_id
from depthlab.train import recipe
from depthlab.spec.config import DEFAULT_LR, RunConfig
from depthlab.train.engine import train_pack
from depthlab.train.recipe import RECIPE, TABLE

# The digest of the table each recipe trains with (`Recipe.digest`). A change to the table changes what training
# produces: bump RECIPE in depthlab/train/recipe.py (saying what changed) and add the new table's digest here.
DIGESTS = {
    # recipe 2's table once default_lr joined it (the learning rates recipe 2 always trained with)
    2: "a2fe167ea829f3aa625db7b0cfd8a09eed5e91dfe3cb814cd3a9baaec02e5dab",
}


def test_the_table_changes_only_with_the_recipe():
    digest = TABLE.digest()
    if RECIPE in DIGESTS:
        assert digest == DIGESTS[RECIPE], (
            f"the recipe's table changed, but RECIPE is still {RECIPE}: a new table trains differently, so bump "
            f"RECIPE in depthlab/train/recipe.py (note what changed) and add {RECIPE + 1}: \"{digest}\" to DIGESTS "
            "in tests/sweep/test_recipe.py")
    else:
        pytest.fail(f"recipe {RECIPE} has no pinned table: add {RECIPE}: \"{digest}\" to DIGESTS in "
                    "tests/sweep/test_recipe.py")
    assert len(set(DIGESTS.values())) == len(DIGESTS), "two recipes with the same table: one bump too many"


def test_the_digest_covers_every_field():
    changed = {field.name: dataclasses.replace(TABLE, **{field.name: _other(getattr(TABLE, field.name))}).digest()
               for field in dataclasses.fields(TABLE)}
    assert sorted(name for name, digest in changed.items() if digest == TABLE.digest()) == []


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return tuple(_other(v) for v in value)
    if isinstance(value, str):
        return value + "'"
    return value + 1


def test_the_table_is_frozen_and_recorded_as_json():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TABLE.adam_eps = 1e-6
    record = TABLE.record()
    assert json.loads(json.dumps(record)) == record  # what a run's env gives back from the store
    assert record["adam_betas"] == [0.9, 0.999]


def test_lr_schedules():
    assert TABLE.lr_factor("cosine", 0.0) == 1.0 and TABLE.lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert TABLE.lr_factor("linear", 0.25) == 0.75 and TABLE.lr_factor("constant", 0.9) == 1.0
    floor = dataclasses.replace(TABLE, lr_end=0.1)
    assert floor.lr_factor("cosine", 1.0) == pytest.approx(0.1) and floor.lr_factor("linear", 1.0) == pytest.approx(0.1)
    assert floor.lr_factor("cosine", 0.0) == floor.lr_factor("linear", 0.0) == 1.0


def test_the_translation_follows_the_table(monkeypatch):
    def translate(dataset):
        return recipe.TABLE.translate(RunConfig(dataset=dataset, augment="translate"))

    assert (translate("mnist"), translate("fashion_mnist"), translate("cifar10")) == (2, 2, 4)
    assert TABLE.translate(RunConfig(dataset="cifar10")) == 0  # no augmentation, no shift
    monkeypatch.setattr(recipe, "TABLE", dataclasses.replace(TABLE, translate_small=3, small_image=32))
    assert (translate("mnist"), translate("cifar10")) == (3, 3)


def test_the_default_learning_rates_are_in_the_table():
    """`DEFAULT_LR` (depthlab.spec.config) trains every run without an `lr` and is not part of its id: the table
    refers to it, so the digest above pins it with the recipe."""
    assert dict(TABLE.default_lr) == DEFAULT_LR == {"adam": 1e-3, "sgd": 0.05}
    assert TABLE.record()["default_lr"] == [["adam", 1e-3], ["sgd", 0.05]]


@pytest.fixture(scope="module")
def data():
    return load("synthetic", val_split=32, n_train=128, n_test=32, shape=(1, 12, 12))


def _configs(optimizer):
    return [RunConfig(dataset="synthetic", val_split=32, width=4, batch_size=32, epochs=1, seed=seed,
                      optimizer=optimizer, augment="translate") for seed in (0, 1)]


def test_every_run_records_the_table_it_trained_with(data):
    results = train_pack(_configs("adam"), data)
    assert all(r.status == "done" and r.env["recipe"] == RECIPE for r in results)
    assert all(r.env["recipe_table"] == TABLE.record() for r in results)


@pytest.mark.parametrize("optimizer, change", [("adam", dict(adam_betas=(0.8, 0.99), adam_eps=1e-6)),
                                               ("sgd", dict(sgd_momentum=0.5)),
                                               ("adam", dict(translate_small=1))])
def test_the_engine_trains_with_the_table(data, monkeypatch, optimizer, change):
    """No second copy of a constant: changing the table changes the training, and the run records the change,
    while its id stays the same (the table is the recipe's; only `RECIPE` is part of a run's identity)."""
    configs = _configs(optimizer)
    ids = [run_id(c.to_dict(), RECIPE) for c in configs]
    before = train_pack(configs, data, keep_weights=True)
    monkeypatch.setattr(recipe, "TABLE", dataclasses.replace(TABLE, **change))
    after = train_pack(configs, data, keep_weights=True)
    for a, b in zip(before, after):
        assert any(not torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        assert b.env["recipe_table"] == recipe.TABLE.record() != a.env["recipe_table"]
    assert [run_id(c.to_dict(), RECIPE) for c in configs] == ids
