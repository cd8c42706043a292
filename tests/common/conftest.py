"""Fixtures shared by the shared-memory tests under tests/common."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from common.shm import SHM_DIR


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
