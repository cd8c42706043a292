"""PROTOCOL.md: Limits (R35-R38)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conformance.client import control, images, pack, peers, stats, tensor
from tests.reliability.zmtp import RawPeer, frame_header

pytestmark = pytest.mark.integration  # every test here starts a process

MiB = 1 << 20


def test_r35_counts_and_sizes_from_the_wire_are_limited(peer):
    desc, frame = tensor(images())
    cases = {
        "frames": [control("HELLO"), pack({"id": 1})] + [b""] * 9,  # 11 frames
        "header": [control("HELLO"), pack({"id": 1, "pad": "x" * (64 * 1024)})],
        "tensors": [control("INFER"), pack({"id": 1, "tensors": [{**desc, "frame": i} for i in range(9)]})]
        + [frame] * 9,
        "rank": [control("INFER"), pack({"id": 1, "tensors": [{"dtype": "uint8", "shape": [1] * 9, "frame": 0}]}),
                 b"\x00"],
        "id": [control("HELLO"), pack({"id": "i" * 65})],
        "ts": [control("INFER"), pack({"id": 1, "ts": list(range(17)), "tensors": [desc]}), frame],
    }
    for what, frames in cases.items():
        assert peer.ask(frames).error == "BAD_REQUEST", what
    assert peer.request("HELLO", {"id": 1, "pad": "x" * 60_000}).kind == "INFO"  # under 64 KiB is fine


def test_r36_r46_a_peer_that_does_not_read_loses_the_excess_and_gets_all_the_rest(tight):
    """Replies of 256 KB to a 1 MiB budget (the tight server); then 4 KB ones past SNDHWM."""
    with peers(tight.endpoint) as new:
        reader = new(RCVHWM=1, RCVBUF=64 * 1024)
        before = stats(tight.endpoint)["counters"]
        sent = 0
        for rows, count in ((64, 50), (1, 2500)):
            desc, frame = tensor(np.zeros((rows, 3, 32, 32), dtype="uint8"))
            for _ in range(count // 50):  # 50 at a time, each step read by the server before the next
                for _ in range(50):
                    reader.send([control("INFER"), pack({"tensors": [desc]}), frame])
                sent += 50
                deadline = time.monotonic() + 60
                while (now := stats(tight.endpoint))["counters"]["infer_received"] - before["infer_received"] < sent \
                        or now["inflight"]:
                    assert time.monotonic() < deadline
        after = now["counters"]
        dropped = {cause: after[f"replies_dropped_{cause}"] - before[f"replies_dropped_{cause}"]
                   for cause in ("bytes", "hwm", "gone")}
        got = 0
        while got < sent - sum(dropped.values()):
            assert reader.sock.poll(30_000), f"{got} of {sent - sum(dropped.values())}"
            reader.sock.recv_multipart()
            got += 1
        assert not reader.sock.poll(500), "more replies arrived than were handed over"
    assert dropped["bytes"] > 0 and dropped["hwm"] > 0 and dropped["gone"] == 0, dropped
    assert now["backpressure"]["queued_reply_bytes_peak"] <= (1 * MiB) + 64 * 4000


def test_r37_an_oversized_frame_closes_only_that_connection(server):
    before = stats(server.endpoint)["counters"]
    with peers(server.endpoint) as new:
        dealer = new()
        assert dealer.request("HELLO", {"id": 1}).kind == "INFO"
        attacker = RawPeer(server.endpoint)
        try:
            attacker.send_raw(frame_header(256 * MiB + 1, more=True))  # one byte over the default limit
            assert attacker.closed_by_server(10.0)
        finally:
            attacker.close()
        assert dealer.request("HELLO", {"id": 2}).kind == "INFO"  # everyone else is still served
    after = stats(server.endpoint)["counters"]
    assert after["peers_disconnected"] > before["peers_disconnected"]


def test_r37_the_same_dealer_reconnects_after_sending_too_much(server_factory):
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--max-message-bytes", "4KiB")
    with peers(server.endpoint) as new:
        dealer = new()
        desc, frame = tensor(images())  # 12 KiB
        dealer.send([control("INFER"), pack({"id": 1, "tensors": [desc]}), frame])
        assert not dealer.sock.poll(1000), "an oversized message is never answered"
        assert dealer.request("HELLO", {"id": 2}).header["id"] == 2


def test_r38_a_connection_silent_after_a_heartbeat_is_closed(server_factory):
    # Not the tight server: a peer that does not read (R36) may not see a heartbeat either, and would be dropped.
    short = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--peer-timeout-s", "1")
    before = stats(short.endpoint)["counters"]["peers_disconnected"]
    stalled = RawPeer(short.endpoint)
    try:
        stalled.send_raw(frame_header(8 * MiB, more=False) + bytes(MiB))  # stops in the middle of a frame
        start = time.monotonic()
        assert stalled.closed_by_server(30.0)
        assert time.monotonic() - start < 30.0
    finally:
        stalled.close()
    assert stats(short.endpoint)["counters"]["peers_disconnected"] > before
    with peers(short.endpoint) as new:  # a DEALER answers heartbeats: idle for longer, it stays connected
        idle = new()
        assert idle.request("HELLO", {"id": 1}).kind == "INFO"
        disconnected = stats(short.endpoint)["counters"]["peers_disconnected"]
        assert not idle.sock.poll(3000)  # three peer timeouts without a message
        assert idle.request("HELLO", {"id": 2}).kind == "INFO"
        assert stats(short.endpoint)["counters"]["peers_disconnected"] == disconnected + 1  # the last probe's
