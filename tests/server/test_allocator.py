"""server.alloc.keep_large_buffers_in_heap: a large request's buffer is reused, not mapped afresh each time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

# In a fresh process (mallopt settings are process-wide): a thread other than the
# main one, like libzmq's I/O thread, fills most of its first heap and then
# allocates, touches and frees a 24 MiB block (a batch-32 request) six times.
# Prints the minor page faults of each round.
SCRIPT = textwrap.dedent("""
    import ctypes, ctypes.util, resource, threading
    from server.alloc import keep_large_buffers_in_heap

    assert keep_large_buffers_in_heap()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    MB = 1 << 20
    faults = []

    def io_thread():
        for held in (libc.malloc(30 * MB), libc.malloc(30 * MB)):
            ctypes.memset(held, 1, 30 * MB)
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            block = libc.malloc(24 * MB)
            ctypes.memset(block, 1, 24 * MB)
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    t = threading.Thread(target=io_thread)
    t.start()
    t.join()
    print(*faults)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_large_block_freed_by_another_thread_is_reused_without_page_faults() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    faults = [int(f) for f in out.stdout.split()]
    assert faults[0] > 24 * 256 * 0.9, "the first round touches fresh pages (or the count is broken)"
    # With a thread arena, its 64 MiB heaps are unmapped when empty and every round
    # faults all 6144 pages in again; from the main heap the block is reused.
    assert max(faults[1:]) < 100, faults
