"""`--transport shm` on the client: the checks before any region is made, slots, and runs against real servers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import torch
import zmq

from client.config import ClientConfig
from client.loadgen import InputPool
from client.shm_transport import DATA_OFFSET, ShmInputs, ShmLink, slot_count
from client.transport import Backend, ClientError
from common import codec
from common.protocol import MsgType, ShmInfo, ShmUsage, StatsReplyHeader
from common.shm import host_identity
from common.wire import recv_frames, send_frames
from tests.support import ask, dealer_socket, run_cli

BATCH, SIDE = 2, 32


class Unreachable:
    """A backend the checks must refuse before sending it anything."""

    endpoint = "tcp://127.0.0.1:1"

    def request(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")


def here(**changes: object) -> dict:
    return {**ShmInfo(**host_identity(), limits={"max_bytes_per_peer": 1 << 30}).to_wire(), **changes}


def pool(dtype: str = "float32") -> InputPool:
    return InputPool(BATCH, (3, SIDE, SIDE), dtype, seed=3)


@pytest.mark.parametrize(
    "info, fragment",
    [
        ({}, "offers no shared memory"),
        ({"shm": None}, "offers no shared memory"),
        ({"shm": here(boot_id="another-boot", hostname="elsewhere")}, "needs the server on this host"),
        ({"shm": here(shm_dev=-1)}, "one /dev/shm"),
        ({"shm": here(limits={"max_bytes_per_peer": 4096})}, "exceed the server's limit"),
    ],
)
def test_a_server_that_cannot_share_memory_is_refused_in_one_line(info: dict, fragment: str) -> None:
    with pytest.raises(ClientError) as err:
        ShmLink.open(Unreachable(), info, pool(), 4, timeout_s=1.0)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, 4),  # the pool's batches; one request in flight
        ({"concurrency": 9}, 9),
        ({"request_rate": 50.0}, 4),  # open loop, no refresh: slots never change, requests may share one
        ({"request_rate": 50.0, "transport": "shm", "shm_refresh": True}, 64),
        ({"request_rate": 50.0, "concurrency": 5, "transport": "shm", "shm_refresh": True}, 5),
    ],
)
def test_a_slot_per_pooled_batch_and_per_request_in_flight(options: dict, expected: int) -> None:
    assert slot_count(ClientConfig(**options), pool()) == max(expected, len(pool().batches))


@pytest.fixture
def backend(noop_server) -> Iterator[Backend]:
    ctx = zmq.Context()
    b = Backend(ctx, noop_server.endpoint)
    b.hello(30.0)
    yield b
    b.close()
    ctx.term()


def server_stats(endpoint: str) -> StatsReplyHeader:
    with dealer_socket(endpoint) as sock:
        return StatsReplyHeader.from_wire(ask(sock, codec.encode(MsgType.STATS, {"id": 1})).header)


def round_trip(inputs: ShmInputs, backend: Backend, request_id: int) -> codec.Message:
    control, header, frames = inputs.take(0, request_id)
    header.id, header.ts = request_id, [0, 0]
    send_frames(backend.sock, [control, codec.pack(header.to_wire()), *frames])
    assert backend.sock.poll(10_000)
    reply = codec.decode([f.buffer for f in recv_frames(backend.sock)])
    inputs.done(request_id)
    return reply


@pytest.mark.integration
@pytest.mark.parametrize("refresh", [False, True], ids=["written-once", "refresh"])
def test_requests_read_the_slots_and_close_releases_the_region(noop_server, backend: Backend, refresh: bool) -> None:
    batches = pool()
    config = ClientConfig(servers=(noop_server.endpoint,), batch_size=BATCH, image_size=SIDE, concurrency=2,
                          transport="shm", shm_refresh=refresh)
    inputs = ShmInputs.open([backend], [backend.info], batches, config)
    link = inputs.links[0]
    try:
        assert link.handle is not None and link.offsets[0] == DATA_OFFSET and link.region.path.exists()
        assert server_stats(noop_server.endpoint).shm["regions"] >= 1
        expected = [batches.batches[i % len(batches.batches)] for i in range(6)]
        for i in range(6):
            reply = round_trip(inputs, backend, i)
            assert reply.msg_type == MsgType.RESULT, reply.header
            assert torch.equal(reply.tensors[0][:, 0], expected[i][:, 0, 0, 0])  # noop: each row's first element
        if refresh:  # requests in flight take every slot; the next send must wait for a reply
            for request_id in range(100, 100 + len(link.slots)):
                inputs.take(0, request_id)
            assert not inputs.ready(0)
            inputs.done(100)
            assert inputs.ready(0)
    finally:
        inputs.close()
    assert not link.region.path.exists()
    assert ShmUsage.from_wire(server_stats(noop_server.endpoint).shm).regions == 0


@pytest.mark.integration
def test_refresh_reuses_the_slot_freed_last(noop_server, backend: Backend) -> None:
    """Its pages are the warm ones: at 1 in flight every copy goes into the same slot, not each in turn."""
    config = ClientConfig(servers=(noop_server.endpoint,), batch_size=BATCH, image_size=SIDE, concurrency=1,
                          transport="shm", shm_refresh=True)
    inputs = ShmInputs.open([backend], [backend.info], pool(), config)
    try:
        used = []
        for request_id in range(6):
            used.append(inputs.take(0, request_id)[1])
            inputs.done(request_id)
        assert len(inputs.links[0].slots) > 1 and all(header is used[0] for header in used)
    finally:
        inputs.close()


@pytest.mark.integration
def test_a_refused_registration_removes_the_region(noop_server, backend: Backend, monkeypatch) -> None:
    monkeypatch.setattr(os, "getpid", lambda: 1)  # a process that does not map the region: refused
    with pytest.raises(ClientError, match="registering") as err:
        ShmLink.open(backend, backend.info, pool(), 2, timeout_s=10.0)
    assert "does not map the region" in str(err.value)
    assert ShmUsage.from_wire(server_stats(noop_server.endpoint).shm).regions == 0


@pytest.mark.integration
@pytest.mark.parametrize("extra", [(), ("--shm-refresh", "--concurrency", "3"), ("--processes", "2")],
                         ids=["once", "refresh", "processes"])
def test_infer_client_over_shared_memory_end_to_end(server_factory, tmp_path, extra: tuple) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    out = tmp_path / "run.json"
    proc = run_cli("client", "--server", server.endpoint, "--transport", "shm", "--batch-size", str(BATCH),
                   "--image-size", str(SIDE), "--num-iters", "40", "--output-file", "", "--json-file", str(out),
                   "-q", *extra)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["config"]["transport"] == "shm"
    counters = server_stats(server.endpoint).counters
    processes = 2 if "--processes" in extra else 1
    assert counters.shm_infer_received == 40  # every measured request; the warm-up goes inline
    assert counters.shm_registered == processes and counters.shm_unregistered == processes
    assert ShmUsage.from_wire(server_stats(server.endpoint).shm).regions == 0


@pytest.mark.integration
def test_shm_refresh_without_the_shm_transport_is_a_usage_error() -> None:
    proc = run_cli("client", "--shm-refresh", "--num-iters", "1")
    assert proc.returncode == 2 and "--shm-refresh" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_a_restarted_server_gets_the_region_registered_again(server_factory) -> None:
    first = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    ctx = zmq.Context()
    backend = Backend(ctx, first.endpoint)
    try:
        backend.hello(30.0)
        config = ClientConfig(servers=(first.endpoint,), batch_size=BATCH, image_size=SIDE, transport="shm")
        inputs = ShmInputs.open([backend], [backend.info], pool(), config)
        try:
            assert round_trip(inputs, backend, 1).msg_type == MsgType.RESULT
            first.kill()  # killed: it unlinks nothing, so the name survives for the next server
            second = server_factory("--device", "cpu", "--model", "noop", "--no-compile", bind=first.endpoint)
            backend.hello(30.0)
            inputs.reconnected(0)
            assert round_trip(inputs, backend, 2).msg_type == MsgType.RESULT
            assert server_stats(second.endpoint).counters.shm_registered == 1
        finally:
            inputs.close()
    finally:
        backend.close()
        ctx.term()
