"""The client's measurement I/O thread: send on schedule, timestamp replies, detect lost servers.

The counterpart of server/loop.py: one thread owns every measurement socket.
Per reply it only matches the reply to its request and notes when it arrived;
each loop turn then hands what it received to the metrics thread
(`client.metrics.Recorder`) as one list, after the sends those replies freed
have gone out.

Sends, losses and recoveries are this thread's own state (`Link`); nothing
else writes them, and the result reads them once the loop has ended.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic_ns

import zmq

from client.config import ClientConfig
from client.inputs import FrameInputs, InputSource, open_inputs
from client.loadgen import InputPool, Pacer
from client.metrics import Completion, Inbox, SendingStarted, SendingStopped
from client.transport import Backend
from common import codec
from common.protocol import HelloHeader, MsgType, ProtocolError, readable_id
from common.wire import NOBLOCK, recv_frames, send_frames

log = logging.getLogger("infer.client")

POLL_CAP_MS = 100  # longest the loop waits before re-checking timeouts and stop flags
CHECK_NS = 10_000_000  # how often the loop checks for servers lost (timeouts) or back (probes)
HAND_OVER_NS = 2_000_000  # replies go to the metrics thread at least this often...
HAND_OVER_MAX = 32  # ...or once this many are waiting
SPIN_NS = 1_000_000  # below this, wait for a scheduled send by polling without sleeping
SEND_BURST = 256  # most sends per loop turn before replies are read and the deadline checked again
PROBE_INTERVAL_NS = 200_000_000  # HELLO probes to a lost server, with --reconnect-timeout
PROBE_ID = "probe"
_INFO_CONTROL = codec.control_frame(MsgType.INFO)
# Replies' control frames (this protocol version's), looked up instead of parsed.
_REPLY_TYPES = {codec.control_frame(t): t for t in MsgType}

# Called with (backend index, alive) when a server is lost or comes back.
LinkListener = Callable[[int, bool], None]


@dataclass(eq=False)
class Link:
    """One server as the I/O thread sees it."""

    backend: Backend
    inflight: int = 0
    alive: bool = True
    last_progress_ns: int = 0  # last send to an idle server, or last reply
    down_since_ns: int | None = None  # lost, and being probed (--reconnect-timeout)
    last_probe_ns: int = 0
    sent: int = 0
    lost: int = 0  # requests in flight when the server was declared lost
    lost_at_s: float | None = None  # since the first measured send (last outage)
    lost_reason: str = ""
    recovery_s: float | None = None  # lost -> answering again (last outage)
    recoveries: int = 0

    @property
    def index(self) -> int:
        return self.backend.index


class MeasureLoop:
    """The measured phase: send on the pacer's schedule, receive, detect lost servers."""

    def __init__(
        self,
        config: ClientConfig,
        backends: list[Backend],
        pool: InputPool,
        hand_to: queue.SimpleQueue[Inbox],
        stop: threading.Event,
        on_link: LinkListener | None = None,
        inputs: InputSource | None = None,
    ):
        self.config = config
        self.links = [Link(b) for b in backends]
        self._by_sock = {link.backend.sock: link for link in self.links}
        self._hand_to = hand_to
        self.stop = stop
        self._on_link = on_link
        self.pacer = Pacer.from_config(config)
        # How the batches travel: a source the caller gives (and closes), else frames, or with
        # --transport shm a shared-memory source that `run` sets up and tears down around the measurement.
        self._pool = pool
        self._given_inputs = inputs
        self._inputs: InputSource = inputs if inputs is not None else FrameInputs(pool)
        self._tracks_inputs = True  # whether the input source needs `ready` and `done` (frames do not)
        self.pending: dict[int, Link] = {}  # request id -> the server it went to
        self._received: list[Completion] = []  # replies not yet handed to the metrics thread
        self._poller = zmq.Poller()
        for link in self.links:
            self._poller.register(link.backend.sock, zmq.POLLIN)
        self.sent = 0
        self.start_ns = 0
        self.last_send_ns = 0
        self.last_scheduled_ns = 0
        self.send_end_ns: int | None = None
        self._rr = 0
        self._limit = config.num_iters if config.num_iters is not None else float("inf")
        self._checks_due_ns = 0
        self._handed_ns = 0
        self._rcvtimeo: tuple[zmq.Socket | None, int] = (None, -1)  # the socket last given an RCVTIMEO, and its ms

    @property
    def lost(self) -> int:
        return sum(link.lost for link in self.links)

    @property
    def complete(self) -> bool:
        """Every request answered and every server still up."""
        return self.lost == 0 and all(link.alive for link in self.links)

    def run(self) -> None:
        """The measured phase; with --transport shm, each server's region registered first and released after."""
        try:
            if self._given_inputs is not None or self.config.transport != "shm":
                self._measure()
                return
            backends = [link.backend for link in self.links]
            self._inputs = open_inputs(self.config, backends, [b.info or {} for b in backends], self._pool)
            try:
                self._measure()
            finally:
                self._inputs.close()
        finally:
            self._restore_receive_timeouts()

    def _restore_receive_timeouts(self) -> None:
        """The sockets wait in a receive without end again, as the rest of the client expects."""
        if self._rcvtimeo[0] is None:
            return
        for link in self.links:
            with contextlib.suppress(zmq.ZMQError):
                link.backend.sock.setsockopt(zmq.RCVTIMEO, -1)
        self._rcvtimeo = (None, -1)

    def _measure(self) -> None:
        cfg = self.config
        self._tracks_inputs = not isinstance(self._inputs, FrameInputs)
        self.start_ns = now = time.monotonic_ns()
        self._hand_to.put(SendingStarted(now))
        self.pacer.start(now)
        send_deadline = now + int(cfg.duration_s * 1e9) if cfg.duration_s else None
        sending = True
        while True:
            now = monotonic_ns()
            if sending and (self.stop.is_set() or self._sent_all() or (send_deadline and now >= send_deadline)):
                sending = False
            waiting_for_server = False
            if sending:
                sending, waiting_for_server, now = self._send_due(now)
            self._hand_over(now, every=not sending)
            if not sending and self.send_end_ns is None:
                self.send_end_ns = now
                self._hand_to.put(SendingStopped(now))
            if not sending and not self.pending:
                break
            wait_ns = self.pacer.wait_ns(now) if sending and not waiting_for_server else None
            timeout_ms = _poll_timeout_ms(wait_ns)
            if self._received:  # wake up in time to hand them over
                timeout_ms = min(timeout_ms, max(0, self._handed_ns + HAND_OVER_NS - now) // 1_000_000 + 1)
            watched = self._poller.sockets
            if timeout_ms and len(watched) == 1:  # the common case: one server, and time to wait
                sock = watched[0][0]
                frames = self._recv_within(sock, timeout_ms)
                if frames is not None:
                    self._receive(self._by_sock[sock], frames)
            else:
                for sock, _ in self._poller.poll(timeout_ms):
                    self._receive(self._by_sock[sock], recv_frames(sock, NOBLOCK))
            if now >= self._checks_due_ns:  # timeouts and probes are in seconds: now and then is enough
                self._checks_due_ns = now + CHECK_NS
                self._check_timeouts()
                self._probe_lost()

    def _sent_all(self) -> bool:
        return self.sent >= self._limit

    def _send_due(self, now: int) -> tuple[bool, bool, int]:
        """Send what the schedule allows by now, at most SEND_BURST: (still sending, waiting for a server, now).

        The cap hands the turn back to the loop, which receives replies and checks the stop flag and the
        deadline: an open-loop schedule the client cannot keep up with must not keep it sending forever."""
        for _ in range(SEND_BURST):
            scheduled = self.pacer.next_due_ns(now, len(self.pending))
            if scheduled is None:
                return True, False, now
            link = self._choose()
            if link is None:
                # Every server is down: wait for one that is being probed, else stop.
                return any(x.down_since_ns is not None for x in self.links), True, now
            if self._tracks_inputs and not self._inputs.ready(link.index):
                return True, True, now  # no free shared-memory slot: a reply frees one
            self._send(link, scheduled)
            self.pacer.sent()
            now = monotonic_ns()
            if self._sent_all():
                return False, False, now
        return True, False, now

    def _choose(self) -> Link | None:
        """The live server with the fewest requests in flight (round-robin among ties)."""
        if len(self.links) == 1:
            link = self.links[0]
            return link if link.alive else None
        live = [link for link in self.links if link.alive]
        if not live:
            return None
        self._rr += 1
        fewest = min(link.inflight for link in live)
        ties = [link for link in live if link.inflight == fewest]
        return ties[self._rr % len(ties)]

    def _send(self, link: Link, scheduled_ns: int) -> None:
        request_id = self.sent
        control, header, tensor_frames = self._inputs.take(link.index, request_id)
        sent_ns = monotonic_ns()
        header.id = request_id
        header.ts = [scheduled_ns, sent_ns]
        send_frames(link.backend.sock, [control, codec.pack(header.to_wire()), *tensor_frames])
        if link.inflight == 0:
            link.last_progress_ns = sent_ns
        link.inflight += 1
        link.sent += 1
        self.pending[request_id] = link
        self.sent += 1
        self.last_send_ns = sent_ns
        self.last_scheduled_ns = scheduled_ns

    def _recv_within(self, sock: zmq.Socket, timeout_ms: int) -> list[zmq.Frame] | None:
        """The next message on `sock`, or None after `timeout_ms`.

        Waits in libzmq's own receive, as the bare client does: with one socket to watch, a poll and
        then a receive cost the I/O thread 2-4 µs more a message at 8 in flight (docs/performance.md).
        """
        if (sock, timeout_ms) != self._rcvtimeo:
            sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = (sock, timeout_ms)
        try:
            return recv_frames(sock)
        except zmq.Again:
            return None

    def _receive(self, link: Link, frames: list[zmq.Frame]) -> None:
        """One reply, just received from the link's socket.

        One a turn, not every reply waiting: the turn sends the request it frees at once, and
        finding out whether another is waiting (a poll, or the zmq.Again of a receive) would cost a
        turn's worth itself when, as mostly, none is (98% of turns at 8 in flight found one).
        """
        recv_ns = monotonic_ns()
        control = frames[0].bytes
        if not link.alive:
            self._maybe_recovered(link, control, frames, recv_ns)
            return
        msg_type = _REPLY_TYPES.get(control)
        if msg_type == MsgType.DEAD or (msg_type is None and len(control) == 2 and control[1] == MsgType.DEAD):
            self._lose(link, "server announced it is shutting down (DEAD)")
            return
        try:
            if msg_type is None:  # another version's control frame: the type byte is still read
                msg_type = MsgType(control[1]) if len(control) == 2 else None
            header = codec.unpack_reply(frames[1]) if len(frames) > 1 else {}
        except (ValueError, ProtocolError) as exc:
            log.warning("malformed reply from %s ignored: %s", link.backend.endpoint, exc)
            return
        request_id = header.get("id")
        if type(request_id) is not int:  # ours are; anything else as any reader of an id takes it
            request_id = readable_id(header)
        if self.pending.pop(request_id, None) is None:
            return  # a reply to an earlier (warm-up or lost) request
        if self._tracks_inputs:
            self._inputs.done(request_id)
        link.inflight -= 1
        link.last_progress_ns = recv_ns
        self._received.append(Completion(link.index, msg_type, header, recv_ns))

    def _hand_over(self, now_ns: int, every: bool = False) -> None:
        """Pass the replies received to the metrics thread, once the sends they freed are out: every
        HAND_OVER_NS or HAND_OVER_MAX replies (`every`: whatever there is).

        Handing them over after sending lets the metrics thread's bookkeeping run
        while the next requests are in flight instead of delaying them. Handing over
        a few at a time wakes that thread, and has it take the GIL, once for all of
        them: at batch 1 a wake-up per reply costs the client more than the
        bookkeeping of the reply does (docs/performance.md).
        """
        received = self._received
        if received and (every or len(received) >= HAND_OVER_MAX or now_ns - self._handed_ns >= HAND_OVER_NS):
            self._hand_to.put(received)
            self._received = []
            self._handed_ns = now_ns

    def _check_timeouts(self) -> None:
        now = time.monotonic_ns()
        limit = int(self.config.timeout_s * 1e9)
        for link in self.links:
            if link.alive and link.inflight and now - link.last_progress_ns > limit:
                self._lose(link, f"no reply for {self.config.timeout_s:g} s")

    def _lose(self, link: Link, reason: str) -> None:
        link.alive = False
        if self.config.reconnect_timeout_s:
            # Keep listening: ZeroMQ reconnects by itself if a server comes back on
            # the endpoint, and _probe_lost asks it whether it has.
            # The outage is counted from the server's last sign of life.
            link.down_since_ns = link.last_progress_ns
            link.last_probe_ns = time.monotonic_ns()
        else:
            self._poller.unregister(link.backend.sock)
        lost_ids = [rid for rid, owner in self.pending.items() if owner is link]
        for rid in lost_ids:
            del self.pending[rid]
            self._inputs.done(rid)
        link.lost += len(lost_ids)
        link.lost_at_s = (time.monotonic_ns() - self.start_ns) / 1e9
        link.lost_reason = reason
        link.inflight = 0
        log.warning("lost server %s after %.3f s: %s (%d requests lost)",
                    link.backend.endpoint, link.lost_at_s, reason, len(lost_ids))
        if self._on_link:
            self._on_link(link.index, False)

    def _probe_lost(self) -> None:
        """HELLO a lost server now and then, until it answers or --reconnect-timeout passes."""
        now = time.monotonic_ns()
        for link in self.links:
            if link.down_since_ns is None:
                continue
            if now - link.down_since_ns > self.config.reconnect_timeout_s * 1e9:
                link.down_since_ns = None  # gave up: lost for the rest of the run
                self._poller.unregister(link.backend.sock)
            elif now - link.last_probe_ns >= PROBE_INTERVAL_NS:
                link.backend.send(MsgType.HELLO, HelloHeader(PROBE_ID).to_wire())
                link.last_probe_ns = now

    def _maybe_recovered(self, link: Link, control: bytes, frames: list[zmq.Frame], recv_ns: int) -> None:
        """While a server is lost, only an INFO answering a probe brings it back."""
        if link.down_since_ns is None or control != _INFO_CONTROL:
            return  # stale replies to requests already counted lost, or DEAD frames
        try:
            if readable_id(codec.unpack_header(frames[1].buffer)) != PROBE_ID:
                return
        except (IndexError, ProtocolError):
            return
        link.recovery_s = (recv_ns - link.down_since_ns) / 1e9
        link.recoveries += 1
        link.alive = True
        link.down_since_ns = None
        self._inputs.reconnected(link.index)  # a restarted server knows none of this client's regions
        log.warning("server %s is back after %.3f s", link.backend.endpoint, link.recovery_s)
        if self._on_link:
            self._on_link(link.index, True)


def _poll_timeout_ms(wait_ns: int | None) -> int:
    """How long to poll: until the next scheduled send (spinning the last stretch), else the cap."""
    if wait_ns is None:
        return POLL_CAP_MS
    if wait_ns < SPIN_NS:
        return 0
    return min(POLL_CAP_MS, (wait_ns - SPIN_NS) // 1_000_000 + 1)
