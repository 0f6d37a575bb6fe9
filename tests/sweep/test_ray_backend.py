"""The Ray backend on a real local Ray instance: every run trained once, results in the store."""

import pytest

from depthlab.errors import DepthlabError
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store

ray = pytest.importorskip("ray")

SPEC = {"name": "ray", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                    "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1]}}


def test_ray_backend_trains_every_run_once(tmp_path):
    from depthlab.run.ray_backend import run_sweep_ray

    store_path = tmp_path / "ray.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    summary = run_sweep_ray(spec, store_path, device="cpu", max_pack=1, progress=False, num_cpus=2)
    assert summary["trained"]["done"] == 4
    records = Store(store_path).records()
    assert len(records) == 4 and all(r.status == "done" and r.attempts == 1 for r in records)
    assert all(len(r.history) == 1 and r.val_loss is not None for r in records)
    # a second pass finds nothing to do
    again = run_sweep_ray(spec, store_path, device="cpu", progress=False, num_cpus=2)
    assert sum(again["trained"].values()) == 0


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module, which every sweep here uses and leaves running: starting one costs seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def sweep(tmp_path, grid=None, **defaults) -> SweepSpec:
    return SweepSpec.from_dict({**SPEC, "defaults": {**SPEC["defaults"], **defaults}, "grid": grid or SPEC["grid"]})


def test_ray_runs_record_each_epoch_as_it_ends(tmp_path, monkeypatch):
    """As the local backend does: the history grows in the store while the pack trains, not only at its end."""
    from depthlab.run.ray_backend import run_sweep_ray

    recorded, real = [], Store.record_epoch

    def record_epoch(self, run_id, owner, metrics):
        recorded.append(run_id)
        return real(self, run_id, owner, metrics)

    monkeypatch.setattr(Store, "record_epoch", record_epoch)
    store_path = tmp_path / "ray.sqlite"
    run_sweep_ray(sweep(tmp_path, {"topology": ["sequential", "parallel"]}, epochs=2), store_path, device="cpu",
                  max_pack=1, progress=False)
    records = Store(store_path).records()
    assert sorted(recorded) == sorted([r.run_id for r in records] * 2)
    assert all(r.status == "done" and len(r.history) == 2 for r in records)


def test_ray_runs_validate_as_asked_and_log_to_tensorboard(tmp_path):
    """The execution options reach the Ray tasks (eval_every, layout) and the driver writes each run's TensorBoard
    log from the epochs the tasks stream, as the local backend does."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from depthlab.run.ray_backend import run_sweep_ray

    store_path, board = tmp_path / "ray.sqlite", tmp_path / "tb"
    run_sweep_ray(sweep(tmp_path, {"topology": ["sequential", "parallel"]}, epochs=3), store_path, device="cpu",
                  max_pack=1, progress=False, eval_every=2, tensorboard=board, precision="fp32",
                  layout="channels_last")
    records = Store(store_path).records()
    assert len(records) == 2 and all(r.env["eval_every"] == 2 and r.env["channels_last"] for r in records)
    for rec in records:
        assert ["val_acc" in h for h in rec.history] == [False, True, True]
        scalars = EventAccumulator(str(board / rec.run_id)).Reload()
        assert [e.step for e in scalars.Scalars("train_loss")] == [1, 2, 3]
        assert [e.step for e in scalars.Scalars("val_acc")] == [2, 3]


def test_a_failed_ray_pack_keeps_its_epochs_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from depthlab.run import ray_backend

    def fails_after_an_epoch(*args, **kwargs):  # defined here: Ray ships it to the workers by value
        yield ("loaded",)
        yield ("epoch", 0, {"epoch": 1, "train_loss": 2.0})
        raise ValueError("a broken pack")

    monkeypatch.setattr(ray_backend, "_train_task", fails_after_an_epoch)
    store_path = tmp_path / "ray.sqlite"
    summary = ray_backend.run_sweep_ray(sweep(tmp_path), store_path, device="cpu", max_pack=1, progress=False,
                                        log=lambda m: None)
    assert summary["trained"] == {"done": 0, "diverged": 0, "failed": 4}
    records = Store(store_path).records()
    assert all(r.status == "failed" and "ValueError: a broken pack" in r.error for r in records)
    assert all(list(r.history) == [{"epoch": 1, "train_loss": 2.0}] for r in records)


@pytest.mark.parametrize("loaded, error", [(True, RuntimeError("CUDA error: an illegal memory access")),
                                           (False, DepthlabError("dataset cifar10 not found"))])
def test_a_device_or_data_error_on_ray_stops_the_sweep_and_gives_every_run_back(tmp_path, monkeypatch, loaded,
                                                                                error):
    """As in the local backend: every later pack would fail the same way, so no run is marked failed."""
    from depthlab.run import ray_backend

    def broken(*args, **kwargs):
        if loaded:
            yield ("loaded",)
        raise error

    monkeypatch.setattr(ray_backend, "_train_task", broken)
    store_path = tmp_path / "ray.sqlite"
    with pytest.raises(type(error), match=str(error)):
        ray_backend.run_sweep_ray(sweep(tmp_path), store_path, device="cpu", max_pack=1, progress=False,
                                  log=lambda m: None)
    records = Store(store_path).records()
    assert {r.status for r in records} == {"pending"}
    assert sum(r.attempts for r in records) == 2  # the two packs in flight; nothing new started after the error


def test_a_study_trains_on_ray_as_on_the_local_backend(tmp_path):
    """`depthlab study --backend ray`: the study's sweep goes through the same backend, each run once."""
    from depthlab.study.design import StudySpec
    from depthlab.study.runner import run_study

    spec = StudySpec(name="ray-study", dataset="synthetic", budgets=(6000,), depths=(1, 2), levers=("depth",),
                     seeds=3, max_seeds=3, epochs=1)
    store_path = tmp_path / "study.sqlite"
    result = run_study(spec, store_path, backend="ray", progress=False, log=lambda msg: None)
    records = Store(store_path).records(sweep=spec.sweep)
    assert len(records) == 6 and all(r.status == "done" and r.attempts == 1 for r in records)
    assert [d["seeds"] for d in result["budgets"][0]["designs"]] == [3, 3]


def test_a_sigterm_stops_a_ray_sweep_as_it_stops_a_local_one(tmp_path):
    """#23: Ray's own SIGTERM handler made the driver exit 15 at once, without the line local runs print (they
    exit 143). The driver joins this module's Ray, as a driver of a cluster does."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    import yaml

    spec, store = tmp_path / "long.yaml", tmp_path / "s.sqlite"
    spec.write_text(yaml.safe_dump({**SPEC, "defaults": {**SPEC["defaults"], "epochs": 100_000},
                                    "grid": {"seed": [0, 1]}}))
    driver = subprocess.Popen([sys.executable, "-m", "depthlab.cli.main", "run", str(spec), "--store", str(store),
                               "--backend", "ray", "--ray-address", ray.get_runtime_context().gcs_address,
                               "--quiet", "--no-compare"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def statuses():
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
                return [row[0] for row in db.execute("SELECT status FROM runs")]
        except sqlite3.Error:
            return []

    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None and "running" not in statuses():
        time.sleep(0.1)
    try:
        assert driver.poll() is None, driver.communicate()[1].decode()
        os.kill(driver.pid, signal.SIGTERM)
        err = driver.communicate(timeout=60)[1].decode()
    finally:
        driver.kill()
    assert driver.returncode == 143, err
    assert "depthlab: terminated; everything finished so far is saved." in err
    assert set(statuses()) == {"pending"}  # the runs it held are given back
