"""The Ray backend on a real local Ray instance: every run trained once, results in the store."""

import pytest

from depthlab.sweep.spec import SweepSpec
from depthlab.sweep.store import Store

ray = pytest.importorskip("ray")

SPEC = {"name": "ray", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                    "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1]}}


def test_ray_backend_trains_every_run_once(tmp_path):
    from depthlab.sweep.ray_backend import run_sweep_ray

    store_path = tmp_path / "ray.sqlite"
    spec = SweepSpec.from_dict(SPEC)
    summary = run_sweep_ray(spec, store_path, device="cpu", max_pack=1, progress=False, num_cpus=2)
    assert summary["trained"]["done"] == 4
    records = Store(store_path).records()
    assert len(records) == 4 and all(r["status"] == "done" and r["attempts"] == 1 for r in records)
    assert all(len(r["history"]) == 1 and r["val_loss"] is not None for r in records)
    # a second pass finds nothing to do
    again = run_sweep_ray(spec, store_path, device="cpu", progress=False, num_cpus=2)
    assert sum(again["trained"].values()) == 0
