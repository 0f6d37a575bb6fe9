"""Equal budgets: `param_budget` chooses hidden (or width) so that runs of different kernels and branch types have
the same inference parameters, within 1%, or names the run and the closest count it can reach."""

import pytest

from depthlab.errors import SpecError
from depthlab.models import build, fuse_for_inference, param_count, spec_params
from depthlab.spec.config import RunConfig
from depthlab.train.optim import decays


@pytest.mark.parametrize("width", [8, 16, 32])
@pytest.mark.parametrize("branch,kernel,reparam", [("conv", 3, "none"), ("conv", 5, "none"), ("lk", 7, "none"),
                                                   ("lk", 13, "dilated"), ("lk", 13, "same_equivalent")])
def test_a_budget_is_met_within_one_percent(width, branch, kernel, reparam):
    budget = 150_000
    fields = dict(width=width, blocks=4, branch=branch, kernel=kernel, reparam=reparam)
    # the oracle: every hidden from 1 to 3000, counted on the merged model's spec
    counts = {h: spec_params(RunConfig(hidden=h, **fields).model_spec(), merged=True) for h in range(1, 3001)}
    best = min(counts, key=lambda h: (abs(counts[h] - budget), h))
    if abs(counts[best] - budget) > 0.01 * budget:  # this width's steps are too coarse: the named error
        with pytest.raises(SpecError, match=f"closest: {counts[best]} parameters at hidden {best}"):
            RunConfig(param_budget=budget, **fields)
        return
    config = RunConfig(param_budget=budget, **fields)
    assert config.hidden == best
    spec = config.model_spec()
    realised = param_count(fuse_for_inference(build(spec, seed=0)))
    assert realised == counts[best] and abs(realised - budget) <= 0.01 * budget
    assert RunConfig.from_dict(config.to_dict()) == config  # the chosen hidden is part of the config, and stable


def test_a_budget_by_width_and_the_named_error():
    config = RunConfig(blocks=2, param_budget=58_600, budget_by="width")
    assert config.width == 40 and config.hidden is None  # 58,530 inference parameters
    assert abs(spec_params(config.model_spec(), merged=True) - 58_600) <= 586
    with pytest.raises(SpecError, match=r"param_budget: got 20000; .*closest: \d+ parameters at hidden \d+; "
                                        r"run conv k3, 8 blocks"):
        RunConfig(blocks=8, param_budget=20_000)
    with pytest.raises(SpecError, match="hidden: got 5; allowed: null: param_budget 150000 chooses it"):
        RunConfig(blocks=4, hidden=5, param_budget=150_000)
    with pytest.raises(SpecError, match="budget_by: got 'depth'; allowed: hidden, width"):
        RunConfig(param_budget=10_000, budget_by="depth")


def test_an_absurd_budget_is_refused_before_anything_is_built():
    """#23: `param_budget: 10^12` passed the dry run with a hidden width of about 10^10."""
    with pytest.raises(SpecError, match=r"param_budget: got 1000000000000; allowed: at most [\d,]+ for this run "
                                        r"\(hidden up to 65,536"):
        RunConfig(blocks=2, param_budget=10**12)


def test_weight_decay_covers_every_branch_types_weights():
    spec = RunConfig(branch="lk", kernel=7, reparam="dilated").model_spec()
    names = {n for n, decay in decays(build(spec)).items() if decay}
    assert {"stem.weight", "head.weight", "layers.0.dw.weight", "layers.0.dw_extra.0.weight", "layers.0.pw1.weight",
            "layers.0.conv2.weight"} <= names
    assert not any("norm" in n or n.endswith("bias") or n.endswith("alpha") or n.endswith("bias2") for n in names)
