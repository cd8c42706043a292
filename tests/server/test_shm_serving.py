"""A live infer-server's shared-memory data plane: real processes, real ZeroMQ, real /dev/shm.

Every wait is bounded: replies by `ask`'s poll timeout, a killed client's release
by polling STATS until a deadline.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch
import zmq

from common import codec
from common.protocol import (
    SHM_KEY_BYTES,
    ErrorCode,
    HelloHeader,
    InferHeader,
    MsgType,
    ServerCounters,
    ShmRegisterHeader,
    ShmUnregisterHeader,
    ShmUsage,
    StatsReplyHeader,
    shm_tensor_desc,
)
from common.shm import SHM_DIR, ShmRegion
from tests.support import ROOT, ask, dealer_socket, start_server

pytestmark = pytest.mark.integration

OFFSET = 4096  # the key's page, as client/shm_transport.py lays a region out
RELEASE_DEADLINE_S = 30.0
NOOP = ("--device", "cpu", "--model", "noop", "--no-compile")


def register(sock: zmq.Socket, region: ShmRegion, request_id: object = "reg", pid: int | None = None) -> codec.Message:
    key = secrets.token_bytes(SHM_KEY_BYTES[0])
    region.buffer(0, len(key))[:] = key
    header = ShmRegisterHeader(region.name, region.size, key, request_id, pid if pid is not None else os.getpid())
    return ask(sock, codec.encode(MsgType.SHM_REGISTER, header.to_wire()))


def infer_shm(sock: zmq.Socket, handle: object, x: torch.Tensor, offset: int = OFFSET, nbytes: int | None = None,
              request_id: object = "inf") -> codec.Message:
    desc = shm_tensor_desc(codec.DTYPE_NAMES[x.dtype], list(x.shape), handle, offset,
                           x.nbytes if nbytes is None else nbytes)
    return ask(sock, codec.encode(MsgType.INFER, InferHeader([desc], request_id, [1, 2]).to_wire()))


def stats(endpoint: str) -> StatsReplyHeader:
    with dealer_socket(endpoint) as sock:
        return StatsReplyHeader.from_wire(ask(sock, codec.encode(MsgType.STATS, {"id": "s"})).header)


def usage(endpoint: str) -> ShmUsage:
    return ShmUsage.from_wire(stats(endpoint).shm)


@pytest.fixture(scope="module")
def noop(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    server = start_server(*NOOP, tmp_path=tmp_path_factory.mktemp("noop-shm"))
    yield server
    server.kill()


@pytest.fixture
def region() -> Iterator[ShmRegion]:
    with ShmRegion.create(OFFSET + (1 << 20)) as r:
        yield r


def test_shm_round_trip_returns_exactly_the_logits_of_the_socket(resnet_server, region: ShmRegion) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    region.tensor(OFFSET, x.dtype, x.shape).copy_(x)
    with dealer_socket(resnet_server.endpoint) as sock:
        registered = register(sock, region)
        assert registered.msg_type == MsgType.SHM_REGISTERED, registered.header
        via_shm = infer_shm(sock, registered.header["handle"], x)
        via_frame = ask(sock, codec.encode(MsgType.INFER, InferHeader([], "tcp", [1, 2]).to_wire(), [x]))
    assert via_shm.msg_type == via_frame.msg_type == MsgType.RESULT, via_shm.header
    assert via_shm.header["ts"] == [1, 2]
    assert via_shm.tensors[0].shape == (2, 1000)
    assert torch.equal(via_shm.tensors[0], via_frame.tensors[0])  # bit for bit


@pytest.mark.parametrize("server_args", [(), ("--num-workers", "0"), ("--max-batch-size", "4")],
                         ids=["workers", "inline", "batching"])
def test_every_loop_serves_shm_and_counts_it(server_factory, region: ShmRegion, server_args: tuple) -> None:
    server = server_factory(*NOOP, *server_args)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    region.tensor(OFFSET, x.dtype, x.shape).copy_(x)
    with dealer_socket(server.endpoint) as sock:
        info = ask(sock, codec.encode(MsgType.HELLO, HelloHeader("h").to_wire())).header
        assert info["shm"]["boot_id"] and info["shm"]["limits"]["max_regions_per_peer"] >= 1
        handle = register(sock, region).header["handle"]
        reply = infer_shm(sock, handle, x)
        assert reply.msg_type == MsgType.RESULT, reply.header
        assert reply.tensors[0][:, 0].tolist() == x[:, 0, 0, 0].tolist()  # noop: row i is sample i's first element
        counters = stats(server.endpoint).counters
        assert (counters.shm_registered, counters.shm_infer_received) == (1, 1)
        released = ask(sock, codec.encode(MsgType.SHM_UNREGISTER, ShmUnregisterHeader("u", handle).to_wire()))
        assert released.msg_type == MsgType.SHM_UNREGISTERED and released.header["released"] == 1
    # Not mapped_bytes: a worker may hold its last request (and so the mapping) until its next job.
    left = usage(server.endpoint)
    assert (left.regions, left.peers) == (0, 0)
    assert region.path.exists()  # unregistering leaves the name to its owner


@pytest.mark.parametrize(
    "offset, nbytes, handle, fragment",
    [
        (1 << 30, None, None, "outside"),  # offset past the end
        (OFFSET + (1 << 20) - 8, None, None, "outside"),  # starts inside, ends past the end
        (OFFSET, 12, None, "shm.nbytes is 12"),  # nbytes that are not dtype x shape
        (OFFSET + 2, None, None, "aligned"),
        (OFFSET, None, 999, "not registered by this client"),  # unknown handle
        (OFFSET, None, True, "integer"),
        (-4, None, None, "outside"),
    ],
)
def test_bad_references_get_bad_request_and_the_server_keeps_serving(
    noop, region: ShmRegion, offset: int, nbytes: int | None, handle: object, fragment: str
) -> None:
    x = torch.zeros(2, 3, 32, 32)
    with dealer_socket(noop.endpoint) as sock:
        good = register(sock, region).header["handle"]
        error = infer_shm(sock, good if handle is None else handle, x, offset, nbytes, request_id=11)
        assert error.msg_type == MsgType.ERROR
        assert error.header["code"] == ErrorCode.BAD_REQUEST and fragment in error.header["message"]
        assert error.header["id"] == 11 and error.header["ts"] == [1, 2]
        assert infer_shm(sock, good, x).msg_type == MsgType.RESULT
        ask(sock, codec.encode(MsgType.SHM_UNREGISTER, ShmUnregisterHeader(all_regions=True).to_wire()))


def test_a_second_client_cannot_use_the_first_clients_region(noop, region: ShmRegion) -> None:
    x = torch.zeros(1, 3, 32, 32)
    with dealer_socket(noop.endpoint) as first, dealer_socket(noop.endpoint) as second:
        registered = register(first, region)
        handle = registered.header["handle"]
        stolen = infer_shm(second, handle, x)
        assert stolen.msg_type == MsgType.ERROR and stolen.header["code"] == ErrorCode.BAD_REQUEST
        assert "not registered by this client" in stolen.header["message"]
        again = register(second, region)  # the name, with its key (rewritten: the first's still registered)
        assert again.msg_type == MsgType.ERROR and "another client" in again.header["message"]
        wrong = ShmRegisterHeader(region.name, region.size, b"x" * SHM_KEY_BYTES[0], "k").to_wire()
        with ShmRegion.create(4096) as other:
            refused = ask(second, codec.encode(MsgType.SHM_REGISTER, {**wrong, "name": other.name, "size": 4096}))
        assert refused.msg_type == MsgType.ERROR and "key" in refused.header["message"]
        assert infer_shm(first, handle, x).msg_type == MsgType.RESULT
        ask(first, codec.encode(MsgType.SHM_UNREGISTER, ShmUnregisterHeader(all_regions=True).to_wire()))


def test_requests_without_a_header_map_or_with_frames_are_refused(noop) -> None:
    with dealer_socket(noop.endpoint) as sock:
        bad = ask(sock, [*codec.encode(MsgType.SHM_REGISTER, {"id": 1, "name": "/x", "size": 1}), b"extra"])
        assert bad.header["code"] == ErrorCode.BAD_REQUEST and "carries no tensor frames" in bad.header["message"]
        for header, fragment in [({"id": 2, "name": "/../etc", "size": 64, "key": b"k" * 16}, "not a /dev/shm name"),
                                 ({"id": 3, "name": "/infer-missing", "size": 64, "key": b"k" * 16}, "cannot open"),
                                 ({"id": 4}, "give either")]:
            msg_type = MsgType.SHM_UNREGISTER if "name" not in header else MsgType.SHM_REGISTER
            reply = ask(sock, codec.encode(msg_type, header))
            assert reply.msg_type == MsgType.ERROR and fragment in reply.header["message"], reply.header
            assert reply.header["id"] == header["id"]
        assert ask(sock, codec.encode(MsgType.HELLO, {"id": 5})).msg_type == MsgType.INFO


KILLED_CLIENT = """
import os, secrets, signal, sys
import zmq
from common import codec
from common.protocol import MsgType, ShmRegisterHeader
from common.shm import ShmRegion
region = ShmRegion.create(8192)
key = secrets.token_bytes(16)
region.buffer(0, 16)[:] = key
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.connect(sys.argv[1])
sock.send_multipart(codec.encode(MsgType.SHM_REGISTER,
                                 ShmRegisterHeader(region.name, region.size, key, 1, os.getpid()).to_wire()))
