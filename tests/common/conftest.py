"""What the tests under tests/common share: the shared-memory leak check and docs/PROTOCOL.md's keys."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Iterator

import pytest

from common.shm import SHM_DIR
from tests.conftest import ROOT

PROTOCOL_DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
# A key counts as documented when it appears in backticks in the document.
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", PROTOCOL_DOC))


def undocumented(keys: Iterable[str]) -> list[str]:
    """The keys docs/PROTOCOL.md does not name, sorted."""
    return sorted(k for k in keys if k not in DOCUMENTED)


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
