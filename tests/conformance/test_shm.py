"""PROTOCOL.md: Shared memory (R50-R53, R59-R64), with a region made as the document says: /dev/shm, 0600, key first."""

from __future__ import annotations

import mmap
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conformance.client import images, peers, stats, tensor

pytestmark = pytest.mark.integration  # every test here starts a process

SIZE = 1 << 20


class Region:
    def __init__(self, mode: int = 0o600, size: int = SIZE, name: str | None = None) -> None:
        self.name = name or "/infer-" + secrets.token_hex(16)
        self.path = Path("/dev/shm") / self.name[1:]
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        os.fchmod(fd, mode)  # whatever the umask
        try:
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.size = size
        self.key = secrets.token_bytes(16)
        self.map[: len(self.key)] = self.key

    def register(self, peer, **changes: object) -> dict:
        header = {"id": "reg", "name": self.name, "size": self.size, "key": self.key, "pid": os.getpid(), **changes}
        return peer.request("SHM_REGISTER", header)

    def close(self) -> None:
        self.map.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def region(peer) -> Iterator[Region]:
    if not Path("/dev/shm").is_dir() or peer.request("HELLO", {"id": 0}).header["shm"] is None:
        pytest.skip("no shared memory on this server")
    made = Region()
    yield made
    made.close()


def shm_infer(peer, handle: int, offset: int, array: np.ndarray, **header: object):
    desc, _ = tensor(array)
    del desc["frame"]
    desc["shm"] = {"region": handle, "offset": offset, "nbytes": array.nbytes}
    return peer.request("INFER", {**header, "tensors": [desc]})


def test_r50_r51_a_registered_region_serves_infers_like_frames(peer, region):
    reply = region.register(peer)
    assert reply.kind == "SHM_REGISTERED", reply.header
    assert set(reply.header) == {"id", "handle", "size", "pinned"} and reply.header["size"] == SIZE
    handle = reply.header["handle"]
    assert region.register(peer).header["handle"] == handle  # a retry answers the same handle
    x = images(2)
    x[:, 0, 0, 0] = [3.0, 4.0]
    region.map[4096: 4096 + x.nbytes] = x.tobytes()
    via_shm = shm_infer(peer, handle, 4096, x, id="s", ts=[1])
    inline = peer.infer(x, id="s", ts=[1])
    assert via_shm.kind == inline.kind == "RESULT"
    assert via_shm.header["tensors"] == inline.header["tensors"] and via_shm.frames == inline.frames


def test_r52_unregister_releases_one_region_or_all(peer, region):
    handle = region.register(peer).header["handle"]
    reply = peer.request("SHM_UNREGISTER", {"id": "u", "handle": handle})
    assert reply.kind == "SHM_UNREGISTERED" and reply.header == {"id": "u", "released": 1}
    assert shm_infer(peer, handle, 4096, images()).error == "BAD_REQUEST"  # the handle is gone
    region.register(peer)
    assert peer.request("SHM_UNREGISTER", {"id": "a", "all": True}).header["released"] == 1
    assert peer.request("SHM_UNREGISTER", {"id": "b", "all": True, "handle": 1}).error == "BAD_REQUEST"


def test_r53_bad_regions_and_references_are_refused(server, peer, region):
    for changes in ({"name": "/../etc/passwd"}, {"name": "/infer-missing-" + "0" * 8}, {"size": SIZE + 1},
                    {"key": secrets.token_bytes(16)}, {"key": b"short"}, {"pid": 2**31 - 2}):
        assert region.register(peer, **changes).error == "BAD_REQUEST", changes
    loose = Region(mode=0o644)
    try:
        assert loose.register(peer).error == "BAD_REQUEST"  # mode must be 0600
    finally:
        loose.close()
    handle = region.register(peer).header["handle"]
    x = images()
    for offset in (SIZE, SIZE - 4, 4098, -4):  # past the end, overlapping it, misaligned for float32, negative
        assert shm_infer(peer, handle, offset, x).error == "BAD_REQUEST", offset
    desc, _ = tensor(x)
    wrong = {k: v for k, v in desc.items() if k != "frame"} | {"shm": {"region": handle, "offset": 0, "nbytes": 4}}
    assert peer.request("INFER", {"tensors": [wrong]}).error == "BAD_REQUEST"  # nbytes != dtype x shape
    with peers(server.endpoint) as new:
        other = new()
        assert shm_infer(other, handle, 4096, x).error == "BAD_REQUEST"  # handles are per connection
        assert region.register(other).error == "BAD_REQUEST"  # another client's name
    assert peer.request("HELLO", {"id": "still"}).kind == "INFO"


