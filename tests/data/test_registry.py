"""The dataset registry is the one declaration of every dataset fact: a dataset added to it (here by monkeypatch,
with no other change) is a valid run, with its shape, classes, sizes, flips, chance loss and suite read from it."""

import math
import subprocess
import sys

import pytest

from depthlab.analysis.compare import BLOWN_UP, blown_up
from depthlab.data import corrupt, load, locate, registry
from depthlab.errors import SpecError
from depthlab.records import RunRecord
from depthlab.spec.config import RunConfig
from depthlab.run.progress import training_examples
from depthlab.spec.grid import check_data_sizes
from depthlab.train.recipe import TABLE

# A small colour dataset with 4 classes, loaded by the synthetic generator (its options give the shape).
TINY = registry.Entry("tiny_rgb", (3, 16, 16), 4, (100, 20), flip_ok=True, suite=None,
                      loader="depthlab.data.synthetic:generate")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "tiny_rgb", TINY)
    return TINY


def test_a_dataset_added_to_the_registry_is_a_valid_run(tiny):
    config = RunConfig(dataset="tiny_rgb", augment="translate+flip", val_split=10, train_subset=50)
    spec = config.model_spec()
    assert (spec.in_channels, spec.input_size, spec.num_classes) == (3, 16, 4)
    assert TABLE.translate(config) == 2 and config.flip  # 16 pixels: the small-image padding
    assert training_examples(config) == 50 and training_examples(config.replace(train_subset=None)) == 90
    check_data_sizes(config)
    with pytest.raises(SpecError, match="train_subset: got 91.*at most 90 \\(tiny_rgb has 100 train"):
        check_data_sizes(config.replace(train_subset=91))
    assert "tiny_rgb" in registry.available() and locate("tiny_rgb") == "generated"
    ds = load("tiny_rgb", shape=(3, 16, 16), num_classes=4, n_train=100, n_test=20)
    assert ds.train_x.shape == (100, 3, 16, 16) and ds.num_classes == 4 and ds.flip_ok and ds.complete


def test_unknown_datasets_are_refused_naming_the_registry_s(tiny):
    with pytest.raises(SpecError) as err:
        RunConfig(dataset="imagenet")
    assert err.value.field == "dataset" and ", ".join(registry.available()) in str(err.value)
    assert "fashion_mnist" in str(err.value) and "tiny_rgb" in str(err.value)


def test_flips_are_the_registry_s_to_allow():
    for name in registry.available():
        if registry.entry(name).flip_ok:
            RunConfig(dataset=name, augment="flip")
        else:
            with pytest.raises(SpecError, match=f"augment: got 'flip'; allowed: none or translate for {name}"):
                RunConfig(dataset=name, augment="flip")
    assert not registry.entry("mnist").flip_ok and not registry.entry("fashion_mnist").flip_ok


def test_chance_loss_is_ln_classes_and_decides_a_blown_up_run(tiny):
    assert registry.entry("mnist").chance_loss == pytest.approx(math.log(10))
    assert TINY.chance_loss == pytest.approx(math.log(4))
    loss = BLOWN_UP * math.log(7)  # over 10 × ln 4, under 10 × ln 10
    def record(dataset):
        return RunRecord.make({"dataset": dataset}, status="done", train_loss=loss)

    assert blown_up(record("tiny_rgb")) and not blown_up(record("mnist"))
    assert not blown_up(record("no_such_dataset"))  # no chance level known: not judged


def test_the_corruption_suite_is_the_registry_s(tiny):
    for name in registry.available():
        suite = registry.entry(name).suite
        if suite is None:
            with pytest.raises(SpecError, match=f"dataset: got '{name}'; allowed: one with a corruption suite"):
                corrupt.suite_of(name)
        else:
            assert corrupt.suite_of(name) == suite and suite in corrupt.SUITES
    assert registry.with_suite() == ["cifar10", "mnist", "synthetic"]


def test_every_entry_is_consistent():
    for name, entry in registry.REGISTRY.items():
        assert entry.name == name and len(entry.shape) == 3 and entry.shape[1] == entry.shape[2]
        assert entry.num_classes >= 2 and min(entry.sizes) > 0 and ":" in entry.loader
        if entry.checksums is not None:
            assert entry.remote or entry.packages or entry.cache  # checksums of files that come from somewhere


def test_the_registry_is_light():
    """Spec validation and the CLI read it without torch."""
    code = "import sys, depthlab.data.registry; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
