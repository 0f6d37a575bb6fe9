"""depthlab.study.cost: what a design costs on the device it runs on, measured on the network it trains, merged.

Values are checked in fp32 only: the suite runs on CPUs with and without native bf16."""

import json
import math

import pytest
import torch

from depthlab.models import flops, fuse_for_inference, spec_params
from depthlab.records import config_id
from depthlab.results.store import Store
from depthlab.spec.config import RunConfig
from depthlab.study import cost

SMALL = dict(width=12, blocks=8, dataset="mnist", stem_stride=2)
QUICK = dict(steps=1, warmup=0, repeats=(1, 1))  # counts only: one of each timing


def _config(**changes) -> RunConfig:
    return RunConfig(**{**SMALL, "batch_size": 16, **changes})


@pytest.mark.parametrize("changes", [{}, {"branch": "lk", "kernel": 7, "reparam": "dilated"}],
                         ids=["conv", "lk-dilated-k7"])
def test_params_and_flops_are_the_merged_networks(changes):
    config = _config(**changes)
    spec = config.model_spec()
    got = cost.measure(config, "cpu", "fp32", **QUICK)
    assert got["params"] == spec_params(spec, merged=True)
    assert got["flops"] == flops(spec, merged=True)
    fused = fuse_for_inference(cost.initial_network(config))
    assert got["params"] == sum(p.numel() for p in fused.parameters())  # the merged form, counted
    if changes:  # the dilated branches merge into one K×K kernel: fewer parameters than as trained
        assert got["params"] < spec_params(spec, merged=False)


def test_parallel_and_sequential_cost_the_same_params_and_flops():
    seq = cost.measure(_config(topology="sequential"), "cpu", "fp32", **QUICK)
    par = cost.measure(_config(topology="parallel"), "cpu", "fp32", **QUICK)
    assert (seq["params"], seq["flops"]) == (par["params"], par["flops"])


def test_timings_are_positive_and_finite_and_state_is_restored():
    config = RunConfig(**SMALL)  # the default measurement of the small network the budget is set for
    threads, rng, grad = torch.get_num_threads(), torch.random.get_rng_state(), torch.is_grad_enabled()
    got = cost.measure(config, "cpu", "fp32")
    for key in ("train_samples_per_s", "latency_b1_ms", "latency_b256_ms"):
        assert isinstance(got[key], float) and math.isfinite(got[key]) and got[key] > 0, key
    assert got["threads"] == threads and got["precision"] == "fp32"
    assert got["device"] == cost.device_name("cpu") and got["device"].startswith("cpu")
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)  # nothing seeded or drawn globally
    assert torch.is_grad_enabled() == grad


def test_threads_are_set_for_the_measurement_and_restored():
    before = torch.get_num_threads()
    got = cost.measure(_config(), "cpu", "fp32", threads=1, **QUICK)
    assert got["threads"] == 1
    assert torch.get_num_threads() == before


def test_the_training_step_is_measured_in_the_layout_asked_and_latency_in_the_networks_own():
    plain = cost.measure(_config(), "cpu", "fp32", **QUICK)
    assert plain["channels_last"] is False and plain["latency_channels_last"] is False  # the engine's default
    fast = cost.measure(_config(), "cpu", "fp32", layout="channels_last", **QUICK)
    assert fast["channels_last"] is True and fast["latency_channels_last"] is False  # not the training's
    lk = cost.measure(_config(branch="lk", kernel=5), "cpu", "fp32", layout="nchw", **QUICK)
    assert lk["channels_last"] is False and lk["latency_channels_last"] is True  # lk's own default


def test_latencies_are_measured_in_float32_on_a_cpu_whatever_the_training_precision():
    got = cost.measure(_config(), "cpu", "bf16", **QUICK)  # bf16 is emulated where it is not native: still valid
    assert got["precision"] == "bf16" and got["latency_precision"] == "fp32"


def test_auto_precision_is_recorded_resolved():
    got = cost.measure(_config(blocks=2), "cpu", "auto", **QUICK)
    assert got["precision"] in ("fp32", "bf16")


def test_a_cropped_design_costs_its_narrower_network():
    dense = _config()
    crop = _config(prune="precrop_params", density=0.5, prune_structure="crop")
    mask = _config(prune="precrop_params", density=0.5, prune_structure="mask")
    got = {name: cost.measure(c, "cpu", "fp32", **QUICK) for name, c in
           {"dense": dense, "crop": crop, "mask": mask}.items()}
    assert got["crop"]["params"] < got["dense"]["params"]
    assert got["crop"]["flops"] < got["dense"]["flops"]
    assert got["crop"]["params"] == spec_params(cost.initial_network(crop).spec, merged=True)
    # a mask zeroes weights of the dense network: it keeps the dense shape, and so its cost and its key
    assert got["mask"]["params"] == got["dense"]["params"]
    assert cost.cost_key(mask, "cpu", "fp32", 2) == cost.cost_key(dense, "cpu", "fp32", 2)
    assert cost.cost_key(crop, "cpu", "fp32", 2) != cost.cost_key(dense, "cpu", "fp32", 2)


