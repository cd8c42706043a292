"""Shared fixtures: real infer-server processes on free loopback ports.

Nothing here sleeps to synchronise: a server is ready when it prints its
`ready <endpoint>` line (it has bound its socket by then), and every wait has a
deadline.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from common import codec
from server.launch import ServerProcess, launch_server, wait_for_line  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


def start_server(
    *args: str, tmp_path: Path, bind: str = "tcp://127.0.0.1:*", env: dict | None = None
) -> ServerProcess:
    return launch_server(list(args), tmp_path / f"server-{time.monotonic_ns()}.err", START_TIMEOUT_S,
                         bind=bind, env=env, cwd=ROOT)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    started: list[ServerProcess] = []

    def factory(*args: str, **kwargs) -> ServerProcess:
        s = start_server(*args, tmp_path=tmp_path, **kwargs)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.kill()


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A no-op model server shared by a module's tests (fast to start)."""
    s = start_server("--device", "cpu", "--model", "noop", "--no-compile", tmp_path=tmp_path_factory.mktemp("noop"))
    yield s
    s.kill()


@pytest.fixture(scope="module")
def resnet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A ResNet-18 server (random init, no compile) shared by a module's tests."""
    s = start_server(
        "--device", "cpu", "--model", "resnet18", "--no-compile", tmp_path=tmp_path_factory.mktemp("resnet")
    )
    yield s
    s.kill()


def run_cli(module: str, *args: str, timeout: float = 180.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` to completion (bounded) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


REPLY_TIMEOUT_MS = 10_000


@contextlib.contextmanager
def dealer_socket(endpoint: str) -> Iterator[zmq.Socket]:
    """A raw DEALER connected to `endpoint`, for sending hand-made (often malformed) messages."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def ask(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = REPLY_TIMEOUT_MS) -> codec.Message:
    """Send one message; exactly one reply must come back."""
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), f"no reply to {[bytes(f[:40]) for f in frames]}"
    reply = codec.decode(sock.recv_multipart())
    assert not sock.poll(0), "more than one reply to a single message"
    return reply
