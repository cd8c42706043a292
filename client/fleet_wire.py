"""The fleet's coordination channel: its messages, its sockets and their limits.

Rank 0 binds a ROUTER (client/coordinator.py); every rank, rank 0's own
measuring side included, connects a DEALER (client/fleet_member.py). A message
is one frame: a msgpack map whose "t" names it (`pack`/`unpack`); a rank's
result travels inside as JSON text, since its histograms' sums of squares
outgrow msgpack's 64-bit integers.

Limits: libzmq drops a peer whose frame exceeds MAXMSGSIZE, `unpack` bounds
msgpack by the frame's size (checked first), and the coordinator refuses a message of more than
one frame. Liveness: ZMTP heartbeats, answered by libzmq's own I/O thread (so a
busy Python never looks dead), close a connection silent for LIVENESS_S; the
socket monitors report the closing (`Watch`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

PROTOCOL = "infer-fleet/1"
MAX_RESULT_BYTES = 16 << 20  # a rank's result: tens of KB of histograms and counters; far more is a fault
MAX_CONTROL_BYTES = 64 << 10  # everything else, either way
HEARTBEAT_MS = 1000
LIVENESS_S = 10.0  # a connection silent this long (no ZMTP heartbeat answered) is closed
LINGER_MS = 2000  # the last acknowledgements still go out when the coordinator closes

WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


class FleetError(Exception):
    """The fleet cannot run (a rank missing, refused, failed before the start): one line, nothing measured."""


class WireError(ValueError):
    """A coordination message this side cannot read."""


def pack(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"t": kind, **fields}, use_bin_type=True)


def unpack(raw: bytes, limit: int = MAX_CONTROL_BYTES) -> dict[str, Any]:
    """A message's map, or WireError: over `limit` bytes, not msgpack, or not a map with a string "t"."""
    if len(raw) > limit:
        raise WireError(f"a coordination message of {len(raw)} bytes, over the limit of {limit}")
    try:
        # Length checked above: msgpack then bounds every container by the buffer's size.
        message = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"not a coordination message: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise WireError("not a coordination message: no type")
    return message


def open_socket(ctx: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(LIVENESS_S * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TTL, int(LIVENESS_S * 1000))
    if kind == zmq.DEALER:
        sock.setsockopt(zmq.IPV6, 1)  # rank 0's name may resolve to an IPv6 address
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a message to a rank that is gone raises, not vanishes
        sock.setsockopt(zmq.SNDTIMEO, 0)
    return sock


def curve_server(ctx: zmq.Context, sock: zmq.Socket, curve_dir: Path | None) -> Any:
    """With keys, make the coordinator's socket a CURVE server; returns the authenticator to stop, or None."""
    if curve_dir is None:
        return None
    from common.security import start_server_auth

    return start_server_auth(ctx, sock, curve_dir)


def curve_client(sock: zmq.Socket, curve_dir: Path | None) -> None:
    if curve_dir is not None:
        from common.security import configure_client

        configure_client(sock, curve_dir / "client.key_secret", curve_dir / "server.key")


def bind_endpoint(endpoint: str) -> str:
    """What rank 0 binds for the coordinator `endpoint` that the other ranks connect to.

    An address (tcp://10.0.0.5:29500) is bound as given, loopback names as 127.0.0.1.
    A host name is bound on every interface at its port: what a name resolves to on
    rank 0's host (Debian maps its own name to 127.0.1.1; a Kubernetes pod's service
    name may not resolve yet when it starts) need not be the address the others reach.
    """
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    bare = host.strip("[]")
    if bare in ("localhost", "ip6-localhost"):
        return f"tcp://127.0.0.1:{port}"
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return f"tcp://*:{port}" if bare != "*" else endpoint
    return endpoint


def local_endpoint(bound: str) -> str:
    """How a process on rank 0's own host reaches what was bound (a wildcard bind: over loopback)."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:", "tcp://[::ffff:0.0.0.0]:"):
        if bound.startswith(wildcard):
            return "tcp://127.0.0.1:" + bound[len(wildcard):]
    return bound


class Watch:
    """A socket's connection events (its monitor socket), read without blocking."""

    def __init__(self, sock: zmq.Socket):
        self._watched = sock
        self.sock = sock.get_monitor_socket(WATCHED)

    def events(self) -> list[tuple[int, int]]:
        """(event, value) pairs waiting now; for a disconnection the value is the connection's file descriptor."""
        out = []
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            event = parse_monitor_message(frames)
            out.append((int(event["event"]), int(event["value"])))

    def close(self) -> None:
        """Before the watched socket closes."""
        try:
            self._watched.disable_monitor()
        except zmq.ZMQError:
            pass
        self.sock.close(linger=0)