def test_cost_key_names_what_the_cost_depends_on():
    base = RunConfig(**SMALL)
    key = cost.cost_key(base, "cpu", "fp32", 2)
    assert cost.cost_key(base.replace(seed=7), "cpu", "fp32", 2) == key
    assert cost.cost_key(base.replace(lr=0.01, weight_decay=1e-4, epochs=9, augment="translate"),
                         "cpu", "fp32", 2) == key
    assert cost.cost_key(base, "cpu", "bf16", 2) != key
    assert cost.cost_key(base, "cpu", "fp32", 1) != key
    # the fields a float32 CPU cost was keyed by before latencies and layouts were a choice: it keeps its key
    assert set(json.loads(key)) == {"shape", "device", "precision", "threads", "torch", "depthlab"}
    assert json.loads(cost.cost_key(base, "cpu", "bf16", 2))["latency"] == "fp32"  # bf16 training, fp32 latency
    assert json.loads(cost.cost_key(base, "cpu", "fp32", 2, "channels_last"))["channels_last"] is True
    assert cost.cost_key(base, "cpu", "fp32", 2, "nchw") == key  # what auto computes in: the same measurement
    assert cost.cost_key(base, "cpu", "bf16", 2, "channels_last") == cost.cost_key(base, "cpu", "bf16", 2)
    for changed in (base.replace(batch_size=64), base.replace(dataset="cifar10"), base.replace(width=16),
                    base.replace(topology="parallel")):
        assert cost.cost_key(changed, "cpu", "fp32", 2) != key
    assert torch.__version__ in key


def test_cost_key_of_a_crop_holds_the_seed_only_where_the_crop_depends_on_it():
    closed = RunConfig(**SMALL, prune="precrop_params", density=0.5, prune_structure="crop")
    scored = RunConfig(**SMALL, prune="magnitude", density=0.5, prune_structure="crop")
    key = lambda c: cost.cost_key(c, "cpu", "fp32", 2)
    assert key(closed.replace(seed=3)) == key(closed)      # closed-form densities: the same network for any seed
    assert key(scored.replace(seed=3)) != key(scored)      # scored on the seed's weights: its own network
    assert key(closed.replace(crop_init="keep")) == key(closed)  # the kept weights do not change the shape


def test_costs_measures_each_key_once_and_then_reads_the_store(tmp_path, monkeypatch):
    calls = []

    def fake(config, device, precision="fp32", **kwargs):
        calls.append(config)
        return {"params": 100 + config.width, "flops": 1, "train_samples_per_s": 1.0, "latency_b1_ms": 1.0,
                "latency_b256_ms": 2.0, "threads": kwargs["threads"], "device": cost.device_name(device),
                "precision": precision}

    monkeypatch.setattr(cost, "measure", fake)
    configs = [RunConfig(**SMALL, seed=0), RunConfig(**SMALL, seed=1), RunConfig(**{**SMALL, "width": 16})]
    lines = []
    with Store(tmp_path / "store.sqlite") as store:
        first = cost.costs(store, configs, "cpu", "fp32", log=lines.append, threads=2)
        assert len(calls) == 2  # the two seeds share a network
        assert len(lines) == 1
        assert set(first) == {config_id(c.to_dict()) for c in configs}
        assert first[config_id(configs[0].to_dict())] == first[config_id(configs[1].to_dict())]
        assert first[config_id(configs[2].to_dict())]["params"] == 116

        second = cost.costs(store, configs, "cpu", "fp32", log=lines.append, threads=2)
        assert len(calls) == 2 and len(lines) == 1  # all read from the store: nothing measured, nothing logged
        assert second == first
        assert store.cost(cost.cost_key(configs[2], "cpu", "fp32", 2))["params"] == 116

        cost.costs(store, configs[:1], "cpu", "fp32", threads=1)  # another thread count: measured anew
        assert len(calls) == 3


def test_a_crop_that_reads_training_data_needs_the_dataset():
    from depthlab.data.datasets import load

    config = _config(dataset="synthetic", val_split=100, prune="snip", density=0.5, prune_structure="crop")
    with pytest.raises(ValueError, match="training data"):
        cost.measure(config, "cpu", "fp32", **QUICK)
    dataset = load("synthetic", val_split=config.val_split)
    got = cost.measure(config, "cpu", "fp32", dataset=dataset, **QUICK)
    assert got["params"] < cost.measure(_config(dataset="synthetic"), "cpu", "fp32", **QUICK)["params"]
    assert cost.cost_key(config.replace(val_split=200), "cpu", "fp32", 2) != cost.cost_key(config, "cpu", "fp32", 2)
