"""Memory policy: keep freed arrays' memory in the process; lazily resident zeros for KV caches.

A training step allocates the same activations every time (at config M about 30 MB in blocks
of 0.1-1.5 MB) and frees them at the end of backward. glibc's malloc serves blocks above its
mmap threshold (128 KB at start, raised on the fly up to 32 MB) with fresh mmap'd pages, and
trims the top of the heap back to the OS once more than twice that threshold is free there.
Either way the next step's arrays land on pages the kernel must zero and map again: measured at
config M, ~2,000 page faults and ~8 ms of system time per ~50 ms step.

`keep_freed_memory()` fixes both thresholds high (mmap only for blocks of 32 MB or more, trim
only above 256 MB free), so the heap keeps what a step freed for the next one. The cost is
that a process may hold up to that much freed memory. It is glibc-only (found through ctypes);
elsewhere, or when the user tuned malloc through MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_,
it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import os
import sys

import numpy as np

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # mallopt parameter numbers (glibc malloc.h)
MMAP_THRESHOLD = 32 << 20                         # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20
USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_done: bool | None = None                          # None: not tried; else whether it took effect


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and not any(k in os.environ for k in USER_ENV):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):              # not glibc (e.g. musl): leave malloc alone
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros whose memory becomes resident only where written, in 4 KB pages.

    A KV cache slab (H, block_size, hs) is written a few positions at a time, one stretch per
    head (256 KB apart at GPT-2's sizes). With transparent huge pages the first write into each
    stretch would make a whole 2 MB page resident: GPT-2-small's cache (75 MB for 1024 positions)
    was fully resident after a 3-token prompt. An anonymous mapping advised against huge pages
    keeps it to what the positions filled so far need."""
    nbytes = max(1, math.prod(shape) * np.dtype(dtype).itemsize)
    buf = mmap.mmap(-1, nbytes)                                  # anonymous: zero-filled on first touch
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=math.prod(shape)).reshape(shape)
