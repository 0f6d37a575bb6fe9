"""Per-block hidden widths (what pruning at initialisation decides): every topology and packs still compute the
blocks exactly, as one broad layer, with the parameters the widths imply."""

import pytest
import torch

from depthlab.errors import SpecError
from depthlab.models import ModelSpec, branch_output, build, flops, pack, param_count, spec_params
from depthlab.spec.config import RunConfig

WIDTHS = [3, 5, 2, 6]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_a_parallel_layer_of_unequal_branches_equals_its_branches(norm, train):
    spec = ModelSpec(width=4, blocks=4, hidden=WIDTHS, topology="parallel", norm=norm, residual_scale="learnable",
                     input_size=8)
    for models in (1, 2):
        net = pack([build(spec, seed=s).double() for s in range(models)]).train(train)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))  # α and biases away from their initial zeros
        layer = net.layers[0]
        x = torch.randn(3, models * 4, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(layer(x), x + sum(branch_output(layer, b, x) for b in range(4))) < 1e-10


def test_every_topology_holds_the_same_blocks_and_parameters():
    spec = ModelSpec(width=4, blocks=4, hidden=WIDTHS, input_size=8)
    seq = build(spec, seed=0).double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    h = seq.stem(x)
    with torch.no_grad():
        for layer in seq.layers:
            h = h + branch_output(layer, 0, h)
        assert rel_err(seq(x), seq.head(h)) < 1e-10
    for topology in ("sequential", "parallel", "groups:2"):
        model = build(spec.replace(topology=topology), seed=0)
        assert param_count(model) == spec_params(spec)
        assert [layer.hidden for layer in model.layers] == (
            [(w,) for w in WIDTHS] if topology == "sequential" else [tuple(WIDTHS)] if topology == "parallel"
            else [(3, 5), (2, 6)])
    uniform = spec.replace(hidden=3)
    assert flops(spec) - flops(uniform) == 2 * 2 * (sum(WIDTHS) - 12) * 4 * 9 * 64  # two convs per unit of width


def test_per_block_widths_are_validated_and_stable_in_a_config():
    with pytest.raises(SpecError, match="one width per block"):
        ModelSpec(blocks=3, hidden=[4, 4])
    with pytest.raises(SpecError, match="hidden"):
        ModelSpec(blocks=2, hidden=[4, 0])
    with pytest.raises(SpecError, match="equal widths for the branches of each layer"):
        ModelSpec(blocks=2, hidden=[4, 6], topology="parallel", norm="group")
    ModelSpec(blocks=2, hidden=[4, 6], topology="sequential", norm="group")  # one branch per layer: fine
    config = RunConfig(blocks=2, hidden=[4, 6])
    assert config.hidden == (4, 6) and RunConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["hidden"] == (4, 6) and hash(config)
