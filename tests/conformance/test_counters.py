"""PROTOCOL.md: STATS counters and their invariants (R40-R45), from the counters table's definitions."""

from __future__ import annotations

import pytest

from tests.conformance.client import control, images, pack, peers, stats, tensor
from tests.support import counters_add_up

pytestmark = pytest.mark.integration  # every test here starts a process


def mixed_workload(endpoint: str) -> None:
    """5 good INFERs, 3 refused after a valid prefix, 2 refused before it, 2 HELLOs, 1 bad CONTROL."""
    desc, frame = tensor(images())
    with peers(endpoint) as new:
        peer = new()
        for i in range(5):
            assert peer.request("INFER", {"id": i, "tensors": [desc]}, frame).kind == "RESULT"
        for bad in ({**desc, "dtype": "float128"}, {**desc, "shape": [1, 3, 32]}, {**desc, "frame": 3}):
            assert peer.request("INFER", {"id": "bad", "tensors": [bad]}, frame).error == "BAD_REQUEST"
        assert peer.ask([control("INFER")]).error == "BAD_REQUEST"  # no header: no valid prefix
        assert peer.ask([control("INFER"), pack({"id": 1.5, "tensors": [desc]}), frame]).error == "BAD_REQUEST"
        for i in range(2):
            assert peer.request("HELLO", {"id": i}).kind == "INFO"
        assert peer.request("CONTROL", {"id": 9, "action": "bogus"}).error == "BAD_REQUEST"


def test_r40_r41_r42_r43_r44_r45_counters_add_up_and_count_what_the_table_says(server):
    before = stats(server.endpoint)
    mixed_workload(server.endpoint)
    after = stats(server.endpoint)
    counters_add_up(before)
    counters_add_up(after)
    delta = {k: after["counters"][k] - before["counters"][k] for k in after["counters"]}
    # 13 requests and the second STATS; its reply is counted in the snapshot it carries (R41).
    assert delta["received"] == 14
    assert (delta["infer_received"], delta["answered"], delta["infer_errors"]) == (8, 5, 3)
    assert (delta["errors_sent"], delta["error_bad_request"]) == (6, 6)
    assert delta["replies_other"] == 3  # two INFOs and the STATS_REPLY
    assert delta["errors_sent"] - delta["infer_errors"] == 3  # errors to everything but counted INFERs
    assert delta["replies_dropped"] == 0 and after["inflight"] == 0
    # Two STATS probes and the workload's peer connected; the earlier ones may be closing still.
    assert delta["peers_connected"] == 2 and delta["peers_disconnected"] <= 2
