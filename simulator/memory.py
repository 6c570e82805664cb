"""Keep freed activation buffers in the process heap (glibc only).

Every step allocates its outputs (and the convolutions their padded input copies). At batch 256
these are 1-20 MB arrays, which glibc serves with ``mmap`` and returns with ``munmap`` when they
are freed, so the next step touches fresh pages: ~0.5 ms of page faults per step, 10-20% of a
MobileNetV2 run (measured). Raising glibc's mmap and trim thresholds keeps such blocks in the
heap, where the next allocation of a similar size reuses them without faults. The cost is that
the process keeps up to its peak working set after a run instead of returning it to the OS.

Done once, on the first :func:`simulator.run.run`; ``SIMULATOR_KEEP_HEAP=0`` turns it off. On a
C library without ``mallopt`` nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger blocks are still mmapped
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1 << 30

_DONE = []


def keep_heap() -> bool:
    """Apply the thresholds once per process; True if glibc accepted them."""
    if _DONE:
        return _DONE[0]
    ok = False
    if os.environ.get("SIMULATOR_KEEP_HEAP", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    _DONE.append(ok)
    return ok
