"""Shared fixtures (real infer-server processes on free loopback ports) and the two test tiers.

Nothing here sleeps to synchronise: a server is ready when it prints its
`ready <endpoint>` line (it has bound its socket by then), and every wait has a
deadline.

Tiers. `make unit` runs the tests that start no process (`-m "not integration"`);
`make test` runs everything. A test is marked `integration` automatically when
- it uses a fixture that starts servers (SERVER_FIXTURES, directly or through
  another fixture), or
- its code, or a function or class of its module that it calls, names one of
  PROCESS_NAMES (run_cli, start_server, launch_server, subprocess, Popen), or
- its module or class says so: `pytestmark = pytest.mark.integration` (also
  implied by the `netns` and `soak` markers).
A test that is not marked and still starts a process fails with a message that
says how to mark it (the `_unit_tests_start_no_process` guard), so an
integration test cannot land in the unit tier unnoticed.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing.process
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from common import codec
from common.shm import SHM_DIR
from server.launch import ServerProcess, launch_server, wait_for_line  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
SERVER_FIXTURES = frozenset({"server_factory", "noop_server", "resnet_server", "sleep_server"})
PROCESS_NAMES = frozenset({"run_cli", "start_server", "launch_server", "subprocess", "Popen"})
IMPLIES_INTEGRATION = ("integration", "netns", "soak")


def _names_used(code: types.CodeType, module: dict, seen: set) -> set[str]:
    """Global and attribute names a function's code uses, following the module's own functions and classes."""
    if code in seen:
        return set()
    seen.add(code)
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, lambdas, comprehensions
            names |= _names_used(const, module, seen)
    for name in code.co_names:
        target = module.get(name)
        if getattr(target, "__module__", None) != module.get("__name__"):
            continue
        members = vars(target).values() if isinstance(target, type) else [target]
        for member in members:
            inner = getattr(member, "__code__", None)
            if inner is not None:
                names |= _names_used(inner, module, seen)
    return names


def _code_starts_processes(function: object) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and bool(PROCESS_NAMES & _names_used(code, function.__globals__, set()))


def _starts_processes(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(m) for m in IMPLIES_INTEGRATION):
        return True
    if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    fixture_info = getattr(item, "_fixtureinfo", None)
    for name, defs in (fixture_info.name2fixturedefs.items() if fixture_info else ()):
        for fixture in defs if name != "_unit_tests_start_no_process" else ():
            # A fixture that starts processes itself, or picks a server fixture by name (a params list).
            if _code_starts_processes(fixture.func) or SERVER_FIXTURES & set(map(str, fixture.params or ())):
                return True
    return _code_starts_processes(getattr(item, "function", None))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_processes(item) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the integration tier, starting a process fails the test and says what to do."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{request.node.nodeid} starts a process but is not in the integration tier: use a server"
            " fixture or run_cli, or mark its module with `pytestmark = pytest.mark.integration`"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


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


def sleep_model(service_ms: float, *extra: str) -> tuple[str, ...]:
    """infer-server arguments for the sleep model (server/models/synthetic.py) on one worker thread.

    Each call takes service_ms exactly, so the server serves at most 1000 / service_ms
    requests/s however fast the machine is: timing tests offer load relative to that.
    """
    return ("--device", "cpu", "--model", "sleep", "--no-compile", "--num-workers", "1",
            "--service-ms", f"{service_ms:g}", *extra)


SLEEP_SERVER_MS = 20.0


@pytest.fixture(scope="module")
def sleep_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A sleep-model server of known capacity (SLEEP_SERVER_MS per request, one worker) shared by a module."""
    s = start_server(*sleep_model(SLEEP_SERVER_MS), tmp_path=tmp_path_factory.mktemp("sleep"))
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


def regions_named(prefix: str) -> set[str]:
    """The /dev/shm entries whose names start with `prefix`."""
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)}


@pytest.fixture
def no_leftover(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that leaves regions carrying its module's PREFIX in /dev/shm."""
    prefix = request.module.PREFIX
    before = regions_named(prefix)
    yield
    gc.collect()
    assert regions_named(prefix) == before, "a test left regions in /dev/shm"
