"""glibc allocator settings for a process that receives large messages.

docs/performance.md has the measurements behind them and the commands that reproduce them.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's <malloc.h> parameter numbers for mallopt().
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_large_buffers_in_heap() -> bool:
    """Let glibc reuse freed large blocks instead of mapping fresh pages for each.

    libzmq allocates every received message anew. Above glibc's mmap threshold
    each one gets freshly mapped pages, and the first touch of a fresh page costs
    far more than a copy into memory already in use. Raising the threshold to its
    maximum (32 MiB on 64-bit) and not trimming the heap keeps requests up to
    32 MiB (batch 32 at 3x250x250 float32) in reused memory. Peak heap is still
    bounded by --max-inflight-bytes.

    One arena: libzmq's I/O thread allocates the messages it receives, so by
    default they come from that thread's own arena, whose heaps are mapped
    64 MiB at a time and unmapped as soon as one is empty, whatever the trim
    threshold says (glibc's heap_trim). A large request that needed a heap of its
    own then gets fresh pages every time, for the life of the process. With
    M_ARENA_MAX = 1 every thread allocates from the main heap, which the two
    settings above govern.

    Returns False (and changes nothing) on a C library without mallopt.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (
        bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        and bool(mallopt(M_ARENA_MAX, 1))
    )
