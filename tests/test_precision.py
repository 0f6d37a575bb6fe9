"""Precision as a choice: what `auto` means on a device, and bad values named."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from depthlab import precision
from depthlab.errors import SpecError


def test_auto_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", "cpu") == "fp32"
    # an explicit choice is kept, emulated or not
    assert precision.resolve("bf16", "cpu") == "bf16" and precision.resolve("fp32", "cpu") == "fp32"


def test_a_bad_precision_names_the_field_and_the_allowed_values():
    with pytest.raises(SpecError, match="precision.*auto, fp32, bf16"):
        precision.resolve("fp16", "cpu")


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    """Without PyTorch's probe, the operating system's flags decide (x86 avx512_bf16/amx_bf16, Arm bf16)."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(precision, "_dispatches_to_avx512", lambda torch: True)  # whatever this process runs on
    for flags, native in (({"avx512f", "avx512_bf16"}, True), ({"fp", "asimd", "bf16"}, True),
                          ({"avx2", "avx512f", "avx512bw"}, False), (set(), False)):
        monkeypatch.setattr(precision, "_os_cpu_flags", lambda flags=flags: flags)
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is native, flags
    precision.cpu_has_native_bf16.cache_clear()


def test_autocast_runs_matrix_products_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    with precision.autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize("capability,isa,native", [("AVX512", "", True), ("AVX2", "", False), ("DEFAULT", "", False),
                                                  ("AVX512", "AVX2", False), ("AVX512", "AVX512_CORE_VNNI", False),
                                                  ("AVX512", "AVX512_CORE_BF16", True)])
def test_kernels_capped_below_avx512_bf16_are_not_native(monkeypatch, capability, isa, native):
    """ATen's dispatch level and oneDNN's ISA cap decide on x86 too: capped below bf16, bf16 is emulated."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert precision._dispatches_to_avx512(torch) is native


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ATen's AVX2 level is an x86 one")
def test_an_avx2_process_trains_auto_in_float32():
    """How the AVX2-only machines' path is checked on one with native bf16 (README, tests/conftest.py): torch
    reads both variables when it loads, and `auto` follows the kernels it then dispatches to."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import torch; from depthlab import precision; "
            "print(torch.backends.cpu.get_cpu_capability(), precision.resolve('auto', 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    capability, resolved = out.stdout.split()
    assert resolved == "fp32"
    assert capability in ("AVX2", "DEFAULT")  # (DEFAULT on a CPU without AVX2 or not x86)


@pytest.mark.auto_precision
def test_the_suite_runs_auto_as_each_kind_of_cpu(cpu_kind):
    """tests/conftest.py's `float32-only` kind trains `auto` in float32 here and in the processes a test starts,
    as an AVX2-only machine does; `native-bf16` (only where this machine has it) in bf16."""
    assert precision.resolve("auto", "cpu") == {"native-bf16": "bf16", "float32-only": "fp32"}[cpu_kind]
    if cpu_kind == "float32-only":
        code = "from depthlab import precision; print(precision.resolve('auto', 'cpu'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.stdout.split() == ["fp32"], out.stderr


def test_a_study_evaluates_in_float32_on_a_cpu_and_in_the_training_precision_elsewhere():
    from depthlab.precision import for_inference

    assert [for_inference(p, "cpu") for p in ("auto", "fp32", "bf16")] == ["fp32"] * 3
    assert for_inference("bf16", "cuda") == "bf16" and for_inference("fp32", "cuda") == "fp32"
