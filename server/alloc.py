"""glibc allocator settings for a process that receives large messages.

docs/performance.md has the measurements behind them and the commands that reproduce them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("infer.server")

# glibc's <malloc.h> parameter numbers for mallopt().
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_applied = False  # infer-server's entry point applies them first; a later call changes nothing
TRIM_THRESHOLD = 1 << 30


def running_threads() -> int:
    """Threads in this process now (1 where /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def keep_large_buffers_in_heap() -> bool:
    """Let glibc reuse freed large blocks, of any size, instead of mapping fresh pages for each.

    Call it first, before anything starts a thread (numpy's import does, torch's
    first parallel op does, a zmq.Context does): the one-arena setting below only
    holds for threads that had no arena of their own yet.

    libzmq allocates every received message anew, and the first touch of a fresh
    page costs far more than a copy into memory already in use. So no block is
    mapped on its own (M_MMAP_MAX 0: every block comes from the heap, whatever
    its size; the raised M_MMAP_THRESHOLD also covers a C library that ignores
    that), and the heap is not trimmed until more than 1 GiB at its top is free.

    One arena: libzmq's I/O thread allocates the messages it receives. A thread
    arena's heaps are at most 64 MiB, mapped 64 MiB at a time and unmapped as
    soon as one is empty, whatever the trim threshold says (glibc's heap_trim),
    and a block too big for one is mapped on its own even with M_MMAP_MAX 0. With
    M_ARENA_MAX 1 every thread allocates from the main heap, which the settings
    above govern. glibc counts its arena limit once, at the first arena a new
    thread asks for: a thread that already had one (numpy's, say) keeps it, and
    the next new thread may be handed that arena rather than the main one.

    The price: the heap's resident size stays near its peak. What is live at
    once is bounded by the server's limits (--max-inflight-bytes for accepted
    requests, plus the messages libzmq has read but the server not yet taken,
    up to its receive high-water mark), and free memory above it is returned
    only past the 1 GiB trim threshold.

    Returns False (and changes nothing) on a C library without mallopt.
    """
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    threads = running_threads()
    if threads > 1:
        log.warning("allocator settings applied with %d threads running: a thread arena may still "
                    "map large received messages afresh", threads)
    _applied = (
        bool(mallopt(M_ARENA_MAX, 1))
        and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
        and bool(mallopt(M_MMAP_MAX, 0))
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    )
    return _applied
