"""Pack sizes: on a CPU measured per shape (cached in the store), and never a change to what a run learns."""

import json

import pytest

from depthlab.data import load
from depthlab.train import packs
from depthlab.run import runner
from depthlab.spec.config import RunConfig
from depthlab.train.engine import training_throughput
from depthlab.run.runner import plan, run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

SPEC = {"name": "p", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                  "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2, 3, 4]}}


def spec(**grid):
    return SweepSpec.from_dict({**SPEC, "grid": {**SPEC["grid"], **grid}})


def fake_rates(rates):
    tried = []

    def throughput(configs, dataset, **kwargs):
        tried.append(len(configs))
        assert len({c.seed for c in configs}) == len(configs)  # distinct models, one shape
        return rates[len(configs)]
    return throughput, tried


@pytest.mark.parametrize("rates, cap, chosen, tried", [
    ({1: 100, 2: 180, 4: 300, 8: 290}, 8, 8, [1, 2, 4, 8]),   # 8 is within 5% of the fastest: fewer packs
    ({1: 100, 2: 180, 4: 300, 8: 250}, 8, 4, [1, 2, 4, 8]),
    ({1: 100, 2: 80}, 8, 1, [1, 2]),                           # packing loses at once: larger packs not tried
    ({1: 100, 2: 90, 4: 120, 8: 100}, 8, 4, [1, 2, 4, 8]),     # within the give-up margin: the search goes on
    ({1: 100, 2: 150, 3: 200}, 3, 3, [1, 2, 3]),               # the cap (runs waiting) is tried itself
])
def test_calibration_keeps_the_largest_size_near_the_fastest(monkeypatch, rates, cap, chosen, tried):
    throughput, seen = fake_rates(rates)
    monkeypatch.setattr(packs, "training_throughput", throughput)
    size, measured = packs.calibrate(RunConfig(dataset="synthetic"), None, None, "fp32", cap)
    assert size == chosen and seen == tried and measured == {s: rates[s] for s in tried}


def test_training_throughput_is_measured_on_the_real_engine_step():
    data = load("synthetic", val_split=32, n_train=128, n_test=32, shape=(1, 12, 12))
    configs = [RunConfig(dataset="synthetic", width=4, batch_size=32, seed=s) for s in range(2)]
    assert training_throughput(configs, data, precision="fp32", steps=2, warmup=1) > 0


@pytest.fixture
def always_measure(monkeypatch):
    """Shapes measured however little their runs train (the tests' sweeps are tiny)."""
    monkeypatch.setattr(packs, "CALIBRATION_PAYBACK", 0)


def test_a_shape_is_measured_once_per_store_and_its_size_used(tmp_path, monkeypatch, always_measure):
    calls = []
    real = runner.calibrate

    def counting(config, *args, **kwargs):
        calls.append(config.topology)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(runner, "calibrate", counting)
    store = tmp_path / "s.sqlite"
    logs = []
    run_sweep(spec(), store, device="cpu", precision="fp32", progress=False, log=logs.append)
    assert sorted(calls) == ["parallel", "sequential"]
    assert sum("pack size" in line and "model-samples/s" in line for line in logs) == 2
    with Store(store, readonly=True) as s:
        records = s.records()
        sizes = {r.config["topology"]: r.pack_size for r in records}
        the_plan = plan(spec(seed=[5, 6, 7, 8, 9, 10]), s, runner.resolve_device("cpu"), add=False,
                        precision="fp32")
    assert all(1 <= n <= 5 for n in sizes.values())
    # a new sweep of the same shapes: the sizes come from the store, nothing is measured again
    assert the_plan.uncalibrated == 0 and len(the_plan.sizes) == 2
    expected = []
    for size in the_plan.sizes.values():  # 6 runs of each shape, in the fewest even packs of the stored size
        count = -(-6 // size)
        expected += [6 // count + (i < 6 % count) for i in range(count)]
    assert sorted(len(p) for p in the_plan.packs) == sorted(expected)
    run_sweep(spec(seed=[5, 6, 7, 8, 9, 10]), store, device="cpu", precision="fp32", progress=False,
              log=logs.append)
    assert len(calls) == 2
    # another precision is another measurement
    with Store(store, readonly=True) as s:
        assert plan(spec(seed=[11, 12]), s, runner.resolve_device("cpu"), add=False,
                    precision="bf16").uncalibrated == 2


def test_max_pack_caps_the_calibration_and_one_waiting_run_is_not_measured(tmp_path, monkeypatch, always_measure):
    seen = []
    monkeypatch.setattr(runner, "calibrate", lambda config, data, device, precision, cap, **kw: (seen.append(cap), (cap, {cap: 1.0}))[1])
    run_sweep(spec(), tmp_path / "s.sqlite", device="cpu", precision="fp32", progress=False, max_pack=2,
              log=lambda m: None)
    assert seen == [2, 2]
    run_sweep(spec(topology=["sequential"], seed=[9]), tmp_path / "t.sqlite", device="cpu", precision="fp32",
              progress=False, log=lambda m: None)
    assert seen == [2, 2]


def test_a_calibration_that_fails_costs_speed_not_runs(tmp_path, monkeypatch, always_measure):
    def broken(*args, **kwargs):
        raise RuntimeError("no timer")

    monkeypatch.setattr(runner, "calibrate", broken)
    logs = []
    summary = run_sweep(spec(), tmp_path / "s.sqlite", device="cpu", precision="fp32", progress=False,
                        log=logs.append)
    assert summary["trained"]["done"] == 10
    assert any("not measured (RuntimeError: no timer); packs of 2" in line for line in logs)
    with Store(tmp_path / "s.sqlite", readonly=True) as s:
        assert {r.pack_size for r in s.records()} == {packs.CPU_DEFAULT_PACK["fp32"], 1}


def test_runs_too_small_to_repay_a_measurement_take_the_default_size(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "calibrate", lambda *args, **kwargs: pytest.fail("measured a shape not worth it"))
    run_sweep(spec(), tmp_path / "s.sqlite", device="cpu", precision="fp32", progress=False, log=lambda m: None)
    with Store(tmp_path / "s.sqlite", readonly=True) as s:
        assert {r.pack_size for r in s.records()} == {packs.CPU_DEFAULT_PACK["fp32"], 1}  # 5 runs: 2 + 2 + 1
    # the default follows the precision: 4 in bf16, 2 in float32 (bench/cpu_throughput.py)
    cpu = runner.resolve_device("cpu")
    assert sorted(len(p) for p in plan(spec(), None, cpu, add=False, precision="bf16").packs) == [2, 2, 3, 3]  # 5 runs: 3 + 2
    assert sorted(len(p) for p in plan(spec(), None, cpu, add=False, precision="fp32").packs) == [1, 1, 2, 2, 2, 2]
    assert not packs.worth_calibrating([RunConfig(dataset="synthetic", epochs=1)] * 5, 128, 8)
    # 16 runs of 5 epochs over MNIST's 55,000 examples: 4.4M samples against 11 x 128 x 15 = 21,120
    assert packs.worth_calibrating([RunConfig(epochs=5)] * 16, 55_000, 8)


def test_epochs_and_data_subsets_share_a_calibration_shapes_do_not():
    import torch

    cpu = torch.device("cpu")
    base = RunConfig(dataset="synthetic", width=4)
    assert packs.calibration_key(base, cpu, "bf16") == packs.calibration_key(
        base.replace(epochs=9, train_subset=100, schedule="linear"), cpu, "bf16")
    for other in (base.replace(width=8), base.replace(batch_size=64), base.replace(optimizer="sgd")):
        assert packs.calibration_key(other, cpu, "bf16") != packs.calibration_key(base, cpu, "bf16")
    assert packs.calibration_key(base, cpu, "fp32") != packs.calibration_key(base, cpu, "bf16")
    # a layout other than the default's is measured apart; the default's key is the one stores had before layouts
    # were a choice (tests/sweep/test_store_identity.py), and a layout auto would choose anyway shares it
    for precision, default, other in (("fp32", "nchw", "channels_last"), ("bf16", "channels_last", "nchw")):
        keys = {layout: packs.calibration_key(base, cpu, precision, 1, layout) for layout in ("auto", default, other)}
        assert keys["auto"] == keys[default] != keys[other]
        assert json.loads(keys[other])["channels_last"] is (other == "channels_last")


def test_the_gpu_memory_estimate_follows_the_precision():
    """A pack planned for float32 on a GPU must not be sized as if its activations were bf16 (half as large)."""
    from depthlab.train.engine import bytes_per_model

    config = RunConfig(width=32, blocks=4, batch_size=128)
    fp32, bf16 = (bytes_per_model(config, 1, 28, p) for p in ("fp32", "bf16"))
    assert 1.9 * bf16 < fp32 < 2 * bf16  # activations dominate; parameters and optimizer state stay float32
