"""The counters add up after connection churn and slow readers, and the backpressure telemetry says why.

Each test ends by checking PROTOCOL.md's invariants (tests/support.py);
here they are also compared with what the clients themselves saw.
"""

from __future__ import annotations

import time

import pytest
import torch
import zmq

from common import codec
from common.protocol import InferHeader, MsgType
from tests.support import check_counters, record_figures, server_stats, settled_counters

pytestmark = pytest.mark.integration

NOOP = ("--device", "cpu", "--model", "noop", "--no-compile")
CHURN_PEERS = 300
SLOW_READER_REQUESTS = 3000  # 4 KB replies: more than SNDHWM (1000) plus the kernel's buffers can park
STEP = 100


def small_infer(request_id: int) -> list[bytes]:
    x = torch.zeros(1, 3, 32, 32)
    return [bytes(f) for f in codec.encode(MsgType.INFER, InferHeader([], request_id, [0, 0]).to_wire(), (x,))]


def hello(request_id: int) -> list[bytes]:
    return [bytes(f) for f in codec.encode(MsgType.HELLO, {"id": request_id})]


def until(endpoint: str, predicate, what: str, timeout_s: float = 60.0) -> dict:
    """The first STATS for which `predicate` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not predicate(stats := server_stats(endpoint)):
        assert time.monotonic() < deadline, f"{what}: {stats['counters']}"
    return stats


def test_counters_add_up_after_connection_churn(server_factory):
    server = server_factory(*NOOP)
    ctx = zmq.Context()
    read = 0
    try:
        for i in range(CHURN_PEERS):
            sock = ctx.socket(zmq.DEALER)
            sock.connect(server.endpoint)
            sock.send_multipart(hello(i))
            sock.send_multipart(small_infer(i))
            if i % 2:  # every other peer reads its two replies; the rest leave without reading
                for _ in range(2):
                    assert sock.poll(30_000)
                    sock.recv_multipart()
                    read += 1
            sock.close(linger=1000)  # its requests leave before the socket does
    finally:
        ctx.term()
    # Every request reached the loop and nothing is in flight; every churned connection is closed
    # (the one open is this STATS probe's own).
    stats = until(server.endpoint, lambda s: s["counters"]["infer_received"] == CHURN_PEERS and not s["inflight"]
                  and s["backpressure"]["connections"] == 1, "churned requests or connections outstanding")
    counters = check_counters(server.endpoint)
    record_figures("churn", peers=CHURN_PEERS, replies_read=read, answered=counters["answered"],
                   replies_other=counters["replies_other"], dropped_gone=counters["replies_dropped_gone"],
                   peers_connected=counters["peers_connected"], peers_disconnected=counters["peers_disconnected"])
    assert counters["answered"] == CHURN_PEERS and counters["infer_errors"] == 0
    assert counters["peers_connected"] >= CHURN_PEERS + 1 and stats["backpressure"]["blocked_peers"] == 0


def test_a_slow_reader_gets_every_reply_that_was_not_counted_as_dropped(server_factory):
    server = server_factory(*NOOP)
    ctx = zmq.Context()
    reader = ctx.socket(zmq.DEALER)
    reader.setsockopt(zmq.RCVHWM, 1)
    reader.setsockopt(zmq.RCVBUF, 64 * 1024)
    reader.setsockopt(zmq.LINGER, 0)
    reader.connect(server.endpoint)
    try:
        for start in range(0, SLOW_READER_REQUESTS, STEP):  # in steps the server keeps up with
            for i in range(start, start + STEP):
                reader.send_multipart(small_infer(i))
            parked = until(server.endpoint, lambda s, n=start + STEP: s["counters"]["infer_received"] == n and not s["inflight"],
                           "requests not yet answered")
        dropped = parked["counters"]["replies_dropped"]
        got = 0
        while got < SLOW_READER_REQUESTS - dropped:  # now it reads: all the rest arrive
            assert reader.poll(30_000), f"{got} of {SLOW_READER_REQUESTS - dropped} replies arrived"
            reader.recv_multipart()
            got += 1
        assert not reader.poll(500), "more replies than the server handed over"
    finally:
        reader.close()
        ctx.term()
    stats, counters = settled_counters(server.endpoint)
    record_figures("slow_reader", requests=SLOW_READER_REQUESTS, received_by_client=got,
                   dropped_hwm=counters["replies_dropped_hwm"], dropped_bytes=counters["replies_dropped_bytes"],
                   send_blocked=counters["send_blocked"], blocked_s=round(counters["send_blocked_ns"] / 1e9, 2))
    assert counters["replies_dropped_hwm"] == dropped > 0 and counters["replies_dropped_gone"] == 0
    assert counters["send_blocked"] >= 1 and counters["send_blocked_ns"] > 0
