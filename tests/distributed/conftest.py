"""Helpers for distributed tests: a STATS/HELLO/CONTROL client on a real DEALER socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from client.transport import Backend, CurveKeys

NOOP = ("--device", "cpu", "--model", "noop", "--no-compile")
SMALL_RUN = ("--batch-size", "1", "--image-size", "32", "--output-file", "")


@contextmanager
def backend(endpoint: str, curve: CurveKeys | None = None) -> Iterator[Backend]:
    ctx = zmq.Context()
    b = Backend(ctx, endpoint, 0, curve)
    try:
        yield b
    finally:
        b.close()
        ctx.term()


def wait_until_answered(endpoint: str, at_least: int, timeout_s: float = 60.0) -> int:
    """Poll the server's STATS (each poll waits on a reply) until it has answered `at_least` requests."""
    deadline = time.monotonic() + timeout_s
    with backend(endpoint) as b:
        while time.monotonic() < deadline:
            answered = b.stats(timeout_s=5.0)["counters"].get("answered", 0)
            if answered >= at_least:
                return answered
    raise TimeoutError(f"{endpoint} did not answer {at_least} requests within {timeout_s} s")
