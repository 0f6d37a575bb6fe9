"""Keep freed memory in the process while a sweep trains on the CPU.

A training step allocates and frees the same few megabytes of activations, step after step. glibc's malloc
returns blocks over 128 KiB to the kernel as soon as they are freed (mmap), and trims the top of its heaps once
128 KiB lie free there, so each step faults its activations' pages in afresh: the demo (`depthlab run`, two AVX-512
cores) took 1.7-1.9 million page faults and 3 s of system time in 14.5 s. With both thresholds raised (mallopt:
M_MMAP_THRESHOLD to its 32 MiB maximum, M_TRIM_THRESHOLD to 1 GiB) the pages stay: 0.2-0.5 million faults, 0.6-1.1 s
of system time, 12.6-13.3 s. Raising one alone does not help, and the trim threshold alone makes it far worse
(fixing it also fixes the mmap threshold at 128 KiB, which glibc otherwise raises to the sizes it sees freed:
16 million faults, 26 s).

The process keeps the peak of its heap until it exits, which is what a training process reuses anyway. glibc
only (Linux); elsewhere nothing is changed. `run_sweep` applies it for CPU sweeps; the setting is the process's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1   # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True where they were set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: macOS, Windows, musl without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold only once the mmap threshold took: alone it would pin that one at 128 KiB (see above)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
