"""Prediction workers: a thread pool that runs jobs on the model and hands replies back.

Workers never touch the ROUTER socket (ZeroMQ sockets are not thread-safe).
Each worker owns a PUSH socket connected to an inproc PULL socket owned by the
I/O thread, and sends it each complete reply (prefixed with the request's input
size, for the I/O thread's byte cap); the I/O thread forwards them. On CUDA each
worker has its own stream and pinned staging buffers, so one request's
host-to-device copy, another's compute and a third's device-to-host copy can
overlap.

With no worker threads (`--num-workers 0`) the I/O thread runs each job itself
(`run_inline`): no hand-off between threads, so the lowest per-request overhead,
but nothing overlaps a running job, not even receiving the next request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from common import codec
from common.protocol import ErrorCode, MsgType, ProtocolError, ResultHeader, ServerTimes
from common.wire import send_frames
from server.runner import ModelRunner

log = logging.getLogger("infer.server.workers")

_RESULT_CONTROL = codec.control_frame(MsgType.RESULT)


@dataclass
class PendingRequest:
    """An accepted INFER request waiting for (or in) a worker."""

    identity: bytes
    request_id: Any
    ts: Any
    tensor: torch.Tensor  # read-only view over the received frame
    frame: Any  # the zmq.Frame that owns the tensor's memory
    nbytes: int
    received_ns: int  # monotonic, when the I/O thread finished decoding it
    decode_ns: int
    pinned: bool = False  # the tensor is in a page-locked shared-memory region: no staging copy needed


@dataclass
class Job:
    """Requests run as one forward pass (more than one with dynamic batching)."""

    requests: list[PendingRequest]


class _Staging:
    """Per-worker pinned host buffers, one per input shape, reused across requests.

    Reuse is safe because a worker synchronises its stream before taking its next
    job. Output buffers are not reused: a reply frame is sent zero-copy and may
    still be in flight when the next job finishes.
    """

    def __init__(self) -> None:
        self._inputs: dict[tuple, torch.Tensor] = {}

    def input_like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, tuple(x.shape))
        buf = self._inputs.get(key)
        if buf is None:
            if len(self._inputs) >= 16:  # bound pinned memory held across many shapes
                self._inputs.clear()
            buf = self._inputs[key] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        return buf


class WorkerPool:
    def __init__(self, runner: ModelRunner, num_workers: int, ctx: zmq.Context, results_endpoint: str):
        self.runner = runner
        self.ctx = ctx
        self.results_endpoint = results_endpoint
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"worker-{i}", daemon=True)
            for i in range(num_workers)
        ]
        self._inline_state: tuple[torch.cuda.Stream | None, _Staging | None] | None = None

    @property
    def inline(self) -> bool:
        """No worker threads: the caller runs each job with `run_inline`."""
        return not self._threads

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, then end the threads."""
        for _ in self._threads:
            self.jobs.put(None)
        for t in self._threads:
            t.join(timeout)

    def run_inline(self, job: Job) -> list[list]:
        """Run a job on the calling thread; returns each request's reply frames."""
        if self._inline_state is None:
            self._inline_state = self._device_state()
        return self._replies(job, 0, *self._inline_state)

    def _device_state(self) -> tuple[torch.cuda.Stream | None, _Staging | None]:
        device = self.runner.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        return stream, (_Staging() if stream is not None else None)

    def _replies(self, job: Job, index: int, stream: torch.cuda.Stream | None, staging: _Staging | None) -> list[list]:
        try:
            return self.execute(job, index, stream, staging)
        except Exception as exc:  # keep serving: answer every request of the job
            log.exception("worker %d: inference failed", index)
            return [
                [r.identity, *codec.error_reply(ProtocolError(ErrorCode.INTERNAL, f"inference failed: {exc}",
                                                              r.request_id, r.ts))]
                for r in job.requests
            ]

    def _run(self, index: int) -> None:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 0)  # in-flight work is bounded by the I/O thread's cap
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.results_endpoint)
        stream, staging = self._device_state()
        try:
            with torch.inference_mode():  # for the thread's life, not per call (ModelRunner)
                while (job := self.jobs.get()) is not None:
                    replies = self._replies(job, index, stream, staging)
                    for req, frames in zip(job.requests, replies):
                        send_frames(sock, [req.nbytes.to_bytes(8, "little"), *frames])
        finally:
            sock.close()

    def execute(
        self, job: Job, worker: int, stream: torch.cuda.Stream | None, staging: _Staging | None
    ) -> list[list]:
        start_ns = time.monotonic_ns()
        reqs = job.requests
        x = reqs[0].tensor if len(reqs) == 1 else torch.cat([r.tensor for r in reqs])
        if stream is None:
            stage_ns = time.monotonic_ns()
            out = self.runner(x)
            compute_done_ns = time.monotonic_ns()
            h2d_ns, compute_ns, d2h_ns = stage_ns - start_ns, compute_done_ns - stage_ns, 0
            host_out = out
        else:
            h2d_ns, compute_ns, d2h_ns, host_out = self._execute_cuda(x, stream, staging)
        rows = [r.tensor.shape[0] for r in reqs]
        outputs = host_out.split(rows) if len(reqs) > 1 else [host_out]
        replies = []
        for r, out_rows in zip(reqs, outputs):
            enc_start = time.monotonic_ns()
            desc, buf = codec.tensor_to_buffer(out_rows)
            times = ServerTimes(start_ns - r.received_ns, r.decode_ns, h2d_ns, compute_ns, d2h_ns,
                                time.monotonic_ns() - enc_start, len(x), worker)
            header = ResultHeader(r.request_id, r.ts, [desc], times).to_wire()
            replies.append([r.identity, _RESULT_CONTROL, codec.pack(header), buf])
        return replies

    def _execute_cuda(
        self, x: torch.Tensor, stream: torch.cuda.Stream, staging: _Staging
    ) -> tuple[int, int, int, torch.Tensor]:
        device = self.runner.device
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        host_start = time.monotonic_ns()
        pinned = staging.input_like(x)
        pinned.copy_(x)  # pageable (the ZeroMQ frame) -> pinned, so the H2D copy can be async
        host_copy_ns = time.monotonic_ns() - host_start
        with torch.cuda.stream(stream):
            events[0].record(stream)
            x_dev = pinned.to(device, non_blocking=True)
            events[1].record(stream)
            out = self.runner(x_dev)
            events[2].record(stream)
            host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host_out.copy_(out, non_blocking=True)
            events[3].record(stream)
        stream.synchronize()
        ms_to_ns = 1e6
        h2d_ns = host_copy_ns + int(events[0].elapsed_time(events[1]) * ms_to_ns)
        compute_ns = int(events[1].elapsed_time(events[2]) * ms_to_ns)
        d2h_ns = int(events[2].elapsed_time(events[3]) * ms_to_ns)
        return h2d_ns, compute_ns, d2h_ns, host_out
