"""Helpers for the fleet tests: client ranks as real processes against a sleep-model server.

Nothing sleeps to synchronise: a test waits for the server's own count of answered
requests (its STATS) to know a run is under way, and for each rank's exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from client.metrics import LatencyStats
from tests.support import ROOT, backend

SERVICE_MS = 5.0  # the sleep model's service time: at most 200 requests/s, however fast the machine
# Start skew bound: ranks typically start within a millisecond of each other; this leaves room for a
# shared 2-core machine that runs a rank's wake-up late.
SKEW_BOUND_S = 0.1
RANK_TIMEOUT_S = 240.0  # each rank starts an interpreter and imports torch; several share 2 cores
SMALL = ("--batch-size", "1", "--image-size", "32", "--timeout", "30", "-q")


def free_port() -> int:
    """A TCP port free on loopback now (the coordinator binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *SMALL, *args]


@dataclass
class RankProcess:
    name: str
    proc: subprocess.Popen
    out: Path
    err: Path

    def finish(self, timeout_s: float = RANK_TIMEOUT_S) -> tuple[int, str, str]:
        """Wait for the exit: (status, stdout, stderr)."""
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(30)
        return rc, self.out.read_text(), self.err.read_text()


def start(cmd: list[str], tmp_path: Path, name: str, env: dict[str, str] | None = None) -> RankProcess:
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=o, stderr=e, env={**os.environ, **(env or {})})
    return RankProcess(name, proc, out, err)


def answered(endpoint: str) -> int:
    """The server's own count of answered inference requests."""
    with backend(endpoint) as b:
        return b.stats(timeout_s=10.0)["counters"].get("answered", 0)


def rank_histograms(result: dict) -> list[LatencyStats]:
    return [LatencyStats.from_dict(r["latency"]) for r in result["fleet"]["ranks"] if r["gone_at_s"] is None]


def assert_exact_merge(result: dict) -> None:
    """The merged latency histogram is the merge of the ranks' ones, bucket for bucket."""
    merged = LatencyStats.from_dict(result["latency"])
    parts = LatencyStats()
    for h in rank_histograms(result):
        parts.merge(h)
    assert (merged.count, merged.sum_ns, merged.sumsq_ns2, merged.min_ns, merged.max_ns) == \
        (parts.count, parts.sum_ns, parts.sumsq_ns2, parts.min_ns, parts.max_ns)
    buckets = [(i.value_iterated_to, i.count_at_value_iterated_to) for i in merged.hist.get_recorded_iterator()]
    assert buckets == [(i.value_iterated_to, i.count_at_value_iterated_to)
                       for i in parts.hist.get_recorded_iterator()]
    assert merged.count == result["ok"] == sum(r["ok"] for r in result["fleet"]["ranks"])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
