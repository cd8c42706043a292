"""The servers the conformance tests talk to (their client, written from docs/PROTOCOL.md alone: client.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.client import NOOP, Peer, peers
from tests.support import start_server


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A noop server with the default limits, shared by the suite."""
    s = start_server(*NOOP, "--num-workers", "2", tmp_path=tmp_path_factory.mktemp("conformance"))
    yield s
    s.kill()


@pytest.fixture(scope="package")
def tight(tmp_path_factory: pytest.TempPathFactory):
    """A noop server with a 1 MiB reply budget per peer."""
    s = start_server(*NOOP, "--max-queued-reply-bytes", "1MiB", tmp_path=tmp_path_factory.mktemp("conformance-tight"))
    yield s
    s.kill()


@pytest.fixture
def peer(server) -> Iterator[Peer]:
    with peers(server.endpoint) as new:
        yield new()
