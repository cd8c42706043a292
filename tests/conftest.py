"""Shared fixtures (real infer-server processes on free loopback ports) and the guard of the unit tier.

Nothing here sleeps to synchronise: a server is ready when it prints its
`ready <endpoint>` line (it has bound its socket by then), and every wait has a
deadline. Helpers that test modules import are in tests/support.py.

Tiers. `make unit` runs the tests that start no process (`-m "not integration"`);
`make test` runs everything. A test that starts a process (a server, a CLI, an
interpreter) says so: `pytestmark = pytest.mark.integration` in its module, or
`@pytest.mark.integration` on it. A test without the marker that starts one,
in its fixtures' set-up, its body or their tear-down, fails with a message that
says how to mark it, so an integration test cannot land in the unit tier unnoticed.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing.process
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.launch import ServerProcess
from tests.support import SLEEP_SERVER_MS, regions_named, sleep_model, start_server


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs the theory module in the background, where a shell without job control starts it with
    # SIGINT ignored: Python's handler back, so that Ctrl-C stops it (and its servers and clients) with the rest.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _processes_refused(item: pytest.Item) -> Iterator[None]:
    """Outside the integration tier, starting a process fails the test and says what to do."""
    if item.get_closest_marker("integration"):
        yield
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{item.nodeid} starts a process but is not marked integration: mark it `@pytest.mark.integration`,"
            " or its module `pytestmark = pytest.mark.integration`"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        patch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _processes_refused(item):  # the fixtures' set-up too: a module's server starts in its first test's
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _processes_refused(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _processes_refused(item):
        return (yield)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """factory(*args) -> a started server; every one killed at the end of the test."""
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


@pytest.fixture
def no_leftover(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that leaves regions carrying its module's PREFIX in /dev/shm."""
    prefix = request.module.PREFIX
    before = regions_named(prefix)
    yield
    if regions_named(prefix) != before:
        gc.collect()  # a region whose last view is garbage unmaps when collected: only then is it left over
    assert regions_named(prefix) == before, "a test left regions in /dev/shm"