def test_r59_a_name_is_one_dev_shm_file_with_or_without_its_slash(server, peer, region):
    plain = Region(name="/plain-" + secrets.token_hex(8))  # no /infer- prefix
    try:
        handle = plain.register(peer).header["handle"]
        assert plain.register(peer, name=plain.name[1:]).header["handle"] == handle  # the same region
        with peers(server.endpoint) as new:
            assert plain.register(new(), name=plain.name[1:]).error == "BAD_REQUEST"  # another client's name
    finally:
        plain.close()
    longest = Region(name="/" + "b" * 223 + secrets.token_hex(16))  # 255 characters after the slash
    try:
        assert longest.register(peer).kind == "SHM_REGISTERED"
    finally:
        longest.close()
    for bad in ("/.hidden-", "/space -", "/é-"):  # files that exist, with a name the server refuses
        refused = Region(name=bad + secrets.token_hex(8))
        try:
            reply = refused.register(peer, id=bad)
            assert reply.error == "BAD_REQUEST" and reply.header["id"] == bad, bad
        finally:
            refused.close()
    for i, name in enumerate((region.name + "/x", "/..", "/" + "a" * 256, "", "/")):
        reply = region.register(peer, name=name, id=i)
        assert reply.error == "BAD_REQUEST" and reply.header["id"] == i, name


def test_r60_a_connection_is_bound_to_the_first_pid_it_registers_with(peer, region):
    assert region.register(peer).kind == "SHM_REGISTERED"  # with this process's pid
    second = Region()
    try:
        reply = second.register(peer, pid=os.getppid(), id="other pid")  # a process that exists
        assert reply.error == "BAD_REQUEST" and reply.header["id"] == "other pid"
        reply = second.register(peer, pid=None)
        assert reply.kind == "SHM_REGISTERED", reply.header
    finally:
        second.close()
    assert peer.request("SHM_UNREGISTER", {"id": "u", "all": True}).header["released"] == 2


def test_r61_registering_a_held_name_again_is_a_retry_only_with_the_same_size_and_key(peer, region):
    handle = region.register(peer).header["handle"]
    assert region.register(peer).header["handle"] == handle
    for changes in ({"size": SIZE // 2}, {"key": secrets.token_bytes(16)}, {"key": region.key + b"x"}):
        assert region.register(peer, **changes).error == "BAD_REQUEST", changes
    x = images()
    x[0, 0, 0, 0] = 6.0
    region.map[4096: 4096 + x.nbytes] = x.tobytes()
    assert shm_infer(peer, handle, 4096, x).kind == "RESULT"  # the registration is unchanged
    assert region.register(peer).header["handle"] == handle


def test_r62_after_registration_the_key_bytes_are_the_clients(peer, region):
    handle = region.register(peer).header["handle"]
    x = images(2)
    x[:, 0, 0, 0] = [8.0, 9.0]
    region.map[: x.nbytes] = x.tobytes()  # over the key
    via_shm = shm_infer(peer, handle, 0, x)
    assert via_shm.kind == "RESULT" and via_shm.frames == peer.infer(x).frames
    assert region.register(peer).header["handle"] == handle  # a retry still names the key first sent (R61)


def test_r63_handles_and_shm_dev_are_integers(peer, region):
    shm = peer.request("HELLO", {"id": 1}).header["shm"]
    assert type(shm["shm_dev"]) is int and shm["shm_dev"] == os.stat("/dev/shm").st_dev
    assert shm["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    reply = region.register(peer).header
    assert type(reply["handle"]) is int and reply["handle"] >= 1
    assert type(reply["size"]) is int and type(reply["pinned"]) is bool


CLIENT = """
import mmap, os, secrets, sys
import msgpack, zmq
name, size = "/infer-" + secrets.token_hex(16), 1 << 16
fd = os.open("/dev/shm/" + name[1:], os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
os.fchmod(fd, 0o600)
os.posix_fallocate(fd, 0, size)
region = mmap.mmap(fd, size)
key = region[:16] = secrets.token_bytes(16)
dealer = zmq.Context().socket(zmq.DEALER)
dealer.connect(sys.argv[1])
header = {"id": 1, "name": name, "size": size, "key": key, "pid": os.getpid()}
dealer.send_multipart([bytes((1, 5)), msgpack.packb(header, use_bin_type=True)])
assert dealer.poll(10_000)
handle = msgpack.unpackb(dealer.recv_multipart()[1])["handle"]
dealer.close(linger=0)  # without SHM_UNREGISTER
print(name, handle, flush=True)
sys.stdin.read()  # lives on until the test closes stdin; never unlinks its name
"""


def shm_stats(endpoint: str) -> tuple[int, int, int]:
    now = stats(endpoint)
    return now["shm"]["regions"], now["shm"]["peers"], now["counters"]["shm_peers_released"]


def test_r64_a_closed_dealers_regions_live_as_long_as_its_process(server, peer, region):
    regions, clients, released = shm_stats(server.endpoint)
    child = subprocess.Popen([sys.executable, "-c", CLIENT, server.endpoint], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    name = None
    try:
        name, handle = child.stdout.readline().split()
        assert shm_stats(server.endpoint) == (regions + 1, clients + 1, released)  # its DEALER is closed
        assert shm_infer(peer, int(handle), 4096, images()).error == "BAD_REQUEST"  # not our handle
        assert region.register(peer, name=name).error == "BAD_REQUEST"  # nor our name
        child.stdin.close()
        assert child.wait(30) == 0
        deadline = time.monotonic() + 30
        while shm_stats(server.endpoint) != (regions, clients, released + 1):
            assert time.monotonic() < deadline, shm_stats(server.endpoint)
        assert not (Path("/dev/shm") / name[1:]).exists()  # the server unlinked it
    finally:
        child.kill()
        child.wait()
        if name:
            (Path("/dev/shm") / name[1:]).unlink(missing_ok=True)
