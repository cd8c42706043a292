"""A client written from docs/PROTOCOL.md alone (the servers the conformance tests talk to: conftest.py).

Nothing here imports the implementation (common/, server/, client/): messages are
built and read with ZeroMQ and MessagePack as the document describes them, so a
rule the code breaks and the document states fails here. Each test names the
rules it checks (test_r12_..., test_r30_r34_...); test_rules.py fails when a rule
of the document has no test.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

VERSION = 1
REQUESTS = {"HELLO": 0x01, "INFER": 0x02, "STATS": 0x03, "CONTROL": 0x04, "SHM_REGISTER": 0x05,
            "SHM_UNREGISTER": 0x06}
REPLIES = {0x81: "INFO", 0x82: "RESULT", 0x83: "STATS_REPLY", 0x84: "CONTROL_REPLY", 0x85: "SHM_REGISTERED",
           0x86: "SHM_UNREGISTERED", 0xE0: "ERROR", 0xFF: "DEAD"}
REPLY_MS = 10_000
NOOP = ("--device", "cpu", "--model", "noop", "--no-compile")
PROTOCOL_DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def control(kind: str | int, version: int = VERSION) -> bytes:
    return bytes((version, REQUESTS[kind] if isinstance(kind, str) else kind))


def pack(header: object) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


@dataclass
class Reply:
    kind: str
    header: dict = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return self.header.get("name") if self.kind == "ERROR" else None


def parse(frames: list[bytes]) -> Reply:
    assert len(frames[0]) == 2 and frames[0][0] == VERSION, frames[0]
    kind = REPLIES[frames[0][1]]
    if kind == "DEAD":
        assert frames == [b"\x01\xff"]
        return Reply(kind)
    return Reply(kind, msgpack.unpackb(frames[1], raw=False), frames[2:])


class Peer:
    """One DEALER connection."""

    def __init__(self, ctx: zmq.Context, endpoint: str, **options: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            self.sock.setsockopt(getattr(zmq, name), value)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int = REPLY_MS) -> Reply:
        assert self.sock.poll(timeout_ms), "no reply"
        return parse(self.sock.recv_multipart())

    def ask(self, frames: list[bytes]) -> Reply:
        self.send(frames)
        return self.recv()

    def request(self, kind: str, header: dict, *tensor_frames: bytes) -> Reply:
        return self.ask([control(kind), pack(header), *tensor_frames])

    def infer(self, array: np.ndarray, **header: object) -> Reply:
        desc, frame = tensor(array)
        return self.request("INFER", {**header, "tensors": [desc]}, frame)


def tensor(array: np.ndarray, frame: int = 0) -> tuple[dict, bytes]:
    """A tensor description and its frame: C order, little-endian."""
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "frame": frame}, data


def images(batch: int = 1, side: int = 32, dtype: str = "float32") -> np.ndarray:
    return np.zeros((batch, 3, side, side), dtype=dtype)


@contextlib.contextmanager
def peers(endpoint: str) -> Iterator:
    """peers(endpoint) as new: new() -> a fresh Peer; all closed at the end."""
    ctx = zmq.Context()
    made: list[Peer] = []

    def new(**options: int) -> Peer:
        made.append(Peer(ctx, endpoint, **options))
        return made[-1]

    try:
        yield new
    finally:
        for peer in made:
            peer.sock.close()
        ctx.term()


def stats(endpoint: str) -> dict:
    with peers(endpoint) as new:
        reply = new().request("STATS", {"id": "stats"})
    assert reply.kind == "STATS_REPLY"
    return reply.header


def documented_python(defines: str) -> dict:
    """Run the document's code block that defines `defines`; its names."""
    for block in re.findall(r"```python\n(.*?)```", PROTOCOL_DOC, re.DOTALL):
        if f"def {defines}(" in block:
            names: dict = {}
            exec(compile(block, "PROTOCOL.md", "exec"), names)  # noqa: S102 - the document's own recipe
            return names
    raise AssertionError(f"docs/PROTOCOL.md has no code block defining {defines}")
