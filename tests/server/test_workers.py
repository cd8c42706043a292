"""WorkerPool through its public API: jobs in, reply frames out through `take_replies` once `wake_fd` wakes.

The replies are decoded with common.codec and read with the protocol's own
header types, as the I/O thread's clients would read them.
"""

from __future__ import annotations

import threading

import pytest
import torch
import zmq
from torch import nn

from common import codec
from common.protocol import ErrorCode, ErrorHeader, MsgType, ResultHeader
from server.models.synthetic import NoopModel, SleepModel
from server.runner import ModelRunner
from server.workers import Job, PendingRequest, WorkerPool, default_workers, threads_per_worker

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


class Replies:
    """The I/O thread's side of a pool: wait on `wake_fd` (with a poller, as the server loop does), take replies."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.poller = zmq.Poller()
        self.poller.register(pool.wake_fd, zmq.POLLIN)
        self.taken: list[tuple[int, list]] = []

    def receive(self) -> tuple[int, bytes, codec.Message]:
        """One reply: (request's input bytes, client identity, decoded message)."""
        while not self.taken:
            assert self.poller.poll(REPLY_TIMEOUT_MS), "no reply from the workers"
            self.taken = self.pool.take_replies(limit=2)
        nbytes, frames = self.taken.pop(0)
        return nbytes, frames[0], codec.decode([bytes(f) for f in frames[1:]])

    def waiting(self) -> bool:
        return bool(self.taken or self.poller.poll(0))


def pool_of(model: nn.Module, workers: int, device: str = "cpu") -> tuple[WorkerPool, Replies]:
    pool = WorkerPool(ModelRunner(model.to(device), torch.device(device)), workers)
    pool.start()
    return pool, Replies(pool)


@pytest.mark.parametrize("device", DEVICES)
def test_each_request_of_each_job_gets_its_own_rows(device: str) -> None:
    pool, replies_of = pool_of(NoopModel(), 2, device)
    try:
        pool.submit(Job([request("a", 1.0)]))
        pool.submit(Job([request("b", 2.0, rows=2), request("c", 3.0, rows=3)]))  # one batched pass
        replies = {identity: (nbytes, msg) for nbytes, identity, msg in (replies_of.receive() for _ in range(3))}
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
def test_compute_time_is_the_models_service_time(device: str) -> None:
    # On CUDA the compute stage is timed by events on the worker's stream; the sleep model's
    # host-side wait sits between them, so both paths report at least the service time.
    pool, replies = pool_of(SleepModel(service_ms=20.0), 1, device)
    try:
        pool.submit(Job([request("a", 1.0)]))
        _, _, msg = replies.receive()
    finally:
        pool.stop()
    compute_ns = ResultHeader.from_wire(msg.header).server.compute_ns
    assert 19_900_000 <= compute_ns < 20_000_000 * 3, compute_ns


def test_a_failing_model_gets_internal_errors_and_the_pool_keeps_serving() -> None:
    pool, replies_of = pool_of(FailsOnNegativeInput(), 1)
    try:
        pool.submit(Job([request("bad1", -1.0), request("bad2", 1.0)]))  # one bad sample fails the pass
        pool.submit(Job([request("good", 1.0)]))
        replies = [replies_of.receive() for _ in range(3)]
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


def test_stop_finishes_the_queued_jobs() -> None:
    # One worker at 20 ms a job: stop() is called while most of the jobs are still queued.
    pool, replies = pool_of(SleepModel(service_ms=20.0), 1)
    for i in range(5):
        pool.submit(Job([request(f"r{i}", float(i))]))
    pool.stop()
    got = [replies.receive()[1] for _ in range(5)]
    assert got == [f"r{i}".encode() for i in range(5)]  # one worker: in submission order
    assert not replies.waiting()
    pool.close()


def test_without_worker_threads_jobs_run_inline() -> None:
    pool = WorkerPool(ModelRunner(NoopModel(), CPU), 0)
    assert pool.inline
    (frames,) = pool.run_inline(Job([request("x", 4.0, rows=2)]))
    assert frames[0] == b"x"
    msg = codec.decode(frames[1:])
    assert msg.msg_type == MsgType.RESULT and torch.all(msg.tensors[0] == 4.0)
    assert not Replies(pool).waiting()  # nothing went through the workers' way


class RecordsCalls(nn.Module):
    """Noop logits; records (thread name, dtype and shape it got, intra-op threads) of every call."""

    def __init__(self, fail_rows: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.dtype, tuple, int]] = []
        self.fail_rows = fail_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, x.dtype, tuple(x.shape), torch.get_num_threads()))
        if x.shape[0] == self.fail_rows:
            raise RuntimeError(f"no batch of {self.fail_rows}")
        return NoopModel()(x.float())


