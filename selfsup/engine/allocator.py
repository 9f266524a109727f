"""Keep freed host memory in the process, so a CPU training step does not page-fault.

A convnet step on the CPU allocates and frees the same few activation buffers of tens of MB
every step. glibc's malloc serves blocks above its mmap threshold (at most 32 MB by its
dynamic rule) with a fresh ``mmap`` and gives them back with ``munmap``, and trims the top
of the heap whenever more than ``M_TRIM_THRESHOLD`` is free. Each step then touches its
buffers for the first time again: on the 2-core development machine that is about 40,000
minor page faults per SimCLR step of the Fashion-MNIST recipe, and the step takes 1.3-1.5x
as long (``benchmarks/step.py --glibc-malloc`` shows it). Raising both thresholds makes
malloc reuse the memory it already has, as jemalloc or tcmalloc (the ``LD_PRELOAD``
advice of CPU PyTorch guides) would, with no extra dependency. The cost: the process keeps
its peak heap instead of returning it to the system between steps.

Set ``SELFSUP_MALLOC=default`` in the environment to leave glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest value glibc's mallopt accepts for both is INT_MAX; freed blocks below it stay.
_KEEP = 2**31 - 1

_tuned = False


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; idempotent.

    Returns:
        True when the thresholds are (now or already) raised; False on a C library other
        than glibc, on other systems, or when ``SELFSUP_MALLOC=default``.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("SELFSUP_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    return _tuned
