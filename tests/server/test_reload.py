"""server/reload.py without a process: what a reload hands the re-executed server, and how it falls back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from common.protocol import ProtocolError
from server import reload
from server.config import ServerConfig


@pytest.fixture(autouse=True)
def clean_environment() -> Iterator[None]:
    """reload.request writes os.environ: nothing may be left for a server a later test starts."""
    for name in (reload.PENDING_ENV, reload.OUTCOME_ENV):
        os.environ.pop(name, None)
    reload.take_from_environment()
    yield
    for name in (reload.PENDING_ENV, reload.OUTCOME_ENV):
        os.environ.pop(name, None)
    reload.take_from_environment()


def test_a_refused_reload_leaves_nothing_for_a_new_process() -> None:
    config = ServerConfig(bind=("tcp://127.0.0.1:*",), model="noop")
    with pytest.raises(ProtocolError, match="num_workers"):
        reload.request(config, ["tcp://127.0.0.1:5000"], {"num_workers": -1}, "abc")
    reload.take_from_environment()
    assert reload.ready() is None


def test_an_accepted_reload_is_applied_once_ready() -> None:
    config = ServerConfig(bind=("tcp://127.0.0.1:*",), model="noop")
    new = reload.request(config, ["tcp://127.0.0.1:5000"], {"max_batch_size": 8}, "abc")
    assert new.max_batch_size == 8 and new.bind == ("tcp://127.0.0.1:5000",)  # the port actually bound
    reload.take_from_environment()  # what the re-executed process does first
    assert reload.ready() == {"outcome": "applied", "settings": {"max_batch_size": 8}, "accepted_by": "abc",
                              "reason": None}
    execs: list[list[str]] = []
    reload.fall_back(RuntimeError("later"), execs.append)
    assert execs == []  # once ready, a failure is the process's own


def test_a_reload_that_fails_before_ready_comes_back_with_the_previous_argv() -> None:
    config = ServerConfig(bind=("tcp://127.0.0.1:*",), model="noop", max_batch_size=4)
    reload.request(config, ["tcp://127.0.0.1:5000"], {"model": "sleep"}, "abc")
    reload.take_from_environment()
    execs: list[list[str]] = []
    reload.fall_back(ValueError("checkpoint unreadable"), execs.append)
    (argv,) = execs
    assert ServerConfig(bind=("tcp://127.0.0.1:5000",), model="noop", max_batch_size=4).to_argv() == argv
    reload.take_from_environment()  # the fallback process
    outcome = reload.ready()
    assert outcome == {"outcome": "failed", "settings": {"model": "sleep"}, "accepted_by": "abc",
                       "reason": "ValueError: checkpoint unreadable"}
    reload.fall_back(RuntimeError("again"), execs.append)
    assert len(execs) == 1  # the fallback never falls back again


def test_an_unreadable_record_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reload.PENDING_ENV, "{not json")
    monkeypatch.setenv(reload.OUTCOME_ENV, json.dumps([1, 2]))
    reload.take_from_environment()
    assert reload.ready() is None
