"""The server's shared-memory registry: attach checks, bounds, limits, release, killed clients.

No server process: the test plays the server's I/O thread and calls the registry
directly, with peer identities as the ROUTER would give them.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from common.protocol import ErrorCode, ProtocolError, ShmUsage
from common.shm import SHM_DIR, ShmRegion
from server.shm_registry import ShmLimits, ShmRegistry

PREFIX = f"infertest{os.getpid()}r"
A, B = b"\x00peer-a", b"\x00peer-b"
SIZE = 1 << 16
CHILD_TIMEOUT_S = 120  # a child that imports torch on a loaded machine


def mapped(path: Path) -> bool:
    """Whether this process maps `path` now (from the kernel's view, not the registry's)."""
    return str(path) in Path("/proc/self/maps").read_text()


# The leak check (the no_leftover fixture, tests/conftest.py) looks only at names carrying PREFIX.
pytestmark = pytest.mark.usefixtures("no_leftover")


@pytest.fixture
def registry() -> Iterator[ShmRegistry]:
    reg = ShmRegistry(ShmLimits(max_regions_per_peer=3, max_regions=5, max_bytes_per_peer=4 * SIZE, max_bytes=6 * SIZE))
    yield reg
    reg.close()
    gc.collect()
    assert reg.mapped_bytes == 0


@pytest.fixture
def region() -> Iterator[ShmRegion]:
    with ShmRegion.create(SIZE, prefix=PREFIX) as r:
        yield r


def bad_request(match: str):
    return pytest.raises(ProtocolError, match=match)


def test_round_trip_reads_what_the_client_wrote_and_writes_what_it_reads(registry: ShmRegistry, region: ShmRegion) -> None:
    x = torch.randn(2, 3, 16, 16)
    region.tensor(128, torch.float32, x.shape).copy_(x)
    handle = registry.register(A, region.name, SIZE)
    got = registry.tensor(A, handle, 128, "float32", list(x.shape), nbytes=x.numel() * 4)
    assert torch.equal(got, x)
    raw = registry.view(A, handle, 128, 16)
    assert raw.readonly and bytes(raw) == x.numpy().tobytes()[:16]
    out = torch.arange(10, dtype=torch.int64)
    registry.tensor(A, handle, 8192, "int64", [10], writable=True).copy_(out)
    assert torch.equal(region.tensor(8192, torch.int64, (10,)), out)
    assert registry.tensor(A, handle, SIZE, "float32", [0, 3]).shape == (0, 3)  # empty, at the very end
    assert registry.stats() == ShmUsage(regions=1, peers=1, mapped_bytes=SIZE, pinned_regions=0)


@pytest.mark.parametrize(
    "handle, offset, dtype, shape, nbytes, match",
    [
        (None, SIZE, "uint8", [1], None, "outside"),  # offset at the end, one byte asked
        (None, SIZE + 4, "uint8", [0], None, "offset = .* outside"),
        (None, 0, "float32", [SIZE // 4 + 1], None, "outside"),
        (None, SIZE - 8, "float64", [2], None, "outside"),
        (None, -4, "float32", [1], None, "offset = -4 outside"),
        (None, 2, "float32", [1], None, "not aligned"),
        (None, 0, "float32", [-1], None, r"shape\[0\]"),
        (None, 0, "float32", [4], 15, "not the declared 15"),
        (None, 0, "float32", [4], -1, "nbytes"),
        (None, 0, "complex64", [4], None, "dtype"),
        (None, 0, "float32", "4", None, "shape must be a list"),
        (None, 0, "float32", [1] * 9, None, "at most 8"),
        (None, 1.0, "uint8", [1], None, "offset must be an integer"),
        (None, True, "uint8", [1], None, "offset must be an integer"),
        (999, 0, "uint8", [1], None, "handle 999 is not registered"),
        (-1, 0, "uint8", [1], None, "handle"),
        ("1", 0, "uint8", [1], None, "handle must be an integer"),
    ],
)
def test_bad_references_are_bad_requests(
    registry: ShmRegistry, region: ShmRegion, handle, offset, dtype, shape, nbytes, match: str
) -> None:
    h = registry.register(A, region.name, SIZE)
    with bad_request(match) as err:
        registry.tensor(A, h if handle is None else handle, offset, dtype, shape, nbytes=nbytes)
    assert err.value.code == ErrorCode.BAD_REQUEST
    with bad_request("outside"):
        registry.view(A, h, SIZE - 1, 2)


def test_a_handle_is_valid_only_for_the_peer_that_registered_it(registry: ShmRegistry, region: ShmRegion) -> None:
    h = registry.register(A, region.name, SIZE)
    with bad_request(f"handle {h} is not registered by this client"):
        registry.tensor(B, h, 0, "uint8", [1])
    with bad_request("registered by another client"):
        registry.register(B, region.name, SIZE)
    with bad_request("not registered by this client"):
        registry.unregister(B, h)
    assert registry.register(A, region.name, SIZE) == h  # a retried REGISTER: same handle
    with bad_request("already registered with"):
        registry.register(A, region.name, SIZE // 2)


@pytest.mark.parametrize("name", ["../etc/passwd", "/a/b", "", "/", ".hidden", "/..", 5, None, "x" * 300])
def test_names_outside_dev_shm_are_refused(registry: ShmRegistry, name: object) -> None:
    with bad_request("is not a /dev/shm name"):
        registry.register(A, name, SIZE)


def test_registration_checks_the_object_itself(registry: ShmRegistry, region: ShmRegion) -> None:
    with bad_request("has 65536 bytes, not the declared 4096"):
        registry.register(A, region.name, 4096)
    for size in (0, True, 2**70):
        with bad_request("region size"):
            registry.register(A, region.name, size)
    with bad_request("No such file"):
        registry.register(A, f"/{PREFIX}-missing", SIZE)
    os.chmod(region.path, 0o644)
    with bad_request("has mode 0644, not 0600"):
        registry.register(A, region.name, SIZE)
    link = SHM_DIR / f"{PREFIX}-link"
    link.symlink_to(region.path)
    try:
        with bad_request("cannot open"):  # O_NOFOLLOW: a name must not lead elsewhere
            registry.register(A, link.name, SIZE)
    finally:
        link.unlink()
    fifo = SHM_DIR / f"{PREFIX}-fifo"
    os.mkfifo(fifo, 0o600)
    try:
        with bad_request("not a regular"):
            registry.register(A, fifo.name, SIZE)
    finally:
        fifo.unlink()
    assert registry.stats().regions == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_a_region_of_another_uid_is_refused(registry: ShmRegistry, region: ShmRegion) -> None:
    os.chown(region.path, 65534, -1)
    with bad_request("owned by uid 65534"):
        registry.register(A, region.name, SIZE)


def test_limits_per_peer_and_overall(registry: ShmRegistry) -> None:
    # The fixture's limits: 3 regions and 4 * SIZE bytes per peer, 5 regions and 6 * SIZE bytes in all.
    small = [ShmRegion.create(SIZE, prefix=PREFIX) for _ in range(6)]
    big = ShmRegion.create(3 * SIZE, prefix=PREFIX)
    c, d = ShmRegion.create(4 * SIZE, prefix=PREFIX), ShmRegion.create(4 * SIZE, prefix=PREFIX)
    try:
        for r in small[:3]:
            registry.register(A, r.name, SIZE)
        with bad_request("region limit reached: 3 per client"):
            registry.register(A, small[3].name, SIZE)
        registry.register(B, small[3].name, SIZE)
        registry.register(B, small[4].name, SIZE)
        with bad_request("region limit reached: 3 per client, 5 in all"):  # B holds only 2
            registry.register(B, small[5].name, SIZE)
        assert registry.release_peer(A, unlink=False) == 3
        with bad_request("131072 \\+ 196608 bytes over the 262144-byte limit per client"):
            registry.register(B, big.name, 3 * SIZE)
        registry.release_peer(B, unlink=False)
        registry.register(A, c.name, 4 * SIZE)
        with bad_request("262144 \\+ 262144 bytes over the server's 393216-byte limit"):
            registry.register(B, d.name, 4 * SIZE)
    finally:
        for r in (*small, big, c, d):
            r.close()


def test_release_unmaps_now_or_when_the_last_view_is_freed(registry: ShmRegistry, region: ShmRegion) -> None:
    h = registry.register(A, region.name, SIZE)
    region.close()  # the client's own mapping and name go: only the server's remains
    view = registry.tensor(A, h, 0, "uint8", [16])
    assert mapped(region.path) and registry.mapped_bytes == SIZE
    assert registry.release_peer(A) == 1
    with bad_request("not registered"):
        registry.tensor(A, h, 0, "uint8", [16])
    assert mapped(region.path), "an in-flight request's view must stay valid"
    assert registry.mapped_bytes == SIZE  # still mapped, so still counted
    holder = [view]
    del view
    freer = threading.Thread(target=holder.clear)  # a worker thread frees the last view
    freer.start()
    freer.join()
    gc.collect()
    assert not mapped(region.path) and registry.mapped_bytes == 0

    with ShmRegion.create(SIZE, prefix=PREFIX) as other:
        h2 = registry.register(A, other.name, SIZE)
        registry.unregister(A, h2)
        assert other.path.exists(), "unregister leaves the client's name alone"
        assert registry.stats().regions == 0


def test_a_lost_peers_names_are_unlinked_but_not_a_new_file_of_that_name(registry: ShmRegistry) -> None:
    first = ShmRegion.create(SIZE, prefix=PREFIX)
    registry.register(A, first.name, SIZE)
    registry.release_peer(A, unlink=True)
    assert not first.path.exists()
    first.close()
    again = ShmRegion.create(SIZE, prefix=PREFIX)
    registry.register(A, again.name, SIZE)
    os.unlink(again.path)  # the client recreates its region under the same name
    fd = os.open(again.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    registry.release_peer(A, unlink=True)
    assert again.path.exists(), "the server unlinked a file it never mapped"
    again.close()


def test_a_region_that_shrank_is_refused_not_read(registry: ShmRegistry, region: ShmRegion) -> None:
    h = registry.register(A, region.name, SIZE)
    os.truncate(region.path, SIZE // 2)
    with bad_request("shrank below its registered 65536 bytes"):
        registry.tensor(A, h, 0, "uint8", [1])


def test_pinning_without_cuda_is_a_logged_no_op(region: ShmRegion, caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: see the pinned test")
    reg = ShmRegistry(pin=True)
    h = reg.register(A, region.name, SIZE)
    assert "not page-locked" in caplog.text
    assert reg.stats().pinned_regions == 0 and reg.tensor(A, h, 0, "uint8", [4]).numel() == 4
    reg.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_pinned_region_copies_to_the_device_by_dma(region: ShmRegion) -> None:
    x = torch.randn(4, 3, 32, 32)
    region.tensor(0, torch.float32, x.shape).copy_(x)
    reg = ShmRegistry(pin=True)
    h = reg.register(A, region.name, SIZE)
    assert reg.stats().pinned_regions == 1
    host = reg.tensor(A, h, 0, "float32", list(x.shape))
    assert host.is_pinned()
    assert torch.equal(host.to("cuda", non_blocking=True).cpu(), x)
    del host
    reg.close()


CHILD = """
import os, signal, sys, torch
from common.shm import ShmRegion
region = ShmRegion.create(int(sys.argv[2]), prefix=sys.argv[1])
region.tensor(0, torch.float32, (4,)).copy_(torch.arange(4.0))
print(region.name, flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""


def start_doomed_client() -> tuple[subprocess.Popen, str]:
    """A client process that creates a region, reports it, and SIGKILLs itself when told."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, PREFIX, str(SIZE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([proc.stdout], [], [], CHILD_TIMEOUT_S)
    if not ready:
        proc.kill()
        proc.wait(CHILD_TIMEOUT_S)
        pytest.fail("the client process did not report its region in time")
    return proc, proc.stdout.readline().strip()


def kill(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(CHILD_TIMEOUT_S) == -signal.SIGKILL


@pytest.mark.integration
def test_a_killed_clients_region_is_cleaned_up_by_release(registry: ShmRegistry) -> None:
    proc, name = start_doomed_client()
    h = registry.register(A, name, SIZE)
    kill(proc)
    path = SHM_DIR / name.lstrip("/")
    assert path.exists(), "a SIGKILLed client cannot unlink"
    assert registry.tensor(A, h, 0, "float32", [4]).tolist() == [0.0, 1.0, 2.0, 3.0]
    registry.release_peer(A)  # what the loop does when the peer is lost
    gc.collect()
    assert not path.exists() and registry.mapped_bytes == 0


@pytest.mark.integration
def test_a_watched_clients_exit_releases_its_regions(registry: ShmRegistry) -> None:
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds on this platform")
    proc, name = start_doomed_client()
    with bad_request("does not map the region"):  # a pid that is not the region's client
        registry.register(A, name, SIZE, pid=os.getppid())
    registry.register(A, name, SIZE, pid=proc.pid)
    with bad_request(f"registered as process {proc.pid}"):
        registry.register(A, name, SIZE, pid=proc.pid + 1)
    assert registry.reap_exited() == []
    (fd,) = registry.watch_fds()
    kill(proc)
    assert select.select([fd], [], [], CHILD_TIMEOUT_S)[0] == [fd]  # what the loop's poller sees
    assert registry.reap_exited() == [A]
    assert not (SHM_DIR / name.lstrip("/")).exists() and registry.watch_fds() == {}
    with ShmRegion.create(SIZE, prefix=PREFIX) as fresh, bad_request(f"process {proc.pid} does not exist"):
        registry.register(B, fresh.name, SIZE, pid=proc.pid)
    assert registry.watch_fds() == {} and registry.stats().regions == 0
