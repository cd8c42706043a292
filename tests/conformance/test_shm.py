"""PROTOCOL.md: Shared memory (R50-R53), with a region made as the document says: /dev/shm, 0600, key first."""

from __future__ import annotations

import mmap
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conformance.conftest import images, peers, tensor

SIZE = 1 << 20


class Region:
    def __init__(self, mode: int = 0o600, size: int = SIZE) -> None:
        self.name = "/infer-" + secrets.token_hex(16)
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
