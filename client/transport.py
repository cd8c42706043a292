"""The client's side of the wire: one DEALER socket per server.

A `Backend` is used by exactly one thread (ZeroMQ sockets are not thread-safe):
the I/O thread owns the measurement sockets, the monitor thread opens its own.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from typing import Any

import torch
import zmq

from client.config import CurveKeys
from common import codec
from common.protocol import ControlHeader, ErrorHeader, IdHeader, MsgType, ProtocolError, readable_id

__all__ = ["Backend", "ClientError", "CurveKeys", "ServerGone"]  # CurveKeys: defined with the config

log = logging.getLogger("infer.client")

HELLO_NOTICE_S = 2.0  # a HELLO unanswered this long is said on stderr, long before a 30 s --timeout ends it


class ClientError(Exception):
    """A failure the CLI reports as one line (server unreachable, error reply, ...)."""


class ServerGone(ClientError):
    """The server announced it is shutting down (DEAD): it will not answer."""


class Backend:
    """A DEALER connected to one infer-server endpoint."""

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.Context, endpoint: str, index: int = 0, curve: CurveKeys | None = None):
        self.endpoint = endpoint
        self.index = index
        self.info: dict[str, Any] | None = None  # the last INFO, once `hello` has had one
        self.sock = ctx.socket(zmq.DEALER)
        # Queued requests reference the client's pre-built input batches (zero
        # copy), so an unbounded queue costs no memory per request; the load
        # pattern bounds what is in flight.
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            from common.security import configure_client

            configure_client(self.sock, curve.client_secret, curve.server_public)
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, msg_type: MsgType, header: dict[str, Any], tensors: tuple[torch.Tensor, ...] = ()) -> None:
        self.sock.send_multipart(codec.encode(msg_type, header, tensors), copy=False)

    def request(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, timeout_s: float = 10.0,
        tensors: tuple[torch.Tensor, ...] = (), notice_after_s: float | None = None,
    ) -> codec.Message:
        """Send one request and wait for its reply (skipping stale replies to earlier ids); still
        waiting after `notice_after_s` s, say so once on the log."""
        request_id = f"sync-{next(self._ids)}"
        self.send(msg_type, {**(header or {}), **IdHeader(request_id).to_wire()}, tensors)
        deadline = time.monotonic() + timeout_s
        notice_at = None if notice_after_s is None else time.monotonic() + notice_after_s
        while True:
            wait_until = deadline if notice_at is None or notice_at >= deadline else notice_at
            remaining_ms = math.ceil((wait_until - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self.sock.poll(remaining_ms):
                if wait_until == deadline:
                    raise ClientError(
                        f"no reply from {self.endpoint} within {timeout_s:g} s: is infer-server running there?"
                    )
                log.warning("waiting for %s from %s: no answer after %g s (a server still loading answers once "
                            "ready); giving up after %g s (--timeout)", msg_type.name, self.endpoint,
                            notice_after_s, timeout_s)
                notice_at = None
                continue
            frames = self.sock.recv_multipart(copy=False)
            try:
                msg = codec.decode([f.buffer for f in frames])
            except ProtocolError as exc:
                raise ClientError(f"malformed reply from {self.endpoint}: {exc.message}") from None
            if msg.msg_type == MsgType.DEAD:
                raise ServerGone(f"server {self.endpoint} announced it is shutting down")
            if readable_id(msg.header) != request_id:
                continue
            if msg.msg_type == MsgType.ERROR:
                error = ErrorHeader.from_wire(msg.header)
                raise ClientError(f"{self.endpoint} answered {error.name}: {error.message}")
            return msg

    def hello(self, timeout_s: float, notice_after_s: float | None = None) -> dict[str, Any]:
        """Wait for the server to be ready; returns its INFO. `notice_after_s`: see `request`."""
        self.info = self.request(MsgType.HELLO, timeout_s=timeout_s, notice_after_s=notice_after_s).header
        return self.info

    def stats(self, timeout_s: float = 2.0) -> dict[str, Any]:
        return self.request(MsgType.STATS, timeout_s=timeout_s).header

    def control(self, action: str, timeout_s: float = 10.0, settings: dict[str, Any] | None = None,
                directory: str | None = None) -> dict[str, Any]:
        """A CONTROL request (`shutdown`, `reload` with new settings by option name, `profile_start` with
        the server-side `directory` of its trace, `profile_stop`); returns the reply."""
        header = ControlHeader(action, settings=settings, dir=directory).to_wire()
        return self.request(MsgType.CONTROL, header, timeout_s=timeout_s).header
