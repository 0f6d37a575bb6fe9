"""Numerical precision of training and evaluation: float32, or bfloat16 autocast where the hardware has it.

`auto` (the default of `depthlab run` and of the commands that evaluate) is bf16 autocast on CUDA devices and on
CPUs with native bf16 arithmetic (x86: AVX-512 BF16 or AMX-BF16; Arm: the BF16 extension), and float32 elsewhere:
a CPU without those instructions emulates bf16 and would run slower than float32. `fp32` trains exactly as the
engine did before precisions were a choice. Under autocast, matrix products and convolutions run in bf16
while losses, normalisation statistics, the optimizer and the weights stay float32.

Precision is how a run is computed, like the device it ran on: it is recorded with every run (its environment's
`precision`), and `compare` says how many pairs mix precisions, but it is not part of the run's identity
(`depthlab.records`): a config trained in bf16 on a GPU and the same config trained in float32 on a laptop are
one run, trained once per store. Use separate stores to compare precisions as a question of its own.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported in the functions: the CLI builds its --precision choices from PRECISIONS while `--help` stays
# free of torch (tests/cli/test_startup.py)
PRECISIONS = ("auto", "fp32", "bf16")


def resolve(precision: str, device: torch.device | str) -> str:
    """The precision `precision` means on `device`: "fp32" or "bf16"."""
    import torch

    if precision not in PRECISIONS:
        from depthlab.errors import SpecError

        raise SpecError("precision", precision, ", ".join(PRECISIONS))
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(torch.device(device)) else "fp32"


def autocast(precision: str, device: torch.device | str):
    """The autocast context of `precision` on `device` (a no-op for fp32)."""
    import torch

    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve(precision, device) == "bf16")


def for_inference(precision: str, device: torch.device | str) -> str:
    """The precision a study evaluates trained networks in, a batch of 1 to 256 at a time (its latencies, its
    robustness lever's streams of 1 and 64): float32 on a CPU, else `precision` resolved. On a CPU bf16 autocast
    casts every weight again at every forward, which such batches do not repay even where bf16 is native: the
    robustness lever's batch-1 streams took 1.3-2x as long in bf16 (MNIST, 4 blocks at 20k parameters, 2
    corruptions of 256 examples: TENT 2.35 against 1.78 s, alpha-BN 0.68 against 0.39, source 0.49 against
    0.24), and a merged network's forward at batch 1 likewise (`depthlab.study.cost`)."""
    import torch

    return "fp32" if torch.device(device).type == "cpu" else resolve(precision, device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (not emulated)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


# oneDNN's instruction-set caps below its bf16 kernels (`ONEDNN_MAX_CPU_ISA`, read when torch loads)
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension on Arm: from PyTorch's own CPU probe where it has one,
    else from the flags the operating system lists.

    On x86 the instructions must also be the ones torch dispatches to: `ATEN_CPU_CAPABILITY=avx2` and
    `ONEDNN_MAX_CPU_ISA=AVX2` (both read when torch loads) make an AVX-512 machine compute as an AVX2-only one
    does, bf16 emulated, so `auto` picks float32 there as it would on that machine. This is how the test suite and
    a user check the AVX2-only path on a machine with native bf16."""
    import torch

    if not _dispatches_to_avx512(torch):
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
        except Exception:  # noqa: BLE001 - a probe that fails says nothing; the flags below still may
            found = {}
        if found.get("avx512_bf16") or found.get("amx_bf16"):
            return True
        if found.get("architecture") == "x86_64":
            return False
    return bool(_os_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def _dispatches_to_avx512(torch) -> bool:
    """False where x86 kernels are capped below AVX-512 BF16 (ATen's capability or oneDNN's ISA cap); True
    elsewhere, Arm included (ATen names no bf16 level there)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "AVX2"):
        return platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return isa not in _ONEDNN_NO_BF16


def _os_cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (Linux; "flags" on x86, "Features" on Arm), or macOS's FEAT_BF16."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return set()
        return {"bf16"} if out == "1" else set()
    return set()
