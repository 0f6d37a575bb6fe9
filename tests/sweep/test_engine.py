"""The packed engine trains every model exactly as it would be trained alone."""

import math

import pytest
import torch

from depthlab.errors import SpecError
from depthlab.data import load
from depthlab.train import engine, recipe
from depthlab.spec.config import RunConfig
from depthlab.train.engine import train_pack, train_pack_splitting


@pytest.fixture(scope="module")
def data():
    return load("synthetic", val_split=64, n_train=320, n_test=64, shape=(1, 12, 12))


def config(**fields):
    base = dict(dataset="synthetic", val_split=64, width=4, blocks=2, kernel=3, batch_size=32, epochs=2,
                schedule="cosine")
    return RunConfig(**{**base, **fields})


def assert_same_run(a, b, rtol=1e-4, atol=1e-5):
    assert a.status == b.status
    for key, value in a.final.items():
        assert value == pytest.approx(b.final[key], rel=rtol, abs=1e-6), key
    for key, tensor in a.state_dict.items():
        if tensor.dtype.is_floating_point:
            assert torch.allclose(tensor, b.state_dict[key], rtol=rtol, atol=atol), key


@pytest.mark.parametrize("fields", [
    dict(topology="sequential", optimizer="adam", norm="batch"),
    dict(topology="parallel", optimizer="sgd", norm="none", residual_scale="learnable"),
])
def test_packed_training_equals_one_by_one(data, fields):
    configs = [config(seed=0, lr=0.003, **fields), config(seed=1, lr=0.01, weight_decay=1e-3, **fields),
               config(seed=2, augment="translate", **fields)]
    if fields.get("residual_scale") != "learnable":  # a fixed λ is per model too
        configs.append(config(seed=3, **{**fields, "residual_scale": "1/n"}))
    packed = train_pack(configs, data, keep_weights=True)
    for c, result in zip(configs, packed):
        alone = train_pack([c], data, keep_weights=True)[0]
        assert_same_run(result, alone)
    # and the models really differ from each other (own seed, own hyper-parameters)
    assert packed[0].final["train_loss"] != packed[1].final["train_loss"]
    assert len(packed[0].history) == 2 and packed[0].history[-1]["epoch"] == 2


def test_training_learns(data):
    result = train_pack([config(epochs=6, lr=0.01, width=8)], data)[0]
    assert result.status == "done"
    assert result.final["train_acc"] > 0.5 and result.final["train_loss"] < math.log(10)


