"""PROTOCOL.md: CONTROL's profiling window (R54)."""

from __future__ import annotations

import json

import pytest

from tests.conformance.client import images

pytestmark = pytest.mark.integration  # every test here starts a process


def job_ranges(trace: str) -> int:
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    return sum(e.get("ph") == "X" and e.get("name") == "infer_job" for e in events)


def test_r54_a_profile_window_holds_the_requests_between_start_and_stop(server, peer, tmp_path):
    assert peer.infer(images(), id="before").kind == "RESULT"
    start = peer.request("CONTROL", {"id": "start", "action": "profile_start", "dir": str(tmp_path)})
    assert start.kind == "CONTROL_REPLY" and set(start.header) == {"id", "accepted", "instance"}
    assert peer.request("CONTROL", {"id": 2, "action": "profile_start", "dir": str(tmp_path)}).error == "BAD_REQUEST"
    for i in range(3):
        assert peer.infer(images(), id=i).kind == "RESULT"
    stop = peer.request("CONTROL", {"id": "stop", "action": "profile_stop"})
    assert stop.kind == "CONTROL_REPLY" and stop.header["trace"].startswith(str(tmp_path))
    assert peer.infer(images(), id="after").kind == "RESULT"  # the server goes on serving
    assert job_ranges(stop.header["trace"]) == 3


def test_r54_a_missing_profile_dir_is_made(server, peer, tmp_path):
    made = tmp_path / "new" / "traces"
    assert peer.request("CONTROL", {"id": 1, "action": "profile_start", "dir": str(made)}).kind == "CONTROL_REPLY"
    stop = peer.request("CONTROL", {"id": 2, "action": "profile_stop"})
    assert stop.kind == "CONTROL_REPLY" and stop.header["trace"].startswith(f"{made}/")


def test_r54_bad_profile_requests_are_refused_and_change_nothing(server, peer, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uncreatable = blocker / "traces"
    for header in ({"action": "profile_start"}, {"action": "profile_start", "dir": 7},
                   {"action": "profile_start", "dir": "relative/dir"},
                   {"action": "profile_start", "dir": str(uncreatable)}, {"action": "profile_stop"}):
        reply = peer.request("CONTROL", {"id": "bad", **header})
        assert (reply.error, reply.header["id"]) == ("BAD_REQUEST", "bad"), header
    assert peer.infer(images(), id="still").kind == "RESULT"