assert sock.poll(30_000)
reply = codec.decode(sock.recv_multipart())
print(region.name, reply.msg_type.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("server_args", [(), ("--num-workers", "0")], ids=["polling", "inline"])
def test_a_killed_clients_regions_are_released_and_unlinked(server_factory, server_args: tuple) -> None:
    server = server_factory(*NOOP, *server_args)
    proc = subprocess.run([sys.executable, "-c", KILLED_CLIENT, server.endpoint], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    name, reply = proc.stdout.split()
    assert reply == "SHM_REGISTERED"
    deadline = time.monotonic() + RELEASE_DEADLINE_S
    while True:
        reply_stats = stats(server.endpoint)
        if ShmUsage.from_wire(reply_stats.shm).regions == 0:
            break
        assert time.monotonic() < deadline, f"regions still attached: {reply_stats.shm}"
    assert reply_stats.counters.shm_peers_released == 1
    assert ShmUsage.from_wire(reply_stats.shm) == ShmUsage()
    assert not (SHM_DIR / name.lstrip("/")).exists(), "the killed client's region was left in /dev/shm"


def test_a_stopping_server_releases_everything_and_leaves_the_names(server_factory, region: ShmRegion) -> None:
    server = server_factory(*NOOP)
    with dealer_socket(server.endpoint) as sock:
        assert register(sock, region).msg_type == MsgType.SHM_REGISTERED
    assert server.terminate() == 0
    assert region.path.exists()


def test_counters_start_at_zero_and_info_says_what_is_offered(noop) -> None:
    counters = ServerCounters.from_wire(stats(noop.endpoint).counters.to_wire())
    assert counters.shm_peers_released == 0
    with dealer_socket(noop.endpoint) as sock:
        shm = ask(sock, codec.encode(MsgType.HELLO, {"id": 1})).header["shm"]
    assert shm["pinned"] is False and shm["shm_dev"] == os.stat(SHM_DIR).st_dev
