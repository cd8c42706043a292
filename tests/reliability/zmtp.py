"""A raw ZMTP 3.1 peer over a plain TCP socket: it can do what libzmq never lets a client do.

libzmq sends a multipart message only once its last frame is given, and answers
heartbeats by itself; an attacker writing the wire format directly can stop in
the middle of a message or of a frame, or go silent. This peer speaks just
enough ZMTP (rfc.zeromq.org/spec/23, NULL mechanism) to get past the handshake
as a DEALER and then writes frames, or parts of frames, as it is told.
"""

from __future__ import annotations

import socket
import struct
import time

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes((3, 1)) + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


def _command(name: bytes, properties: dict[bytes, bytes]) -> bytes:
    body = bytes((len(name),)) + name
    for key, value in properties.items():
        body += bytes((len(key),)) + key + struct.pack(">I", len(value)) + value
    return bytes((COMMAND | LONG,)) + struct.pack(">Q", len(body)) + body


def frame_header(size: int, more: bool) -> bytes:
    """The flags and size that start a message frame of `size` bytes."""
    return bytes((LONG | (MORE if more else 0),)) + struct.pack(">Q", size)


class RawPeer:
    """One TCP connection to a ROUTER, handshaken as a DEALER."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.sendall(GREETING)
        self._read_exactly(len(GREETING))  # the server's greeting
        self.sock.sendall(_command(b"READY", {b"Socket-Type": b"DEALER"}))
        self._read_frame()  # the server's READY

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def _read_frame(self) -> tuple[int, bytes]:
        flags = self._read_exactly(1)[0]
        size = struct.unpack(">Q", self._read_exactly(8))[0] if flags & LONG else self._read_exactly(1)[0]
        return flags, self._read_exactly(size)

    def send_frame(self, data: bytes, more: bool) -> None:
        self.sock.sendall(frame_header(len(data), more) + data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed_by_server(self, timeout_s: float) -> bool:
        """Read (and discard) what the server sends until it closes the connection or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except OSError:  # reset: closed with our unread bytes in its buffer
            return True
        return False

    def close(self) -> None:
        self.sock.close()
