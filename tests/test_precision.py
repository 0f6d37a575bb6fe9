"""Precision as a choice: what `auto` means on a device, and bad values named."""

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
