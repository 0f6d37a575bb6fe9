"""Booleans are never numbers in a spec: Python's True == 1 must not let `kernel: true` through as a kernel of 1."""

import pytest

from depthlab.errors import SpecError
from depthlab.models import ModelSpec
from depthlab.spec.config import RunConfig
from depthlab.spec.grid import load_spec

NUMBER_FIELDS = ("width", "blocks", "kernel", "hidden", "stem_stride", "batch_size", "epochs", "seed",
                 "train_subset", "test_subset", "val_split", "lr", "weight_decay", "residual_scale")


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("name", NUMBER_FIELDS)
def test_a_boolean_is_refused_for_every_number_field(name, value):
    with pytest.raises(SpecError) as err:
        RunConfig(**{name: value})
    assert err.value.field == name and err.value.value is value
    assert "allowed: " in str(err.value) and len(err.value.allowed) > 2


@pytest.mark.parametrize("name", ["width", "blocks", "kernel", "hidden", "stem_stride", "in_channels",
                                  "num_classes", "input_size", "residual_scale"])
def test_model_spec_refuses_booleans(name):
    with pytest.raises(SpecError) as err:
        ModelSpec(**{name: True})
    assert err.value.field == name


def test_kernel_true_in_a_spec_file_names_the_field_and_the_allowed_values(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("grid:\n  kernel: [true]\n  hidden: [8]\n")
    with pytest.raises(SpecError, match="an odd integer from 1 to 31") as err:
        load_spec(path).configs()
    assert err.value.field == "kernel"
    path.write_text("grid:\n  hidden: [true]\n")
    with pytest.raises(SpecError, match="a positive integer, a list of one per block, or null") as err:
        load_spec(path).configs()
    assert err.value.field == "hidden"
