"""Replies on their way out and the connections they go to: the I/O thread's view of libzmq's queues.

libzmq queues a reply it has accepted until the connection's kernel buffer takes
it, and ROUTER's SNDHWM bounds that queue in messages, whatever their size: a
thousand batch-256 replies are a gigabyte. So a large reply (one whose last
frame pyzmq sends by reference, `zmq.COPY_THRESHOLD` bytes or more) is sent
with a tracker that libzmq completes once it has written the frame out (or
discarded it with its connection), and each peer may have at most
`--max-queued-reply-bytes` of such replies queued: a reply beyond that is
dropped and counted, like one refused at SNDHWM. An idle peer always takes one
reply, however large. Smaller replies are copied into libzmq at send and stay
bounded by SNDHWM alone.

`ConnectionMonitor` reads the ROUTER's socket monitor: connections accepted and
closed, handshakes failed. Everything here belongs to the I/O thread.
"""

from __future__ import annotations

import collections
import errno
import logging
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from common.protocol import Backpressure, ServerCounters
from common.wire import NOBLOCK, send_frames, send_frames_tracked

log = logging.getLogger("infer.server")

TRACKED_BYTES = zmq.COPY_THRESHOLD  # below it pyzmq copies the frame and the copy cannot be followed
MAX_BLOCKED_PEERS = 4096  # blocked episodes followed at once; the oldest is closed beyond it


def _key(identity: bytes | zmq.Frame) -> bytes:
    return identity if isinstance(identity, bytes) else identity.bytes


class _PeerQueue:
    """One peer's tracked replies, oldest first, and their bytes."""

    __slots__ = ("held", "pending")

    def __init__(self) -> None:
        self.held = 0
        self.pending: collections.deque[tuple[zmq.MessageTracker, int]] = collections.deque()

    def release(self) -> int:
        """Forget the replies libzmq has finished with; returns the bytes still queued."""
        pending = self.pending
        while pending and pending[0][0].done:
            self.held -= pending.popleft()[1]
        return self.held


