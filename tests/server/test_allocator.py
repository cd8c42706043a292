"""server.alloc.keep_large_buffers_in_heap: a large request's buffer is reused, not mapped afresh each time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common import codec
from common.protocol import InferHeader, MsgType
from common.wire import recv_frames, send_frames
from tests.support import REPLY_TIMEOUT_MS, ROOT, dealer_socket

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator"), pytest.mark.integration]

# In a fresh process (mallopt settings are process-wide): a thread other than the
# main one, like libzmq's I/O thread, fills most of its first heap and then
# allocates, touches and frees a SIZE MiB block (a request) six times. With
# EARLY_THREAD, a thread that already allocated before the settings (as numpy's
# does on import) does the same. Prints the minor page faults of each round.
SCRIPT = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys, threading
    from server.alloc import keep_large_buffers_in_heap
    SIZE, EARLY_THREAD = int(sys.argv[1]), sys.argv[2] == "early"

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    MB = 1 << 20
    faults = []
    go = threading.Event()

    def io_thread():
        libc.free(libc.malloc(64))  # this thread's arena is chosen here
        go.wait()
        for held in (libc.malloc(30 * MB), libc.malloc(30 * MB)):
            ctypes.memset(held, 1, 30 * MB)
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            block = libc.malloc(SIZE * MB)
            ctypes.memset(block, 1, SIZE * MB)
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    t = threading.Thread(target=io_thread)
    if EARLY_THREAD:
        t.start()
    assert keep_large_buffers_in_heap()
    if not EARLY_THREAD:
        t.start()
    go.set()
    t.join()
    print(*faults)
""")


def faults_per_round(size_mib: int, thread: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(size_mib), thread], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    faults = [int(f) for f in out.stdout.split()]
    assert faults[0] > size_mib * 256 * 0.9, "the first round touches fresh pages (or the count is broken)"
    return faults


@pytest.mark.parametrize("size_mib", [24, 96])
def test_a_large_block_freed_by_another_thread_is_reused_without_page_faults(size_mib: int) -> None:
    # With a thread arena, its 64 MiB heaps are unmapped when empty and a bigger
    # block is mapped on its own: every round faults all its pages in again.
    # From the main heap, with no block mapped on its own, the block is reused
    # at any size (96 MiB: batch 128 at 3x250x250 float32).
    faults = faults_per_round(size_mib, "late")
    assert max(faults[1:]) < 100, faults


def test_a_thread_that_allocated_before_the_settings_keeps_mapping_large_blocks_afresh() -> None:
    """Why a server must apply the settings before anything starts a thread (numpy's import does)."""
    faults = faults_per_round(96, "early")
    assert min(faults[1:]) > 96 * 256 * 0.9, faults


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_a_server_receives_requests_over_32_mib_into_reused_memory(server_factory) -> None:
    """infer-server, as started from its command line, takes no fresh pages per 96 MB request."""
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "0")
    x = torch.zeros(128, 3, 250, 250)  # 96 MB: above glibc's largest mmap threshold and a thread arena's heap
    frames = codec.encode(MsgType.INFER, InferHeader([], 1, [0, 0]).to_wire(), (x,))
    faults = []
    with dealer_socket(server.endpoint) as sock:
        for _ in range(6):
            before = minor_faults(server.proc.pid)
            send_frames(sock, frames)
            assert sock.poll(REPLY_TIMEOUT_MS)
            reply = codec.decode([f.buffer for f in recv_frames(sock)])
            assert reply.msg_type == MsgType.RESULT, reply.header
            faults.append(minor_faults(server.proc.pid) - before)
    # The first few requests grow the heap (the loop holds one request while libzmq
    # receives the next); after that, fresh pages for each request would be 23,438
    # faults (every 4 KiB page of it).
    assert max(faults[3:]) < 2_000, faults