WARMUP = [(torch.float32, (2, 3, 8, 8)), (torch.uint8, (1, 3, 8, 8))]


def test_warm_up_runs_every_shape_on_every_worker_before_start_returns() -> None:
    model = RecordsCalls()
    pool = WorkerPool(ModelRunner(model, CPU), 3)
    replies = Replies(pool)
    try:
        pool.start(WARMUP)
        calls = list(model.calls)  # start() has returned: every worker's warm-up is over
        assert sorted((name, shape) for name, _, shape, _ in calls) == sorted(
            (f"worker-{i}", shape) for i in range(3) for _, shape in WARMUP)  # each once, on CPU
        assert [set(per_worker) for per_worker in pool.warmup_s] == [{"float32[2,3,8,8]", "uint8[1,3,8,8]"}] * 3
        assert all(s > 0 for per_worker in pool.warmup_s for s in per_worker.values())
        assert not replies.waiting()  # warm-up replies go nowhere
        pool.start(WARMUP)  # a second start (the I/O loop's) does nothing
        assert len(model.calls) == len(calls)
        pool.submit(Job([request("a", 1.0)]))
        assert replies.receive()[1] == b"a"
    finally:
        pool.stop()


def test_without_workers_the_calling_thread_warms_up() -> None:
    model = RecordsCalls()
    pool = WorkerPool(ModelRunner(model, CPU), 0)
    pool.start(WARMUP)
    me = threading.current_thread().name
    assert [(name, shape) for name, _, shape, _ in model.calls] == [(me, shape) for _, shape in WARMUP]
    assert set(pool.warmup_s[0]) == {"float32[2,3,8,8]", "uint8[1,3,8,8]"}
    (frames,) = pool.run_inline(Job([request("x", 4.0)]))
    assert frames[0] == b"x" and len(model.calls) == len(WARMUP) + 1


def test_a_failed_warm_up_names_the_worker_and_stops_the_pool() -> None:
    pool = WorkerPool(ModelRunner(RecordsCalls(fail_rows=1), CPU), 2)
    with pytest.raises(RuntimeError, match=r"warm-up failed: worker \d: no batch of 1"):
        pool.start(WARMUP)
    assert not any(t.is_alive() for t in pool._threads)


def test_each_worker_runs_with_its_share_of_the_threads() -> None:
    model = RecordsCalls()
    before = torch.get_num_threads()
    pool = WorkerPool(ModelRunner(model, CPU), 2)
    try:
        pool.start(WARMUP[:1], threads=1)
    finally:
        pool.stop()
    assert {threads for *_, threads in model.calls} == {1}
    assert torch.get_num_threads() == before  # per thread under OpenMP: the I/O thread keeps its own


@pytest.mark.parametrize(("device", "workers", "threads", "cores", "each"), [
    ("cpu", 1, 0, 8, 8),  # the default: one forward pass with every core
    ("cpu", 2, 0, 8, 4),  # several workers share the cores instead of oversubscribing them
    ("cpu", 3, 0, 2, 1),
    ("cpu", 0, 0, 4, 4),  # no workers: the I/O thread gets them all
    ("cpu", 2, 6, 16, 3),  # --threads is the whole server's budget
    ("cuda", 2, 0, 16, 1),  # on CUDA threads only copy into pinned staging
    ("cuda", 2, 8, 16, 4),
])
def test_threads_per_worker(device: str, workers: int, threads: int, cores: int, each: int) -> None:
    assert threads_per_worker(device, workers, threads, cores) == each


def test_default_workers() -> None:
    assert default_workers("cpu", cuda_graphs=False) == 1
    assert default_workers("cuda", cuda_graphs=False) == 2
    assert default_workers("cuda", cuda_graphs=True) == default_workers("cpu", cuda_graphs=True) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked inputs and CUDA streams need a GPU")
def test_a_pinned_input_is_served_like_a_pageable_one() -> None:
    pool, replies_of = pool_of(NoopModel(), 1, "cuda")
    pinned = request("p", 3.0, rows=2)
    pinned.tensor = pinned.tensor.pin_memory()
    pinned.pinned = True
    try:
        pool.submit(Job([pinned]))
        pool.submit(Job([request("q", 3.0, rows=2)]))
        replies = {identity: msg for _, identity, msg in (replies_of.receive(), replies_of.receive())}
    finally:
        pool.stop()
    assert torch.equal(replies[b"p"].tensors[0], replies[b"q"].tensors[0])