class ReplyQueues:
    """Bytes of large replies queued in libzmq, per peer, against a per-peer budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.peak = 0  # the most one peer has had queued
        self._peers: dict[bytes, _PeerQueue] = {}

    def admit(self, key: bytes, nbytes: int) -> bool:
        queue = self._peers.get(key)
        if queue is None:
            return True
        held = queue.release()
        return held == 0 or held + nbytes <= self.budget

    def add(self, key: bytes, tracker: zmq.MessageTracker, nbytes: int) -> None:
        queue = self._peers.get(key)
        if queue is None:
            queue = self._peers[key] = _PeerQueue()
        queue.pending.append((tracker, nbytes))
        queue.held += nbytes
        self.peak = max(self.peak, queue.held)

    def sweep(self) -> None:
        """Release what was written out for every peer; forget peers with nothing queued."""
        for key in [k for k, q in self._peers.items() if q.release() == 0]:
            del self._peers[key]

    def queued(self) -> tuple[int, int]:
        """(bytes queued, peers they belong to), as of the last release."""
        return sum(q.held for q in self._peers.values()), len(self._peers)


class ReplySender:
    """Sends every reply without blocking, and counts what libzmq would not take, by cause.

    A peer is *blocked* from the first reply refused because its queue was full
    (SNDHWM or the byte budget) until the next reply it is handed, or until it
    is found gone; `send_blocked` counts those episodes and `send_blocked_ns`
    their duration.
    """

    def __init__(
        self, router: zmq.Socket, counters: ServerCounters, budget: int,
        on_gone: Callable[[bytes], None] | None = None,
    ) -> None:
        self._router = router
        self.counters = counters
        self.queues = ReplyQueues(budget)
        self._on_gone = on_gone
        self._blocked: dict[bytes, int] = {}  # peer -> when its episode began (monotonic ns)

    def send(self, frames: list) -> bool:
        """Hand one reply ([identity, control, header, ...]) to libzmq; False if it was dropped."""
        try:
            if len(frames[-1]) < TRACKED_BYTES:
                send_frames(self._router, frames, NOBLOCK)
            elif not self._send_tracked(frames):
                return False
        except zmq.ZMQError as exc:
            self._refused(_key(frames[0]), exc.errno)
            return False
        if self._blocked:  # costs nothing while no peer is blocked
            self._unblock(_key(frames[0]))
        return True

    def _send_tracked(self, frames: list) -> bool:
        key, nbytes = _key(frames[0]), len(frames[-1])
        if not self.queues.admit(key, nbytes):
            self.counters.replies_dropped += 1
            self.counters.replies_dropped_bytes += 1
            self._block(key)
            return False
        self.queues.add(key, send_frames_tracked(self._router, frames, NOBLOCK), nbytes)
        return True

    def _refused(self, key: bytes, code: int) -> None:
        counters = self.counters
        counters.replies_dropped += 1
        if code == errno.EAGAIN:  # the peer's queue is at SNDHWM: it is not reading
            counters.replies_dropped_hwm += 1
            self._block(key)
            return
        counters.replies_dropped_gone += 1  # EHOSTUNREACH: no connection has that identity now
        log.debug("reply to a peer that is gone dropped (errno %d)", code)
        self._unblock(key)
        if self._on_gone is not None:
            self._on_gone(key)

    def _block(self, key: bytes) -> None:
        if key in self._blocked:
            return
        self.counters.send_blocked += 1
        self._blocked[key] = time.monotonic_ns()
        if len(self._blocked) > MAX_BLOCKED_PEERS:
            self._unblock(next(iter(self._blocked)))

    def _unblock(self, key: bytes) -> None:
        began = self._blocked.pop(key, None)
        if began is not None:
            self.counters.send_blocked_ns += time.monotonic_ns() - began

    def settle(self) -> None:
        """Count the open episodes up to now, so that a STATS shows all the time spent blocked."""
        now = time.monotonic_ns()
        for key, began in self._blocked.items():
            self.counters.send_blocked_ns += now - began
            self._blocked[key] = now

    def gauges(self) -> Backpressure:
        queued, peers = self.queues.queued()
        counters = self.counters
        return Backpressure(
            connections=counters.peers_connected - counters.peers_disconnected, blocked_peers=len(self._blocked),
            queued_reply_bytes=queued, queued_reply_peers=peers, queued_reply_bytes_peak=self.queues.peak,
            max_queued_reply_bytes=self.queues.budget,
        )


MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# libzmq's I/O thread sends monitor events with a blocking send: a full pipe would stall
# every connection until the loop reads. A deep pipe (events are ~100 bytes) makes that
# take a storm of connections while the loop is busy for a long time.
MONITOR_RCVHWM = 100_000
MONITOR_BURST = 4096  # events read per call, so a storm cannot starve requests


class ConnectionMonitor:
    """The ROUTER's socket monitor, read by the I/O thread: it owns `socket` (poll it, then `drain`)."""

    def __init__(self, ctx: zmq.Context, router: zmq.Socket, counters: ServerCounters, name: str) -> None:
        endpoint = f"inproc://monitor-{name}"
        self._router = router
        self.counters = counters
        # Started before the ROUTER binds anything: no event is sent before this socket is connected.
        router.monitor(endpoint, MONITOR_EVENTS)
        self.socket = ctx.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.RCVHWM, MONITOR_RCVHWM)
        self.socket.connect(endpoint)

    def drain(self) -> None:
        counters = self.counters
        for _ in range(MONITOR_BURST):
            try:
                event = parse_monitor_message(self.socket.recv_multipart(NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_ACCEPTED:
                counters.peers_connected += 1
            elif event == zmq.EVENT_DISCONNECTED:
                counters.peers_disconnected += 1
            elif event & HANDSHAKE_FAILED:
                counters.handshakes_failed += 1

    def close(self) -> None:
        self.drain()
        self._router.disable_monitor()
        self.socket.close(linger=0)


HWM = 1000  # ROUTER SNDHWM and RCVHWM, in messages per peer (docs/reliability.md has the bytes)
HANDSHAKE_MS = 10_000  # a connection that has not completed the ZMTP handshake by then is closed


def configure_router(router: zmq.Socket, max_frame_bytes: int, peer_timeout_s: float) -> zmq.Socket:
    """The server's ROUTER options, set before it binds: what one peer can make libzmq hold for it."""
    # Without ROUTER_MANDATORY a reply to a vanished client disappears silently;
    # with it (and non-blocking sends) ReplySender counts it and moves on.
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    router.setsockopt(zmq.SNDHWM, HWM)
    router.setsockopt(zmq.RCVHWM, HWM)
    router.setsockopt(zmq.LINGER, 2000)
    router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    if peer_timeout_s > 0:
        # A peer that stops sending and answering PINGs (its host or link gone, its process stopped,
        # a raw socket stalled mid-frame) is dropped, and with it what libzmq holds for it.
        router.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(peer_timeout_s * 1000 / 3)))
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(peer_timeout_s * 1000)))
    return router
