"""The server's I/O loop: the one thread that owns the ROUTER socket.

It receives and validates requests, answers HELLO/STATS/CONTROL and the
shared-memory requests itself (server/shm_service.py), hands INFER requests to
the worker pool (through the optional dynamic batcher), and forwards the
workers' finished replies from an inproc PULL socket to the clients. Every
malformed request gets an ERROR reply and the loop goes on.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
import uuid
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
from common.wire import NOBLOCK, recv_frames, send_frames
from server import status
from server.batching import Batcher
from server.config import ServerConfig
from server.runner import ModelRunner
from server.shm_service import ShmService
from server.workers import Job, PendingRequest, WorkerPool

log = logging.getLogger("infer.server")

POLL_MS = 50  # longest the loop sleeps before checking for a stop request
MAX_BURST = 256  # messages handled per socket per loop turn, so neither side starves
KNOWN_PEERS = 4096  # identities remembered for the DEAD announcement
DRAIN_TIMEOUT_S = 60.0


class Server:
    def __init__(self, config: ServerConfig, runner: ModelRunner, info: dict[str, Any]):
        self.config = config
        self.runner = runner
        self.limits = config.limits
        self.info = info
        self.instance = uuid.uuid4().hex
        self.counters = ServerCounters()
        self.inflight = 0
        self.inflight_bytes = 0
        self.inflight_peak = 0
        self.stopping = False
        self.reexec_config: ServerConfig | None = None
        self._stop_requested = threading.Event()
        self._peers: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._stats = status.ProcessStats(info.get("gpu_uuid"))
        # Shared memory needs a /dev/shm; on CUDA each region is page-locked once, for DMA.
        self.shm = ShmService(self.counters, pin=runner.device.type == "cuda") if SHM_DIR.is_dir() else None

        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        # Without ROUTER_MANDATORY a reply to a vanished client disappears silently;
        # with it (and non-blocking sends) we count it and move on.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        self.router.setsockopt(zmq.SNDHWM, 1000)
        self.router.setsockopt(zmq.RCVHWM, 1000)
        self.router.setsockopt(zmq.LINGER, 2000)
        self._authenticator = None
        if config.curve_dir is not None:
            from common.security import start_server_auth

            self._authenticator = start_server_auth(self.ctx, self.router, config.curve_dir)
        self.endpoints: list[str] = []
        for endpoint in config.bind:
            self.router.bind(endpoint)
            self.endpoints.append(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
        self.results = self.ctx.socket(zmq.PULL)
        results_endpoint = f"inproc://results-{self.instance}"
        self.results.bind(results_endpoint)
        self.pool = WorkerPool(runner, config.num_workers, self.ctx, results_endpoint)
        self.batcher = Batcher(config.max_batch_size, config.batch_timeout_us * 1000)

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

        Nothing else needs the thread, so it blocks in recv (as a bare ZeroMQ
        echo does) instead of polling, and every reply has gone out by the time
        the next request is read: nothing is ever in flight between turns.
        """
        self.router.setsockopt(zmq.RCVTIMEO, POLL_MS)  # wake up to notice a stop request
        while not self._stop_requested.is_set():
            if self.shm is not None:  # no poller here to watch clients' pidfds: check them now and then
                self.shm.reap_due(time.monotonic_ns())
            try:
                frames = recv_frames(self.router)
            except zmq.Again:
                continue
            self._on_request(frames)
        self._begin_drain()

    def _run_polling(self) -> None:
        """Workers or the batcher hold requests between turns: poll requests and results."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.results, zmq.POLLIN)
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
            if self.shm is not None and len(events) > (self.results in events) + (self.router in events):
                self.shm.reap_exited()  # a client's pidfd is readable: that process has exited
            if self.results in events:
                self._forward_results()
            if self.router in events:
                self._receive_requests()
            if self.batcher.enabled:
                for job in self.batcher.due(time.monotonic_ns()):
                    self._submit(job)

    def _begin_drain(self) -> None:
        log.info("stopping: finishing %d requests in flight, refusing new ones", self.inflight)
        self.stopping = True

    def _close(self) -> None:
        for identity in self._peers:  # tell every recent client we are gone
            try:
                self.router.send_multipart([identity, DEAD_FRAME], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.pool.stop()
        self._forward_results()  # anything the workers finished while stopping
        if self.shm is not None:
            self.shm.close()
        self.results.close(linger=0)
        self.router.close()  # linger: lets the last replies and DEAD frames leave
        if self._authenticator is not None:
            self._authenticator.stop()
        self.ctx.term()
        log.info(
            "stopped: %d requests answered, %d errors sent, %d replies dropped",
            self.counters.answered,
            self.counters.errors_sent,
            self.counters.replies_dropped,
        )

    def _poll_timeout_ms(self) -> int:
        deadline = self.batcher.next_deadline_ns() if self.batcher.enabled else None
        if deadline is None:
            return POLL_MS
        return max(0, min(POLL_MS, (deadline - time.monotonic_ns()) // 1_000_000))

    # -- sending ---------------------------------------------------------------

    def _send(self, frames: list) -> bool:
        try:
            send_frames(self.router, frames, NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # peer gone (EHOSTUNREACH) or not reading (EAGAIN)
            self.counters.replies_dropped += 1
            log.debug("reply dropped: %s", exc)
            if exc.errno == errno.EHOSTUNREACH and self.shm is not None:
                identity = frames[0]
                self.shm.peer_unreachable(identity if isinstance(identity, bytes) else identity.bytes)
            return False

    def _send_error(self, identity: bytes, err: ProtocolError) -> None:
        self.counters.errors_sent += 1
        self.counters.errors[err.code] += 1
        self._send([identity, *codec.error_reply(err)])

    def _forward_results(self) -> None:
        for _ in range(MAX_BURST):
            try:
                frames = recv_frames(self.results, NOBLOCK)
            except zmq.Again:
                return
            # Workers prefix each reply with the request's input size, for the byte cap.
            self._finish(int.from_bytes(frames[0].bytes, "little"), frames[1:])

    def _finish(self, nbytes: int, frames: list) -> None:
        """Account for an answered request and send its reply ([identity, control, ...])."""
        self.inflight_bytes -= nbytes
        self.inflight -= 1
        msg_type = memoryview(frames[1])[1]  # a zmq.Frame from a worker, bytes when run inline
        if msg_type == MsgType.RESULT:
            self.counters.answered += 1
        else:  # workers answer only with RESULT or, when the model failed, INTERNAL
            self.counters.errors_sent += 1
            self.counters.errors[ErrorCode.INTERNAL] += 1
        self._send(frames)

    def _submit(self, job: Job) -> None:
        if not self.pool.inline:
            self.pool.submit(job)
            return
        for req, frames in zip(job.requests, self.pool.run_inline(job)):
            self._finish(req.nbytes, frames)

    # -- receiving -------------------------------------------------------------

    def _receive_requests(self) -> None:
        for _ in range(MAX_BURST):
            try:
                frames = recv_frames(self.router, NOBLOCK)
            except zmq.Again:
                return
            self._on_request(frames)

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        received_ns = time.monotonic_ns()
        identity = frames[0].bytes
        self._remember(identity)
        self.counters.received += 1
        try:
            self._handle(identity, frames[1:], received_ns)
        except ProtocolError as err:
            self._send_error(identity, err)
        except Exception as exc:  # a bug must cost one request, not the server
            log.exception("internal error handling a request")
            self._send_error(identity, ProtocolError(ErrorCode.INTERNAL, f"internal error: {exc}"))

    def _remember(self, identity: bytes) -> None:
        self._peers[identity] = None
        self._peers.move_to_end(identity)
        if len(self._peers) > KNOWN_PEERS:
            self._peers.popitem(last=False)

    def _handle(self, identity: bytes, frames: list[zmq.Frame], received_ns: int) -> None:
        msg_type, header, request_id = codec.parse_request(frames, self.limits)
        try:
            if msg_type == MsgType.INFER:
                self._handle_infer(identity, header, frames[2:], received_ns)
            elif len(frames) > 2:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{msg_type.name} carries no tensor frames")
            elif msg_type == MsgType.HELLO:
                info = InfoHeader.from_fields(request_id, self.describe())
                self._send([identity, *codec.encode(MsgType.INFO, info.to_wire())])
            elif msg_type == MsgType.STATS:
                self._send([identity, *codec.encode(MsgType.STATS_REPLY, self.stats(request_id).to_wire())])
            elif msg_type == MsgType.CONTROL:
                self._handle_control(identity, header)
            else:
                self._send([identity, *self._handle_shm(identity, msg_type, header)])
        except ProtocolError as err:
            err.request_id = request_id
            raise

    def _handle_infer(self, identity: bytes, header: dict, frames: list[zmq.Frame], received_ns: int) -> None:
        self.counters.infer_received += 1
        request = InferHeader.from_wire(header, self.limits)
        try:
            self._accept_infer(identity, request, frames, received_ns)
        except ProtocolError as err:
            err.ts = request.ts
            raise

    def _accept_infer(self, identity: bytes, request: InferHeader, frames: list[zmq.Frame], received_ns: int) -> None:
        if self.stopping:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
        nbytes = sum(len(f) for f in frames)
        if self.inflight and (
            self.inflight >= self.config.max_inflight
            or self.inflight_bytes + nbytes > self.config.max_inflight_bytes
        ):
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                f"{self.inflight} requests ({self.inflight_bytes} bytes) in flight; "
                f"limits {self.config.max_inflight} requests, {self.config.max_inflight_bytes} bytes",
            )
        resolver = self.shm.resolver(identity) if self.shm is not None else None
        tensors = codec.decode_tensors(request.tensors, [f.buffer for f in frames], self.limits, resolver)
        if len(tensors) != 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"INFER takes exactly 1 input tensor, got {len(tensors)}")
        codec.check_image_batch(tensors[0], self.limits)
        in_shm = resolver is not None and resolver.used
        self.counters.shm_infer_received += in_shm
        decoded_ns = time.monotonic_ns()
        req = PendingRequest(
            identity=identity,
            request_id=request.id,
            ts=request.ts,
            tensor=tensors[0],
            frame=frames[0] if frames else None,  # an input in shared memory: its tensor holds the mapping
            nbytes=nbytes,
            received_ns=decoded_ns,
            decode_ns=decoded_ns - received_ns,
            pinned=in_shm and resolver.pinned,
        )
        self.inflight += 1
        self.inflight_bytes += nbytes
        self.inflight_peak = max(self.inflight_peak, self.inflight)
        jobs = self.batcher.add(req, decoded_ns) if self.batcher.enabled else [Job([req])]
        for job in jobs:
            self._submit(job)

    def _handle_shm(self, identity: bytes, msg_type: MsgType, header: dict) -> list:
        if self.shm is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this server offers no shared memory (no /dev/shm)")
        if msg_type == MsgType.SHM_REGISTER:
            return self.shm.register(identity, header, self.limits)
        return self.shm.unregister(identity, header, self.limits)

    def _handle_control(self, identity: bytes, header: dict) -> None:
        # Without CURVE, anyone who can reach a non-loopback port could stop or
        # reconfigure the server; with CURVE every peer was authenticated by ZAP.
        if not (self.config.loopback_only or self.config.curve_dir is not None):
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "control requests need CURVE authentication on a non-loopback bind"
            )
        control = ControlHeader.from_wire(header, self.limits)
        if control.action == "reload":
            self.reexec_config = self._reloaded_config(control.settings)
        # `instance` is this process's: after a reload, HELLO until it changes.
        reply = ControlReplyHeader(control.id, accepted=True, instance=self.instance)
        self._send([identity, *codec.encode(MsgType.CONTROL_REPLY, reply.to_wire())])
        self.request_stop()

    def _reloaded_config(self, settings: dict) -> ServerConfig:
        """The configuration to re-exec with, checked as the command line checks it, before anything is accepted.

        An invalid setting is answered BAD_REQUEST naming it, and this server goes on unchanged.
        """
        # Re-bind what was actually bound: a wildcard port (tcp://host:*) would
        # otherwise come back on another port and clients could not follow.
        base = self.config.replace(bind=tuple(self.endpoints))
        try:
            return ServerConfig.from_settings(base, settings)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"reload refused: {exc}") from None

    # -- descriptions --------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The INFO reply body (all but the request id): what this server is and how long it took to start.

        `config` is the whole configuration by option name, so a result records every setting it ran with.
        """
        info = status.describe(self)
        info.config = self.config.to_json()
        return info.to_wire()

    def stats(self, request_id: Any = None) -> StatsReplyHeader:
        """The STATS reply: counters, process CPU/memory, and the device's GPU figures."""
        return self._stats.reply(self, request_id)
