"""Prediction workers: a thread pool that runs jobs on the model and hands replies back.

Workers never touch the ROUTER socket (ZeroMQ sockets are not thread-safe).
A worker appends each complete reply (with the request's input size, for the I/O thread's
byte cap) to the pool's `replies` deque and wakes the I/O thread through an eventfd
(`wake_fd`) it polls with its sockets. A deque and one eventfd write per job cost a fraction
of an inproc PUSH/PULL pair: five frames sent, five received and a zmq.Again per reply,
each call handing the GIL over. On CUDA each worker has its own stream and pinned staging
buffers, so one request's host-to-device copy, another's compute and a third's
device-to-host copy can overlap, and it waits for its stream on blocking-sync events (the
host sleeps in the driver; CUDA's default sync spins a core per waiting thread).

`start` warms every worker up before the server says it is ready: each runs
every warm-up shape on its own thread and stream, so compilation, its CUDA
graphs (captured per thread), the caching allocator's blocks (never shared
across streams) and the pinned staging buffers all exist before the first
request is timed.

Intra-op threads (`threads_per_worker`): torch's count is per thread under
OpenMP, so each prediction thread sets its own share of the budget; on CPU the
share runs the forward pass, on CUDA only the copy into pinned staging.

With no worker threads (`--num-workers 0`) the I/O thread runs each job itself
(`run_inline`): no hand-off between threads, so the lowest per-request overhead,
but nothing overlaps a running job, not even receiving the next request.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

import torch

from common import codec
from common.protocol import ErrorCode, MsgType, ProtocolError, ResultHeader, ServerTimes
from server import profiling
from server.gate import shape_label
from server.histograms import StageHistograms
from server.runner import ModelRunner

log = logging.getLogger("infer.server.workers")

_RESULT_CONTROL = codec.control_frame(MsgType.RESULT)
MAX_STAGED_SHAPES = 16  # bounds the pinned memory one worker holds across many input shapes


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


def default_workers(device_type: str, cuda_graphs: bool) -> int:
    """Prediction threads when --num-workers is not given.

    On CPU one: a second concurrent forward pass only splits the same cores, and one
    worker already overlaps the I/O thread's receiving with compute. On CUDA two, each
    with its own stream, so one's copies overlap the other's compute; CUDA-graph modes
    replay on the one thread that captured them.
    """
    if cuda_graphs:
        return 1
    return 2 if device_type == "cuda" else 1


def threads_per_worker(device_type: str, workers: int, threads: int, cores: int) -> int:
    """Intra-op threads each prediction thread (the I/O thread, with no workers) runs with.

    `threads` is the budget for the whole pool (--threads; 0 = unset). On CPU the
    forward passes share it, `cores` when unset, so concurrent passes do not
    oversubscribe the machine. On CUDA a thread only copies inputs into pinned
    staging: one each unless a budget is given.
    """
    if device_type == "cuda" and not threads:
        return 1
    return max(1, (threads or cores) // max(1, workers))


class _CudaLane:
    """One prediction thread's CUDA stream, timing events and pinned input buffers.

    Reusing the events and buffers is safe because the thread waits for its
    stream before taking its next job. Output buffers are not reused: a reply
    frame is sent zero-copy and may still be in flight when the next job finishes.
    """

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        # start, input copied, computed, output copied
        self.events = [torch.cuda.Event(enable_timing=True, blocking=True) for _ in range(4)]
        self._inputs: dict[tuple, torch.Tensor] = {}

    def staged(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The job's input in this lane's pinned buffer for its shape: one copy, or the batch's concatenation."""
        first = tensors[0]
        key = (first.dtype, (sum(t.shape[0] for t in tensors), *first.shape[1:]))
        buf = self._inputs.get(key)
        if buf is None:
            if len(self._inputs) >= MAX_STAGED_SHAPES:
                self._inputs.clear()
            buf = self._inputs[key] = torch.empty(key[1], dtype=key[0], pin_memory=True)
        if len(tensors) == 1:
            buf.copy_(first)
        else:
            torch.cat(tensors, out=buf)
        return buf


Reply = tuple[int, list]  # (the request's input bytes, its reply frames [identity, control, header, ...])


