"""server/backpressure.py over real sockets: drops counted by cause, the byte budget, blocked episodes, the monitor."""

from __future__ import annotations

import socket
import time

import zmq

from common.protocol import ServerCounters
from server.backpressure import ConnectionMonitor, ReplySender, configure_router

LARGE = bytes(256 * 1024)  # above zmq.COPY_THRESHOLD: tracked


def pair(ctx: zmq.Context, sndhwm: int = 1000):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, sndhwm)
    router.bind("inproc://replies")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.connect("inproc://replies")
    dealer.send(b"hi")
    identity, _ = router.recv_multipart()
    return router, dealer, identity


def drain(dealer: zmq.Socket) -> int:
    n = 0
    while dealer.poll(200):
        dealer.recv_multipart()
        n += 1
    return n


def test_the_byte_budget_drops_large_replies_and_an_episode_lasts_until_the_next_send() -> None:
    ctx = zmq.Context()
    router, dealer, identity = pair(ctx)
    counters = ServerCounters()
    sender = ReplySender(router, counters, budget=1 << 20)
    try:
        # Over inproc a frame is released once the reader has taken it: nothing is read yet.
        sent = [sender.send([identity, b"\x01\x82", b"h", LARGE]) for _ in range(6)]
        assert sent == [True] * 4 + [False] * 2
        assert (counters.replies_dropped, counters.replies_dropped_bytes, counters.send_blocked) == (2, 2, 1)
        assert sender.gauges().queued_reply_bytes == 4 * len(LARGE) and sender.gauges().blocked_peers == 1
        sender.settle()
        assert counters.send_blocked_ns > 0
        assert drain(dealer) == 4
        deadline = time.monotonic() + 10  # libzmq releases the frames through pyzmq's gc thread
        while not sender.queues.admit(identity, len(LARGE)):
            assert time.monotonic() < deadline
        assert sender.send([identity, b"\x01\x82", b"h", LARGE])  # ends the episode
        assert sender.gauges().blocked_peers == 0 and counters.send_blocked == 1
        sender.queues.sweep()
        assert sender.gauges().queued_reply_peers == 1  # the last reply is still unread
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_small_replies_are_bounded_by_the_hwm_and_a_gone_peer_is_reported() -> None:
    ctx = zmq.Context()
    router, dealer, identity = pair(ctx, sndhwm=5)
    counters = ServerCounters()
    gone: list[bytes] = []
    sender = ReplySender(router, counters, budget=1 << 20, on_gone=gone.append)
    try:
        results = [sender.send([identity, b"\x01\x83", b"small"]) for _ in range(50)]
        assert results.count(False) == counters.replies_dropped_hwm == counters.replies_dropped > 0
        assert drain(dealer) == results.count(True)  # everything not counted as dropped arrives
        assert not sender.send([b"nobody", b"\x01\x83", b"small"])
        assert counters.replies_dropped_gone == 1 and gone == [b"nobody"]
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_the_monitor_counts_connections_and_failed_handshakes() -> None:
    ctx = zmq.Context()
    counters = ServerCounters()
    router = configure_router(ctx.socket(zmq.ROUTER), 1 << 20, peer_timeout_s=0)
    monitor = ConnectionMonitor(ctx, router, counters, "test")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hi")
        router.recv_multipart()
        monitor.drain()
        assert counters.peers_connected == 1
        dealer.close(linger=0)
        with socket.create_connection(("127.0.0.1", port)) as raw:  # not ZMTP at all
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            raw.settimeout(10)
            assert raw.recv(4096) is not None
        deadline = time.monotonic() + 10
        while counters.peers_disconnected < 2 or counters.handshakes_failed < 1:
            assert monitor.socket.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), counters
            monitor.drain()
        assert counters.peers_connected == 2
    finally:
        monitor.close()
        router.close(linger=0)
        ctx.term()
