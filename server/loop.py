"""The server's I/O loop: the one thread that owns the ROUTER socket.

It receives and validates requests, answers HELLO/STATS/CONTROL and the shared-memory requests
itself (server/shm_service.py), hands INFER requests to the worker pool (through the optional
dynamic batcher, whose batches keep growing while every worker is busy), and sends the replies
the workers leave in the pool (server/workers.py). A malformed request gets an ERROR reply.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from time import monotonic_ns
from typing import Any

import torch
import zmq

from common import codec
from common.protocol import (
    DEAD_FRAME,
    ControlHeader,
    ControlReplyHeader,
    ErrorCode,
    InferHeader,
    InfoHeader,
    MsgType,
    ProtocolError,
    ServerCounters,
    StatsReplyHeader,
)
from common.shm import SHM_DIR
from common.wire import NOBLOCK, Readable, recv_frames
from server import reload, status
from server.backpressure import ConnectionMonitor, ReplySender, configure_router
from server.batching import Batcher
from server.config import ServerConfig
from server.inputs import CheckedInputs
from server.models.spec import InputSpec
from server.profiling import Profiler
from server.runner import ModelRunner
from server.shm_service import ShmService, shm_request
from server.workers import Job, PendingRequest, WorkerPool

log = logging.getLogger("infer.server")
_RESULT_CONTROL = codec.control_frame(MsgType.RESULT)

POLL_MS = 50  # longest the loop sleeps before checking for a stop request
MAX_BURST = 256  # messages handled per socket per loop turn, so neither side starves
KNOWN_PEERS = 4096  # identities remembered for the DEAD announcement
DRAIN_TIMEOUT_S = 60.0
CHORES_NS = 50_000_000  # how often the loop reads the socket monitor and releases written-out replies


class Server:
    def __init__(self, config: ServerConfig, runner: ModelRunner, info: dict[str, Any]):
        self.config = config
        self.runner = runner
        self.limits = config.limits
        self.info = info
        self.input_spec = InputSpec.from_info(info)  # what INFER inputs the model takes
        self.instance = uuid.uuid4().hex
        self.counters = ServerCounters()
        self.inflight = 0
        self.inflight_bytes = 0
        self.inflight_peak = 0
        self.stopping = False
        self.reexec_config: ServerConfig | None = None
        self._chores_due_ns = 0
        self._stop_requested = threading.Event()
        self._peers: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._last_peer = b""
        self._checked_inputs = CheckedInputs()  # server/inputs.py: looked up, not checked again
        self._stats = status.ProcessStats(info.get("gpu_uuid"))
        self.profiler = Profiler(runner.device, self.instance)
        # Shared memory needs a /dev/shm; on CUDA each region is page-locked once, for DMA.
        self.shm = ShmService(self.counters, pin=runner.device.type == "cuda") if SHM_DIR.is_dir() else None

        self.ctx = zmq.Context(io_threads=config.io_threads)
        self.router = configure_router(self.ctx.socket(zmq.ROUTER), self.limits.max_frame_bytes, config.peer_timeout_s)
        self.monitor = ConnectionMonitor(self.ctx, self.router, self.counters, self.instance)
        self.sender = ReplySender(self.router, self.counters, config.max_queued_reply_bytes,
                                  self.shm.peer_unreachable if self.shm is not None else None)
        self._authenticator = None
        if config.curve_dir is not None:
            from common.security import start_server_auth  # zmq.auth's thread, only when asked
            self._authenticator = start_server_auth(self.ctx, self.router, config.curve_dir)
        self.endpoints: list[str] = []
        for endpoint in config.bind:
            self.router.bind(endpoint)
            self.endpoints.append(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
        self._requests_waiting = Readable(self.router)
        self.pool = WorkerPool(runner, config.num_workers)
        self.batcher = Batcher(config.max_batch_size, config.batch_timeout_us * 1000)
        self._batching = self.batcher.enabled
        self._answers_inline = self.pool.inline and not self._batching

    # -- lifecycle -----------------------------------------------------------

    def request_stop(self) -> None:
        """Safe from a signal handler or another thread: the loop notices within POLL_MS."""
        self._stop_requested.set()

    def run(self) -> ServerConfig | None:
        """Serve until stopped. Returns a new configuration when a reload was requested."""
        self.pool.start()
        try:
            # Decoded requests and the model's outputs are inference tensors: entered
            # once here rather than per call, which is a measurable cost at batch 1.
            with torch.inference_mode():
                if self.pool.inline and not self.batcher.enabled:
                    self._run_inline()
                else:
                    self._run_polling()
        finally:
            self._close()
        return self.reexec_config

    def _run_inline(self) -> None:
        """No workers, no batcher: answer each request before taking the next.

        Nothing else needs the thread, so it blocks in recv (as a bare ZeroMQ echo does) instead of polling,
        and every reply has gone out by the time the next request is read: nothing is in flight between turns.
        """
        self.router.setsockopt(zmq.RCVTIMEO, POLL_MS)  # wake up to notice a stop request
        while not self._stop_requested.is_set():
            now = time.monotonic_ns()
            if now >= self._chores_due_ns:
                self._chores(now, polled=False)
            try:
                frames = recv_frames(self.router)
            except zmq.Again:
                continue
            self._on_request(frames)
        self._begin_drain()

    def _run_polling(self) -> None:
        """Workers or the batcher hold requests between turns: poll requests and results."""
        poller, monitor, results = zmq.Poller(), self.monitor.socket, self.pool.wake_fd
        for sock in (self.router, results, monitor):
            poller.register(sock, zmq.POLLIN)
        drain_deadline = None
        while True:
            if self._stop_requested.is_set() and not self.stopping:
                self._begin_drain()
            if self.stopping:
                drain_deadline = drain_deadline or time.monotonic() + DRAIN_TIMEOUT_S
                for job in self.batcher.due(0, flush_all=True):
                    self._submit(job)
                if self.inflight == 0:
                    break
                if time.monotonic() > drain_deadline:
                    log.error("drain timed out with %d requests in flight", self.inflight)
                    break
            if self.shm is not None:
                self.shm.sync_poller(poller)
            events = dict(poller.poll(self._poll_timeout_ms()))
            ours_ready = (results in events) + (self.router in events) + (monitor in events)
            if self.shm is not None and len(events) > ours_ready:
                self.shm.reap_exited()  # a client's pidfd is readable: that process has exited
            if monitor in events:
                self.monitor.drain()
            if results in events:
                self._forward_results()
            if self.router in events:
                self._receive_requests()
            now = time.monotonic_ns()
            if self.batcher.enabled and not self.pool.saturated:
                for job in self.batcher.due(now):
                    self._submit(job)
            if now >= self._chores_due_ns:
                self._chores(now, polled=True)

    def _chores(self, now: int, polled: bool) -> None:
        """Now and then: forget replies written out; without a poller, also what the poller watches."""
        self._chores_due_ns = now + CHORES_NS
        self.sender.queues.sweep()
        if not polled:
            self.monitor.drain()
            if self.shm is not None:  # no poller to watch clients' pidfds: check them now and then
                self.shm.reap_due(now)

    def _begin_drain(self) -> None:
        if not self.stopping:
            log.info("stopping: finishing %d requests in flight, refusing new ones", self.inflight)
        self.stopping = True

    def _close(self) -> None:
        for identity in self._peers:  # tell every recent client we are gone
            with contextlib.suppress(zmq.ZMQError):
                self.router.send_multipart([identity, DEAD_FRAME], flags=zmq.NOBLOCK)
        self.pool.stop()
        self.profiler.close()
        while self.pool.replies:  # anything the workers finished while stopping
            self._forward_results()
        self.pool.close()
        if self.shm is not None:
            self.shm.close()
        self.monitor.close()
        self.router.close()  # linger: lets the last replies and DEAD frames leave
        if self._authenticator is not None:
            self._authenticator.stop()
        self.ctx.term()
        log.info("stopped: %d requests answered, %d errors sent, %d replies dropped",
                 self.counters.answered, self.counters.errors_sent, self.counters.replies_dropped)

    def _poll_timeout_ms(self) -> int:
        # With every worker busy a due batch keeps growing, and a worker's reply wakes the poll.
        deadline = self.batcher.next_deadline_ns() if self._batching and not self.pool.saturated else None
        if deadline is None:
            return POLL_MS
        return max(0, min(POLL_MS, (deadline - time.monotonic_ns()) // 1_000_000))

    # -- sending ---------------------------------------------------------------

    def _send_error(self, identity: bytes, err: ProtocolError, infer: bool) -> None:
        """ERROR for one request; `infer`: it answers an INFER counted in infer_received."""
        counters = self.counters
        counters.errors_sent += 1
        counters.errors[err.code] += 1
        counters.infer_errors += infer
        self.sender.send([identity, *codec.error_reply(err)])

    def _reply(self, identity: bytes, msg_type: MsgType, build: Any) -> None:
        """A reply other than RESULT and ERROR, with the header `build()` returns."""
        self.counters.replies_other += 1  # before building: a STATS snapshot counts its own reply
        try:
            frames = codec.encode(msg_type, build())
        except BaseException:
            self.counters.replies_other -= 1
            raise
        self.sender.send([identity, *frames])

    def _forward_results(self) -> None:
        """The replies the workers have finished, MAX_BURST at most, each with its request's input size."""
        for nbytes, frames in self.pool.take_replies(MAX_BURST):
            self._finish(nbytes, frames)

    def _finish(self, nbytes: int, frames: list) -> None:
        """Account for an answered request and send its reply ([identity, control, ...])."""
        self.inflight_bytes -= nbytes
        self.inflight -= 1
        if frames[1] == _RESULT_CONTROL:
            self.counters.answered += 1
        else:  # workers answer only with RESULT or, when the model failed, INTERNAL
            self.counters.errors_sent += 1
            self.counters.errors[ErrorCode.INTERNAL] += 1
            self.counters.infer_errors += 1
        self.sender.send(frames)

    def _submit(self, job: Job) -> None:
        if not self.pool.inline:
            self.pool.submit(job)
            return
        for req, frames in zip(job.requests, self.pool.run_inline(job)):
            self._finish(req.nbytes, frames)

    # -- receiving -------------------------------------------------------------

    def _receive_requests(self) -> None:
        """The requests waiting (the first is: the poller said so), MAX_BURST at most."""
        for _ in range(MAX_BURST):
            self._on_request(recv_frames(self.router, NOBLOCK))
            if not self._requests_waiting():
                return

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        received_ns = monotonic_ns()
        identity = frames[0].bytes
        if identity != self._last_peer:  # the peer of the last request is the most recent already
            self._remember(identity)
        counters = self.counters
        counters.received += 1
        infers = counters.infer_received  # changed by _handle when this is an INFER with a valid prefix
        try:
            self._handle(identity, frames[1:], received_ns)
        except ProtocolError as err:
            self._send_error(identity, err, counters.infer_received != infers)
        except Exception as exc:  # a bug must cost one request, not the server
            log.exception("internal error handling a request")
            err = ProtocolError(ErrorCode.INTERNAL, f"internal error: {exc}")
            self._send_error(identity, err, counters.infer_received != infers)

    def _remember(self, identity: bytes) -> None:
        self._last_peer = identity
        self._peers[identity] = None
        self._peers.move_to_end(identity)
        if len(self._peers) > KNOWN_PEERS:
            self._peers.popitem(last=False)

    def _handle(self, identity: bytes, frames: list[zmq.Frame], received_ns: int) -> None:
        msg_type, header, request_id = codec.parse_request(frames, self.limits)
        try:
            if msg_type == MsgType.INFER:
                self.counters.infer_received += 1
                request = InferHeader.from_wire(header, self.limits, request_id)
                try:
                    self._accept_infer(identity, request, frames[2:], received_ns)
                except ProtocolError as err:
                    err.ts = request.ts
                    raise
            elif len(frames) > 2:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{msg_type.name} carries no tensor frames")
            elif msg_type == MsgType.HELLO:
                self._reply(identity, MsgType.INFO, lambda: InfoHeader.from_fields(request_id, self.describe()).to_wire())
            elif msg_type == MsgType.STATS:
                self._reply(identity, MsgType.STATS_REPLY, lambda: self.stats(request_id).to_wire())
            elif msg_type == MsgType.CONTROL:
                self._handle_control(identity, header)
            else:
                frames = shm_request(self.shm, identity, msg_type, header, self.limits)
                self.counters.replies_other += 1
                self.sender.send([identity, *frames])
        except ProtocolError as err:
            err.echo(request_id, header, self.limits)
            raise

    def _accept_infer(self, identity: bytes, request: InferHeader, frames: list[zmq.Frame], received_ns: int) -> None:
        if self.stopping:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
        nbytes = len(frames[0]) if len(frames) == 1 else sum(len(f) for f in frames)
        inflight = self.inflight
        if inflight and (
            inflight >= self.config.max_inflight or self.inflight_bytes + nbytes > self.config.max_inflight_bytes
        ):
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                f"{self.inflight} requests ({self.inflight_bytes} bytes) in flight; "
                f"limits {self.config.max_inflight} requests, {self.config.max_inflight_bytes} bytes",
            )
        tensor = self._checked_inputs.tensor(request.tensors, frames)
        pinned = False
        if tensor is None:
            tensor, pinned = self._decode_input(identity, request.tensors, frames)
        decoded_ns = monotonic_ns()
        self.inflight = inflight = inflight + 1
        self.inflight_bytes += nbytes
        if inflight > self.inflight_peak:
            self.inflight_peak = inflight
        if self._answers_inline:  # no workers, no batcher: answered now, with no job built around it
            self._finish(nbytes, self.pool.run_one(identity, request.id, request.ts, tensor, decoded_ns,
                                                   decoded_ns - received_ns))
            return
        req = PendingRequest(identity, request.id, request.ts, tensor,
                             frames[0] if frames else None,  # an input in shared memory: its tensor holds the mapping
                             nbytes, decoded_ns, decoded_ns - received_ns, pinned)
        if self.batcher.enabled:
            for job in self.batcher.add(req, decoded_ns):
                self._submit(job)
        else:
            self._submit(Job([req]))

    def _decode_input(self, identity: bytes, descs: object, frames: list[zmq.Frame]) -> tuple[torch.Tensor, bool]:
        """The one input tensor (in a frame or in shared memory), every check applied; (tensor, pinned)."""
        resolver = self.shm.resolver(identity) if self.shm is not None else None
        tensors = codec.decode_tensors(descs, [f.buffer for f in frames], self.limits, resolver)
        if len(tensors) != 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"INFER takes exactly 1 input tensor, got {len(tensors)}")
        self.input_spec.check(tensors[0], self.limits)
        if resolver is not None and resolver.used:
            self.counters.shm_infer_received += 1
            return tensors[0], resolver.pinned
        self._checked_inputs.remember(descs[0], len(frames[0]))  # one tensor in the one frame: it passed
        return tensors[0], False

    def _handle_control(self, identity: bytes, header: dict) -> None:
        # Without CURVE, anyone who can reach a non-loopback port could stop or
        # reconfigure the server; with CURVE every peer was authenticated by ZAP.
        if not (self.config.loopback_only or self.config.curve_dir is not None):
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "control requests need CURVE authentication on a non-loopback bind"
            )
        control = ControlHeader.from_wire(header, self.limits)
        if control.action in ("profile_start", "profile_stop"):  # the server goes on serving
            trace = self.profiler.start(control.dir) if control.action == "profile_start" else self.profiler.stop()
            self._reply(identity, MsgType.CONTROL_REPLY, ControlReplyHeader(control.id, True, self.instance, trace).to_wire)
            return
        if control.action == "reload":  # checked now; if the new process cannot start, this one's settings return
            self.reexec_config = reload.request(self.config, self.endpoints, control.settings, self.instance)
        # `instance` is this process's: after a reload, HELLO until it changes.
        reply = ControlReplyHeader(control.id, accepted=True, instance=self.instance)
        self._reply(identity, MsgType.CONTROL_REPLY, reply.to_wire)
        self.request_stop()
        self._begin_drain()  # now: an INFER read later in this same burst is already refused

    # -- descriptions --------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The INFO reply body (all but the request id): what this server is, how it runs and how long it took to start."""
        return status.describe(self).to_wire()

    def stats(self, request_id: Any = None) -> StatsReplyHeader:
        """The STATS reply: counters, process CPU/memory, and the device's GPU figures."""
        self.monitor.drain()  # connections up to now
        self.sender.settle()  # time blocked up to now
        return self._stats.reply(self, request_id)