class WorkerPool:
    def __init__(self, runner: ModelRunner, num_workers: int):
        self.runner = runner
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Finished replies, oldest first: appended by the workers, taken by the I/O thread (`take_replies`).
        self.replies: collections.deque[Reply] = collections.deque()
        # Readable while replies may be waiting: the I/O thread polls it with its sockets.
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._unfinished = 0  # jobs submitted whose replies are not all sent yet
        self._unfinished_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"worker-{i}", daemon=True)
            for i in range(num_workers)
        ]
        self._started = False
        self._warmup: list[tuple[torch.dtype, tuple[int, ...]]] = []
        self._threads_each = 0  # 0: leave torch's intra-op thread count as it is
        self._ready = [threading.Event() for _ in self._threads]
        self._failures: list[str] = []
        self._inline_lane: _CudaLane | None = None
        self._inline_ready = False
        # Per worker: seconds of its first call of each warm-up shape ("float32[8,3,64,64]").
        self.warmup_s: list[dict[str, float]] = [{} for _ in range(max(1, num_workers))]
        self.timings: list[StageHistograms] | None = None  # per worker, once keep_timings is called

    def keep_timings(self) -> list[StageHistograms]:
        """From now on each prediction thread adds every request's times to its own histograms."""
        self.timings = [StageHistograms() for _ in self.warmup_s]
        return self.timings

    @property
    def inline(self) -> bool:
        """No worker threads: the caller runs each job with `run_inline`."""
        return not self._threads

    def start(self, warmup: Sequence[tuple[torch.dtype, tuple[int, ...]]] = (), threads: int = 0) -> None:
        """Start the workers and return once each has run every `warmup` input (dtype, shape) on its own
        thread and stream, with `threads` intra-op threads each (0: torch's count as it is).

        With no worker threads the calling thread, the one that will run `run_inline`, warms up.
        RuntimeError names the worker and what failed; the pool is stopped then. A second call does nothing.
        """
        if self._started:
            return
        self._started = True
        self._warmup, self._threads_each = list(warmup), threads
        if self.inline:
            with torch.inference_mode():  # as the I/O thread serves
                self._inline_lane = self._prepare_inline()
            return
        for t in self._threads:
            t.start()
        for ready in self._ready:
            ready.wait()
        if self._failures:
            self.stop()
            raise RuntimeError(f"warm-up failed: {'; '.join(self._failures)}")

    @property
    def saturated(self) -> bool:
        """Every worker has a job: a job submitted now would wait in the queue."""
        return bool(self._threads) and self._unfinished >= len(self._threads)

    @property
    def busy(self) -> int:
        """Worker threads running a job now (0 with none: the I/O thread's job is over when it reads this)."""
        return min(self._unfinished, len(self._threads))

    def submit(self, job: Job) -> None:
        with self._unfinished_lock:
            self._unfinished += 1
        self.jobs.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, then end the threads (those that were started). Their replies stay in
        `replies`; `close` releases `wake_fd` once they are taken."""
        started = [t for t in self._threads if t.ident is not None]
        for _ in started:
            self.jobs.put(None)
        for t in started:
            t.join(timeout)

    def close(self) -> None:
        """Release `wake_fd`, unless a worker outlived `stop` (its number could be reused under it)."""
        if not any(t.is_alive() for t in self._threads):
            os.close(self.wake_fd)

    def run_inline(self, job: Job) -> list[list]:
        """Run a job on the calling thread; returns each request's reply frames."""
        if not self._inline_ready:
            self._inline_lane = self._prepare_inline()
        return self._replies(job, 0, self._inline_lane)

    def run_one(self, identity: bytes, request_id: Any, ts: Any, tensor: torch.Tensor, received_ns: int,
                decode_ns: int) -> list:
        """One request on the calling thread: its reply frames. `run_inline` of a one-request job, without
        building the job, on the CPU and while no profiling window is open (else through `run_inline`)."""
        if self._inline_lane is not None or not self._inline_ready or profiling.recording():
            req = PendingRequest(identity, request_id, ts, tensor, None, tensor.nbytes, received_ns, decode_ns)
            return self.run_inline(Job([req]))[0]
        return self._one(identity, request_id, ts, tensor, received_ns, decode_ns, 0)

    def _one(self, identity: bytes, request_id: Any, ts: Any, tensor: torch.Tensor, received_ns: int,
             decode_ns: int, worker: int) -> list:
        """`_replies` of a one-request job on the CPU, with no profiling window open: the same reply,
        with fewer steps on the way."""
        try:
            start_ns = monotonic_ns()
            out = self.runner(tensor)
            done_ns = monotonic_ns()
            # h2d 0: on the CPU that stage assembles a batch, and one request has none to assemble.
            return self._encoded(identity, request_id, ts, out, ServerTimes.wire(
                start_ns - received_ns, decode_ns, 0, done_ns - start_ns, 0, 0, out.shape[0], worker))
        except Exception as exc:  # keep serving, as _replies does
            log.exception("worker %d: inference failed", worker)
            err = ProtocolError(ErrorCode.INTERNAL, f"inference failed: {exc}", request_id, ts)
            return [identity, *codec.error_reply(err)]

    def _encoded(self, identity: bytes, request_id: Any, ts: Any, out: torch.Tensor, times: dict[str, int]) -> list:
        """A RESULT's frames; `times` is ServerTimes.wire's map, its encode_ns filled in here (and, with
        --metrics-port, observed by the answering thread's histograms)."""
        enc_start = monotonic_ns()
        desc, buf = codec.tensor_to_buffer(out)
        times["encode_ns"] = monotonic_ns() - enc_start
        if self.timings is not None:
            self.timings[times["worker"]].observe(ServerTimes(**times))
        return [identity, _RESULT_CONTROL, codec.pack(ResultHeader.wire(request_id, ts, [desc], times)), buf]

    def _prepare_inline(self) -> _CudaLane | None:
        self._inline_ready = True
        if self._threads_each:
            torch.set_num_threads(self._threads_each)
        lane = self._new_lane()
        try:
            self.warmup_s[0] = self._warm_up(0, lane)
        except Exception as exc:
            raise RuntimeError(f"warm-up failed: {exc}") from exc
        return lane

    def _new_lane(self) -> _CudaLane | None:
        device = self.runner.device
        return _CudaLane(device) if device.type == "cuda" else None

    def _warm_up(self, index: int, lane: _CudaLane | None) -> dict[str, float]:
        """Each warm-up input through the whole path (staging, copies, model, encoding) on this thread.

        On CUDA a shape runs twice, its replies held, so two output buffers are cached (a reply
        may still be sending when the next job finishes); CUDA-graph modes need a third call,
        the first replay, after the warm-up run and the capture.
        """
        cuda = self.runner.device.type == "cuda"
        calls = (3 if self.runner.cuda_graphs else 2) if cuda else 1
        first_s: dict[str, float] = {}
        for dtype, shape in self._warmup:
            x = torch.zeros(shape, dtype=dtype)  # on the host, as a request's frame arrives
            held = []
            for call in range(calls):
                req = PendingRequest(identity=b"warm-up", request_id=None, ts=None, tensor=x, frame=None,
                                     nbytes=x.nbytes, received_ns=time.monotonic_ns(), decode_ns=0)
                start = time.perf_counter()
                held.append(self.execute(Job([req]), index, lane))
                if call == 0:
                    first_s[shape_label((dtype, shape))] = time.perf_counter() - start
            del held
        return first_s

    def _replies(self, job: Job, index: int, lane: _CudaLane | None) -> list[list]:
        reqs = job.requests
        if len(reqs) == 1 and lane is None and not profiling.recording():
            r = reqs[0]
            return [self._one(r.identity, r.request_id, r.ts, r.tensor, r.received_ns, r.decode_ns, index)]
        try:
            if not profiling.recording():
                return self.execute(job, index, lane)
            with profiling.job_range():  # one range per forward pass while a profile window is open
                return self.execute(job, index, lane)
        except Exception as exc:  # keep serving: answer every request of the job
            log.exception("worker %d: inference failed", index)
            return [
                [r.identity, *codec.error_reply(ProtocolError(ErrorCode.INTERNAL, f"inference failed: {exc}",
                                                              r.request_id, r.ts))]
                for r in job.requests
            ]

    def _run(self, index: int) -> None:
        with torch.inference_mode():  # for the thread's life, not per call (ModelRunner)
            ready, lane = self._prepare_worker(index)
            while ready and (job := self.jobs.get()) is not None:
                replies = self._replies(job, index, lane)
                # Before the replies go: the I/O thread, woken by them, must see this worker free.
                with self._unfinished_lock:
                    self._unfinished -= 1
                self.replies.extend(zip([req.nbytes for req in job.requests], replies))
                os.eventfd_write(self.wake_fd, 1)

    def take_replies(self, limit: int) -> list[Reply]:
        """Up to `limit` finished replies, oldest first (the I/O thread's). If more are left, `wake_fd`
        stays readable, so a poll returns at once for them."""
        try:
            os.eventfd_read(self.wake_fd)  # before taking: a reply appended after this wakes the poll again
        except BlockingIOError:  # nothing signalled since the last read
            pass
        replies, taken = self.replies, []
        while replies and len(taken) < limit:
            taken.append(replies.popleft())
        if replies:
            os.eventfd_write(self.wake_fd, 1)
        return taken

    def _prepare_worker(self, index: int) -> tuple[bool, _CudaLane | None]:
        """This thread's threads, lane and warm-up; (False, None) when it cannot serve."""
        try:
            if self._threads_each:
                torch.set_num_threads(self._threads_each)  # this thread's own OpenMP team size
            lane = self._new_lane()
            self.warmup_s[index] = self._warm_up(index, lane)
            return True, lane
        except Exception as exc:
            log.exception("worker %d: warm-up failed", index)
            self._failures.append(f"worker {index}: {exc}")
            return False, None
        finally:
            self._ready[index].set()

    def execute(self, job: Job, worker: int, lane: _CudaLane | None) -> list[list]:
        start_ns = monotonic_ns()
        reqs = job.requests
        if lane is None:
            x = reqs[0].tensor if len(reqs) == 1 else torch.cat([r.tensor for r in reqs])
            stage_ns = monotonic_ns()
            host_out = self.runner(x)
            h2d_ns, compute_ns, d2h_ns = stage_ns - start_ns, monotonic_ns() - stage_ns, 0
        else:
            h2d_ns, compute_ns, d2h_ns, host_out = self._execute_cuda(reqs, lane)
        batch_rows = host_out.shape[0]
        outputs = host_out.split([r.tensor.shape[0] for r in reqs]) if len(reqs) > 1 else (host_out,)
        return [self._encoded(r.identity, r.request_id, r.ts, out_rows, ServerTimes.wire(
                    start_ns - r.received_ns, r.decode_ns, h2d_ns, compute_ns, d2h_ns, 0, batch_rows, worker))
                for r, out_rows in zip(reqs, outputs)]

    def _execute_cuda(self, reqs: list[PendingRequest], lane: _CudaLane) -> tuple[int, int, int, torch.Tensor]:
        host_start = time.monotonic_ns()
        if len(reqs) == 1 and reqs[0].pinned:
            src = reqs[0].tensor  # page-locked shared memory: the device copies straight from it
        else:
            src = lane.staged([r.tensor for r in reqs])  # pageable frames -> pinned, so the copy is a DMA
        host_copy_ns = time.monotonic_ns() - host_start
        start, copied, computed, done = lane.events
        stream = lane.stream
        with torch.cuda.stream(stream):
            start.record(stream)
            x_dev = src.to(self.runner.device, non_blocking=True)
            copied.record(stream)
            out = self.runner(x_dev)
            computed.record(stream)
            host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host_out.copy_(out, non_blocking=True)
            done.record(stream)
        done.synchronize()  # blocking-sync event: the thread sleeps until the stream gets here
        ms_to_ns = 1e6
        h2d_ns = host_copy_ns + int(start.elapsed_time(copied) * ms_to_ns)
        compute_ns = int(copied.elapsed_time(computed) * ms_to_ns)
        d2h_ns = int(computed.elapsed_time(done) * ms_to_ns)
        return h2d_ns, compute_ns, d2h_ns, host_out
