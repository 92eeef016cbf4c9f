"""Making freed memory go back to the operating system (glibc's malloc).

Why: after a large buffer is freed, glibc raises its mmap threshold (up to 32 MiB), so the next
buffers of that size come from the heap and stay resident after they are freed. A scorer that
answered a few large requests then kept hundreds of MiB it no longer used, growing with every
round (measured: 96 -> 372 MB over six rounds of max-size requests). Setting the thresholds
explicitly turns that adjustment off: buffers above the mmap threshold are unmapped when freed
and the heap is trimmed above the trim threshold (measured: flat at 120-140 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("xdrec.memory")

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold_kb: int) -> bool:
    """Fixes glibc's mmap and trim thresholds at ``threshold_kb``; False where that is not
    possible (not glibc, or 0 = leave the allocator alone)."""
    if threshold_kb <= 0:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    size = threshold_kb * 1024
    applied = bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, size))
    if not applied:
        log.warning("could not set the allocator thresholds", extra={"threshold_kb": threshold_kb})
    return applied