def test_training_time_is_recorded_apart_from_evaluation(data, monkeypatch):
    slow_evaluation = engine.evaluate

    def evaluate(*args, **kwargs):  # evaluation made measurably slow: it must not count as training time
        import time
        time.sleep(0.2)
        return slow_evaluation(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    result = train_pack([config(seed=0), config(seed=1)], data)[0]
    epochs = result.history
    assert all(0 < e["train_seconds"] < e["seconds"] - 0.19 for e in epochs)  # each epoch's validation excluded
    assert result.train_seconds == pytest.approx(sum(e["train_seconds"] for e in epochs))
    assert result.train_seconds < result.seconds - 3 * 0.19  # and so are the final train and test passes


def test_forced_nan_is_diverged_and_pack_mates_carry_on(data):
    fields = dict(optimizer="sgd", norm="none", residual_scale="1", epochs=2)
    sane, wild = config(seed=0, lr=0.01, **fields), config(seed=1, lr=1e12, **fields)
    results = train_pack([sane, wild], data, keep_weights=True)
    assert results[1].status == "diverged" and "NaN" in results[1].error
    assert results[1].history[-1].get("diverged")
    assert results[0].status == "done"
    assert_same_run(results[0], train_pack([sane], data, keep_weights=True)[0])


def test_out_of_memory_splits_the_pack(data, monkeypatch):
    real = engine.train_pack
    sizes = []

    def fake_train_pack(configs, dataset, **kwargs):
        sizes.append(len(configs))
        if len(configs) > 1:  # pretend only one model fits at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(configs, dataset, **kwargs)

    monkeypatch.setattr(engine, "train_pack", fake_train_pack)
    splits, epochs = [], []
    configs = [config(seed=s, epochs=1) for s in range(3)]
    results = train_pack_splitting(configs, data, on_split=splits.append,
                                   on_epoch=lambda i, metrics: epochs.append(i))
    assert [r.config.seed for r in results] == [0, 1, 2] and all(r.status == "done" for r in results)
    assert splits == [(1, 2), (1, 1)] and sizes == [3, 1, 2, 1, 1]
    assert epochs == [0, 1, 2]  # each config's epochs reported under its own index, whichever half trained it


def test_a_model_that_never_fits_is_failed_not_lost(data, monkeypatch):
    def always_oom(configs, dataset, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")

    monkeypatch.setattr(engine, "train_pack", always_oom)
    results = train_pack_splitting([config(seed=0), config(seed=1)], data)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "out of memory" in results[0].error


def test_other_errors_are_not_mistaken_for_oom(data, monkeypatch):
    monkeypatch.setattr(engine, "train_pack", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError):
        train_pack_splitting([config()], data)


def test_mixed_pack_keys_are_refused(data):
    with pytest.raises(ValueError, match="pack key"):
        train_pack([config(width=4), config(width=8)], data)


def test_bf16_training_ends_close_to_fp32(data):
    """bf16 autocast (channels_last by default with it) trains a pack to within 5% of float32's final losses,
    on any CPU (emulated where bf16 is not native); channels_last alone changes only float32 round-off."""
    configs = [config(seed=0, epochs=2), config(seed=1, epochs=2)]
    fast = train_pack(configs, data, precision="bf16", keep_weights=True)
    plain = train_pack(configs, data, precision="fp32", keep_weights=True)
    for a, b in zip(fast, plain):
        assert a.status == "done" and a.env["precision"] == "bf16" and a.env["channels_last"] is True
        assert b.env["precision"] == "fp32" and b.env["channels_last"] is False
        for metric in ("train_loss", "val_loss", "test_loss"):
            assert a.final[metric] == pytest.approx(b.final[metric], rel=0.05), metric
        assert a.final["train_loss"] != b.final["train_loss"]  # bf16 really ran
    exact = train_pack(configs, data, layout="channels_last", keep_weights=True)
    for a, b in zip(exact, plain):  # NHWC kernels sum in another order: float32 round-off, nothing more
        assert_same_run(a, b, rtol=1e-3, atol=1e-4)


def test_an_lk_pack_in_bf16_records_its_float32_depthwise_convs(data):
    """What computes in float32 under bf16 autocast is recorded with the run (how it was computed, like the
    layout); a 3x3 pack has no such part, and neither has an lk pack in float32."""
    lk = dict(branch="lk", kernel=5, reparam="dilated", epochs=1)
    (bf16,) = train_pack([config(**lk)], data, precision="bf16")
    (fp32,) = train_pack([config(**lk)], data, precision="fp32")
    (conv,) = train_pack([config(epochs=1)], data, precision="bf16")
    assert bf16.status == "done" and bf16.env["float32_parts"] == "depthwise convs and their norms"
    assert "float32_parts" not in fp32.env and "float32_parts" not in conv.env


def test_validating_every_few_epochs_changes_only_which_epochs_hold_validation(data):
    """eval_every=3 of 4 epochs validates after epochs 3 and 4 (the last always): the other epochs record the
    training metrics only, and the run learns exactly what it learns when every epoch is validated."""
    configs = [config(seed=0, epochs=4), config(seed=1, epochs=4)]
    every = train_pack(configs, data, keep_weights=True)
    sparse = train_pack(configs, data, keep_weights=True, eval_every=3)
    for a, b in zip(every, sparse):
        assert [("val_loss" in h, "val_acc" in h) for h in b.history] == [(False, False), (False, False),
                                                                         (True, True), (True, True)]
        assert [h["train_loss"] for h in b.history] == [h["train_loss"] for h in a.history]
        assert [h["val_acc"] for h in b.history[2:]] == [h["val_acc"] for h in a.history[2:]]
        assert b.final == a.final and b.env["eval_every"] == 3 and a.env["eval_every"] == 1
        assert all(torch.equal(b.state_dict[k], a.state_dict[k]) for k in a.state_dict)
    with pytest.raises(ValueError, match="eval_every"):
        train_pack(configs, data, eval_every=0)


def test_geometric_complexity_is_recorded_per_model(data, complexity_oracle):
    from depthlab.data import normalise
    from depthlab.models import build

    configs = [config(seed=0, epochs=1), config(seed=1, epochs=1, lr=0.01)]
    results = train_pack(configs, data, keep_weights=True)
    for c, r in zip(configs, results):
        model = build(c.model_spec(1, 12, 10))
        model.load_state_dict(r.state_dict)
        x = normalise(data.train_x[:recipe.TABLE.complexity_examples], data.mean, data.std)
        assert r.final["geometric_complexity"] == pytest.approx(complexity_oracle(model, x), rel=1e-4)
    assert results[0].final["geometric_complexity"] != results[1].final["geometric_complexity"]


def test_the_environment_records_provenance_and_partial_data(data):
    import dataclasses

    from depthlab.train.engine import RECIPE

    (result,) = train_pack([config(epochs=1)], data)
    env = result.env
    assert env["recipe"] == RECIPE and env["depthlab"] and "git_commit" in env and env["data_source"] == "generated"
    assert "data_complete" not in env
    (partial,) = train_pack([config(epochs=1)], dataclasses.replace(data, complete=False))
    assert partial.env["data_complete"] is False


def test_the_final_train_metrics_cover_at_most_the_recorded_number_of_examples(data, monkeypatch):
    """Recipe 2: the final train loss/accuracy are measured on the first `train_eval_examples` training examples."""
    import dataclasses

    from depthlab.measure import evaluate

    monkeypatch.setattr(recipe, "TABLE", dataclasses.replace(recipe.TABLE, train_eval_examples=100))
    (result,) = train_pack([config(epochs=1)], data, keep_weights=True)
    assert result.env["train_eval_examples"] == 100
    from depthlab.models import build

    model = build(config().model_spec(1, 12, 10))
    model.load_state_dict(result.state_dict)
    loss, acc = evaluate(model, data.train_x[:100], data.train_y[:100], data.mean, data.std)
    assert result.final["train_loss"] == pytest.approx(float(loss[0]), rel=1e-5)
    assert result.final["train_acc"] == pytest.approx(float(acc[0]))
    monkeypatch.setattr(recipe, "TABLE", dataclasses.replace(recipe.TABLE, train_eval_examples=10_000))  # all
    (whole,) = train_pack([config(epochs=1)], data)
    assert whole.env["train_eval_examples"] == len(data.train_x)


def test_the_complexity_can_be_skipped_and_that_is_recorded(data):
    (skipped,) = train_pack([config(epochs=1)], data, complexity=False)
    assert skipped.status == "done" and skipped.final["geometric_complexity"] is None
    assert skipped.env["complexity"] is False and skipped.final["val_loss"] is not None
    (measured,) = train_pack([config(epochs=1)], data)
    assert measured.env["complexity"] is True and measured.final["geometric_complexity"] > 0
    assert measured.final["val_loss"] == skipped.final["val_loss"]  # nothing else changes


def test_precision_layout_and_pack_size_are_recorded(data):
    results = train_pack([config(epochs=1, seed=0), config(epochs=1, seed=1)], data, precision="fp32")
    assert all(r.env["precision"] == "fp32" and r.env["channels_last"] is False and r.env["pack_size"] == 2
               for r in results)
    (lk,) = train_pack([config(epochs=1, branch="lk", kernel=5)], data, precision="fp32")
    assert lk.env["channels_last"] is True  # large depthwise kernels: channels_last on the CPU in any precision
    (chosen,) = train_pack([config(epochs=1)], data, precision="fp32", layout="channels_last")
    assert chosen.env["channels_last"] is True and chosen.env["precision"] == "fp32"
    (lk,) = train_pack([config(epochs=1, branch="lk", kernel=5)], data, precision="fp32", layout="nchw")
    assert lk.env["channels_last"] is False  # a chosen layout overrides the branch type's


def test_an_unknown_layout_is_refused_naming_the_allowed_ones(data):
    with pytest.raises(SpecError, match="layout.*auto, channels_last, nchw"):
        train_pack([config(epochs=1)], data, layout="nhwc")


def test_evaluation_batches_stay_cache_sized_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [engine.evaluation_batch(cpu, 100, m) for m in (1, 2, 4, 8)] == [400, 200, 100, 50]
    assert engine.evaluation_batch(cpu, 32, 1) == 128 and engine.evaluation_batch(cpu, 100, 1000) == 1
    assert engine.evaluation_batch(cuda, 512, 64) == engine.EVAL_BATCH  # a GPU takes large batches
