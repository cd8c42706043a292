"""send_frames / recv_frames over inproc sockets: same messages as pyzmq's multipart calls."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from common.wire import NOBLOCK, recv_frames, send_frames

TIMEOUT_MS = 5000  # a receive that should succeed fails the test instead of hanging it


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def pair(ctx: zmq.Context, a_type: int = zmq.PAIR, b_type: int = zmq.PAIR) -> tuple[zmq.Socket, zmq.Socket]:
    a, b = ctx.socket(a_type), ctx.socket(b_type)
    for s in (a, b):
        s.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    a.bind("inproc://wire-test")
    b.connect("inproc://wire-test")
    return a, b


def test_mixed_frames_arrive_whole_and_in_order(ctx: zmq.Context) -> None:
    a, b = pair(ctx)
    large = bytearray(range(256)) * (zmq.COPY_THRESHOLD // 256 + 7)  # sent zero-copy
    frames = [b"\x01\x05", b"", memoryview(b"header"), memoryview(large), zmq.Frame(b"last")]
    send_frames(a, frames)
    got = recv_frames(b)
    assert all(isinstance(f, zmq.Frame) for f in got)
    assert [f.bytes for f in got] == [b"\x01\x05", b"", b"header", bytes(large), b"last"]


def test_message_boundaries_are_kept(ctx: zmq.Context) -> None:
    a, b = pair(ctx)
    send_frames(a, [b"one"])
    send_frames(a, [b"two", b"three"])
    a.send_multipart([b"four", b"five"])  # interoperates with pyzmq's own calls
    assert [f.bytes for f in recv_frames(b)] == [b"one"]
    assert b.recv_multipart() == [b"two", b"three"]
    assert [f.bytes for f in recv_frames(b)] == [b"four", b"five"]


def test_noblock_receive_on_an_empty_socket_raises_again(ctx: zmq.Context) -> None:
    _, b = pair(ctx)
    with pytest.raises(zmq.Again):
        recv_frames(b, NOBLOCK)


def test_router_reply_to_unknown_peer_fails_whole_and_leaves_no_partial_message(ctx: zmq.Context) -> None:
    router, dealer = pair(ctx, zmq.ROUTER, zmq.DEALER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    send_frames(dealer, [b"hello"])
    identity, body = recv_frames(router)
    assert body.bytes == b"hello"
    with pytest.raises(zmq.ZMQError) as err:
        send_frames(router, [b"no-such-peer", b"lost", b"reply"], NOBLOCK)
    assert err.value.errno == zmq.EHOSTUNREACH
    send_frames(router, [identity.bytes, b"kept", b"reply"], NOBLOCK)
    assert [f.bytes for f in recv_frames(dealer)] == [b"kept", b"reply"]
    with pytest.raises(zmq.Again):
        recv_frames(dealer, NOBLOCK)
