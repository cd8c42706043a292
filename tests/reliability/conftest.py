"""Reliability figures, and the counter invariants every fault test ends by checking.

Figures are appended as JSON lines to $RELIABILITY_FIGURES (default
results/reliability_figures.jsonl) and printed (visible with `pytest -s`).

`counters_add_up` checks the invariants docs/PROTOCOL.md states for STATS_REPLY
(rules R40-R45), from the document's definitions alone: a fault test that
loses, double-counts or invents a reply fails there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import zmq

from client.transport import Backend
from tests.conftest import ROOT

STATS_TIMEOUT_S = 10.0


def record_figures(name: str, **figures: object) -> None:
    path = Path(os.environ.get("RELIABILITY_FIGURES", ROOT / "results" / "reliability_figures.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    with open(path, "a") as f:  # one whole line per write: an interrupted run leaves whole rows
        f.write(line + "\n")
    print(f"\nRELIABILITY {line}")


def server_stats(endpoint: str) -> dict[str, Any]:
    """One STATS_REPLY, from a fresh connection (which the counters then include)."""
    ctx = zmq.Context()
    backend = Backend(ctx, endpoint)
    try:
        return backend.stats(timeout_s=STATS_TIMEOUT_S)
    finally:
        backend.close()
        ctx.term()


def counters_add_up(stats: dict[str, Any]) -> dict[str, int]:
    """Assert PROTOCOL.md's invariants on one STATS_REPLY; returns its counters."""
    c, inflight = stats["counters"], stats["inflight"]
    by_code = sum(n for name, n in c.items() if name.startswith("error_"))
    assert c["errors_sent"] == by_code, f"R40: errors_sent != the sum of error_*: {c}"
    replies = c["answered"] + c["errors_sent"] + c["replies_other"]
    assert c["received"] == replies + inflight, f"R41: received != replies + inflight ({inflight}): {c}"
    assert c["infer_received"] == c["answered"] + c["infer_errors"] + inflight, f"R42: INFERs do not add up: {c}"
    causes = c["replies_dropped_gone"] + c["replies_dropped_hwm"] + c["replies_dropped_bytes"]
    assert c["replies_dropped"] == causes <= replies, f"R43: drops do not add up: {c}"
    assert c["send_blocked"] <= c["replies_dropped_hwm"] + c["replies_dropped_bytes"], f"R44: {c}"
    assert c["peers_disconnected"] <= c["peers_connected"], f"R45: {c}"
    assert stats["backpressure"]["connections"] == c["peers_connected"] - c["peers_disconnected"], f"R45: {stats}"
    return c


def check_counters(endpoint: str) -> dict[str, int]:
    """Read STATS from `endpoint` and check that its counters add up."""
    return counters_add_up(server_stats(endpoint))


def settled_counters(endpoint: str, timeout_s: float = 60.0) -> tuple[dict[str, Any], dict[str, int]]:
    """STATS once nothing is in flight (bounded wait), its counters checked."""
    deadline = time.monotonic() + timeout_s
    while (stats := server_stats(endpoint))["inflight"]:
        assert time.monotonic() < deadline, f"still {stats['inflight']} in flight after {timeout_s:g} s"
    return stats, counters_add_up(stats)
