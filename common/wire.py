"""Multipart send and receive on the hot path, without pyzmq's per-call extras.

`Socket.send_multipart` and `recv_multipart` are the same frame-by-frame loop
as these, plus Python-level work on every call: enum arithmetic for the
SNDMORE flag, a getsockopt(RCVMORE) through the enum machinery per frame, and
a buffer check per part. Every batch-1 round trip makes two sends and two
receives, so that work is a visible share of the server's CPU per request
(docs/performance.md has the measurement). For the same reason each frame is
sent with the compiled `zmq.backend.Socket.send` that pyzmq's `Socket.send`
calls after its Python-level checks for the draft sockets' `routing_id` and
`group`, which we never pass (a quarter of a small frame's send).

`readable` tells whether a message is waiting without trying to receive it: a
`zmq.Again` raised and caught costs several times a receive.

Semantics are pyzmq's: frames are sent with `copy=False` (pyzmq still copies
frames under `zmq.COPY_THRESHOLD`), received as `zmq.Frame`s, and
`zmq.Again` / `zmq.ZMQError` propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_send = zmq.backend.Socket.send  # what zmq.Socket.send calls once it has ruled out routing_id and group


def send_frames(sock: zmq.Socket, frames: Sequence, flags: int = 0) -> None:
    """Send `frames` (bytes, memoryviews or zmq.Frames) as one message, zero-copy."""
    more = flags | _SNDMORE
    for frame in frames[:-1]:
        _send(sock, frame, more, False)
    _send(sock, frames[-1], flags, False)


class Readable:
    """`readable()`: whether `sock` has a message waiting now (a poll with no wait, on it alone)."""

    def __init__(self, sock: zmq.Socket):
        self._poll = zmq.Poller()
        self._poll.register(sock, _POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """Receive one whole message as zmq.Frames (views over libzmq's buffers, not copies)."""
    recv = sock.recv
    frame = recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(flags, copy=False)
        frames.append(frame)
    return frames


def send_frames_tracked(sock: zmq.Socket, frames: Sequence, flags: int = 0) -> zmq.MessageTracker:
    """`send_frames`, with a tracker for the last frame: done once libzmq has written it out or
    discarded it. That frame must be at least `zmq.COPY_THRESHOLD` bytes (smaller ones are copied,
    and their tracker is done at once)."""
    more = flags | _SNDMORE
    for frame in frames[:-1]:
        _send(sock, frame, more, False)
    last = frames[-1]
    # A received zmq.Frame carries no tracker of its own: send a view of it, which libzmq
    # references (no copy) and pyzmq tracks.
    return _send(sock, last.buffer if isinstance(last, zmq.Frame) else last, flags, False, True)
