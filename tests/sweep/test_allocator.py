"""Keeping freed memory (depthlab.run.allocator): training steps stop faulting their activations' pages in."""

import ctypes.util
import os
import platform
import subprocess
import sys

import pytest

from depthlab.run import allocator, runner
from depthlab.spec.grid import SweepSpec

# In a fresh process (the setting is the process's for good): the page faults of a few of the engine's training
# steps, before and after keep_freed_memory().
SCRIPT = """
import resource
from depthlab.data import load
from depthlab.run.allocator import keep_freed_memory
from depthlab.spec.config import RunConfig
from depthlab.train.engine import training_throughput

data = load("synthetic", val_split=100, n_train=1000, n_test=100, shape=(1, 28, 28))
configs = [RunConfig(dataset="synthetic", width=16, stem_stride=2, batch_size=100, blocks=2, seed=s) for s in (0, 1)]

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    training_throughput(configs, data, precision="fp32", steps=10, warmup=1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
kept = keep_freed_memory()
faults()
print(default, kept, faults())
"""


@pytest.mark.skipif(platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or "")
                    or "LD_PRELOAD" in os.environ or any(k.startswith("MALLOC_") for k in os.environ),
                    reason="glibc's malloc with its defaults only (not another allocator preloaded, not tuned)")
def test_freed_blocks_keep_their_pages_once_the_thresholds_are_raised():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    default, kept, after = out.stdout.split()
    assert kept == "True"
    # by default the steps fault in their activations' pages afresh (28,000-64,000 here); once freed memory is
    # kept, few (0-2,500: what a heap still grows by)
    assert int(default) > 5_000 and int(after) < int(default) // 5


@pytest.mark.auto_precision
def test_a_cpu_sweep_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "keep_freed_memory", lambda: calls.append(1))
    spec = SweepSpec.from_dict({"name": "a", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64,
                                                          "test_subset": 32, "width": 4, "batch_size": 32,
                                                          "epochs": 1}})
    runner.run_sweep(spec, tmp_path / "s.sqlite", device="cpu", progress=False)
    assert calls == [1]


def test_without_mallopt_nothing_is_changed(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
