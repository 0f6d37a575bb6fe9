"""Fixtures every test package may use."""

import shutil
from pathlib import Path

import pytest
import torch

STORE_V0 = Path(__file__).parent / "fixtures" / "store_v0"  # written by depthlab 0.1.0, before schema versions


def _jacobian_complexity(model, x: torch.Tensor) -> float:
    """The test oracle of the geometric complexity: mean over the examples of ‖∂logits/∂x‖_F², each example's
    full Jacobian computed by autograd on its own (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        total = sum(torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).pow(2).sum().item()
                    for xi in x)
    finally:
        model.train(was_training)
    return total / len(x)


@pytest.fixture
def complexity_oracle():
    return _jacobian_complexity


def _copy_store(fixture: Path, tmp_path: Path) -> Path:
    """A copy of a committed store and its weights folder in `tmp_path` (tests may migrate or write it)."""
    path = tmp_path / "store.sqlite"
    shutil.copy(fixture / "store.sqlite", path)
    shutil.copytree(fixture / "store.sqlite.weights", tmp_path / "store.sqlite.weights")
    return path


@pytest.fixture
def old_store(tmp_path) -> Path:
    """A copy of the committed store (and its weights) that depthlab wrote before schema versions existed."""
    return _copy_store(STORE_V0, tmp_path)


def _randomise(model, seed=0):
    """Non-trivial norm affines, running statistics, α and biases, so that no test passes on zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha") or "norm" in name or name.endswith("bias2") or name.endswith(".bias"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return model


@pytest.fixture
def randomise():
    return _randomise


# --- the two kinds of CPU the suite runs on ---------------------------------------------------------------------
# `--precision auto` trains in bf16 where the CPU has native bf16 (AVX-512 BF16, AMX) and in float32 where it has
# only AVX2; the pack sizes follow (depthlab.train.packs.CPU_DEFAULT_PACK). Tests marked `auto_precision` go
# through `auto`, so they run once per kind this machine can stand for: on a native-bf16 machine also as an
# AVX2-only one would (`auto` resolving to float32 in this process; subprocesses started by the test get the
# AVX2 kernels themselves through ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA, see depthlab.precision).
FLOAT32_CPU_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_kinds() -> list[str]:
    from depthlab import precision

    return ["native-bf16", "float32-only"] if precision.cpu_has_native_bf16() else ["float32-only"]


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("auto_precision"):
        metafunc.parametrize("cpu_kind", cpu_kinds(), indirect=True)


@pytest.fixture(autouse=True)
def cpu_kind(request, monkeypatch):
    """The kind of CPU an `auto_precision` test runs as (None for the others: this machine as it is)."""
    kind = getattr(request, "param", None)
    if kind == "float32-only":
        from depthlab import precision

        if precision.cpu_has_native_bf16():
            monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
            for name, value in FLOAT32_CPU_ENV.items():
                monkeypatch.setenv(name, value)
    return kind


STORE_V4 = Path(__file__).parent / "fixtures" / "store_v4"  # written at schema 4, when run ids hashed every field


@pytest.fixture
def store_v4(tmp_path) -> Path:
    """A copy of the committed schema-4 store (and its weights) of commit 43ec188: see its README."""
    return _copy_store(STORE_V4, tmp_path)


def _killed_when(command, ready, *, env=None, timeout: float = 120):
    """Start `command`, SIGKILL it (its whole session) as soon as `ready()` is true or it ends, within `timeout`
    seconds: how the resume tests interrupt a command at a random point of its work."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def killed_when():
    """killed_when(command, ready, env=None, timeout=120): run a command and SIGKILL it once ready() holds."""
    return _killed_when
