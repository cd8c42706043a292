"""WorkerPool through its public API: jobs in, reply frames out on an inproc PULL socket.

The replies are decoded with common.codec and read with the protocol's own
header types, as the I/O thread's clients would read them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import zmq
from torch import nn

from common import codec
from common.protocol import ErrorCode, ErrorHeader, MsgType, ResultHeader
from server.runner import ModelRunner
from server.synthetic import NoopModel, SleepModel
from server.workers import Job, PendingRequest, WorkerPool

REPLY_TIMEOUT_MS = 10_000
CPU = torch.device("cpu")
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the CUDA path (streams, pinned staging) needs a GPU"))]


class FailsOnNegativeInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x < 0).any():
            raise RuntimeError("negative pixels")
        return NoopModel()(x)


def request(name: str, first: float, rows: int = 1) -> PendingRequest:
    x = torch.full((rows, 3, 4, 4), first)
    return PendingRequest(identity=name.encode(), request_id=name, ts=[7, 8], tensor=x, frame=None,
                          nbytes=x.nbytes, received_ns=0, decode_ns=5)


@pytest.fixture
def results() -> Iterator[tuple[zmq.Context, zmq.Socket, str]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"inproc://results-{id(sock)}"
    sock.bind(endpoint)
    yield ctx, sock, endpoint
    sock.close()
    ctx.term()


def receive(sock: zmq.Socket) -> tuple[int, bytes, codec.Message]:
    """One reply as the I/O thread gets it: (request's input bytes, client identity, decoded message)."""
    assert sock.poll(REPLY_TIMEOUT_MS), "no reply from the workers"
    frames = sock.recv_multipart()
    return int.from_bytes(frames[0], "little"), frames[1], codec.decode(frames[2:])


def pool_of(model: nn.Module, workers: int, ctx: zmq.Context, endpoint: str, device: str = "cpu") -> WorkerPool:
    pool = WorkerPool(ModelRunner(model.to(device), torch.device(device)), workers, ctx, endpoint)
    pool.start()
    return pool


@pytest.mark.parametrize("device", DEVICES)
def test_each_request_of_each_job_gets_its_own_rows(results, device: str) -> None:
    ctx, sock, endpoint = results
    pool = pool_of(NoopModel(), 2, ctx, endpoint, device)
    try:
        pool.submit(Job([request("a", 1.0)]))
        pool.submit(Job([request("b", 2.0, rows=2), request("c", 3.0, rows=3)]))  # one batched pass
        replies = {identity: (nbytes, msg) for nbytes, identity, msg in (receive(sock) for _ in range(3))}
    finally:
        pool.stop()
    assert set(replies) == {b"a", b"b", b"c"}
    for name, first, rows, batch in (("a", 1.0, 1, 1), ("b", 2.0, 2, 5), ("c", 3.0, 3, 5)):
        nbytes, msg = replies[name.encode()]
        assert msg.msg_type == MsgType.RESULT and nbytes == rows * 3 * 4 * 4 * 4
        header = ResultHeader.from_wire(msg.header)
        assert header.id == name and header.ts == [7, 8]  # echoed for the client's latency
        (logits,) = msg.tensors
        assert logits.shape == (rows, 1000) and torch.all(logits == first)
        times = header.server
        assert times.batch_rows == batch and times.worker in (0, 1) and times.decode_ns == 5
        assert all(times.stage_ns(s) >= 0 for s in ("queue", "h2d", "compute", "d2h", "encode"))


@pytest.mark.parametrize("device", DEVICES)
def test_compute_time_is_the_models_service_time(results, device: str) -> None:
    # On CUDA the compute stage is timed by events on the worker's stream; the sleep model's
    # host-side wait sits between them, so both paths report at least the service time.
    ctx, sock, endpoint = results
    pool = pool_of(SleepModel(service_ms=20.0), 1, ctx, endpoint, device)
    try:
        pool.submit(Job([request("a", 1.0)]))
        _, _, msg = receive(sock)
    finally:
        pool.stop()
    compute_ns = ResultHeader.from_wire(msg.header).server.compute_ns
    assert 19_900_000 <= compute_ns < 20_000_000 * 3, compute_ns


def test_a_failing_model_gets_internal_errors_and_the_pool_keeps_serving(results) -> None:
    ctx, sock, endpoint = results
    pool = pool_of(FailsOnNegativeInput(), 1, ctx, endpoint)
    try:
        pool.submit(Job([request("bad1", -1.0), request("bad2", 1.0)]))  # one bad sample fails the pass
        pool.submit(Job([request("good", 1.0)]))
        replies = [receive(sock) for _ in range(3)]
    finally:
        pool.stop()
    errors = {identity: ErrorHeader.from_wire(msg.header) for _, identity, msg in replies[:2]}
    assert set(errors) == {b"bad1", b"bad2"}
    for name, err in errors.items():
        assert err.code == ErrorCode.INTERNAL and err.name == "INTERNAL"
        assert err.id == name.decode() and err.ts == [7, 8]
        assert "negative pixels" in err.message
    _, identity, msg = replies[2]
    assert identity == b"good" and msg.msg_type == MsgType.RESULT


def test_stop_finishes_the_queued_jobs(results) -> None:
    ctx, sock, endpoint = results
    # One worker at 20 ms a job: stop() is called while most of the jobs are still queued.
    pool = pool_of(SleepModel(service_ms=20.0), 1, ctx, endpoint)
    for i in range(5):
        pool.submit(Job([request(f"r{i}", float(i))]))
    pool.stop()
    got = [receive(sock)[1] for _ in range(5)]
    assert got == [f"r{i}".encode() for i in range(5)]  # one worker: in submission order
    assert not sock.poll(0)


def test_without_worker_threads_jobs_run_inline(results) -> None:
    ctx, sock, endpoint = results
    pool = WorkerPool(ModelRunner(NoopModel(), CPU), 0, ctx, endpoint)
    assert pool.inline
    (frames,) = pool.run_inline(Job([request("x", 4.0, rows=2)]))
    assert frames[0] == b"x"
    msg = codec.decode(frames[1:])
    assert msg.msg_type == MsgType.RESULT and torch.all(msg.tensors[0] == 4.0)
    assert not sock.poll(0)  # nothing went through the socket
