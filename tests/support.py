"""What test modules share: the repository root, starting servers and CLIs, raw sockets, the protocol
document's keys, STATS checks and the reliability figures. Fixtures are in the conftest files.

Conformance tests do not use this module: their client is written from docs/PROTOCOL.md alone
(tests/conformance/client.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zmq

from client.transport import Backend, CurveKeys
from common import codec
from common.shm import SHM_DIR
from server.launch import ServerProcess, launch_server
from sweeps.records import Repeat, SweepRecord

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
REPLY_TIMEOUT_MS = 10_000
STATS_TIMEOUT_S = 10.0
NOOP = ("--device", "cpu", "--model", "noop", "--no-compile")  # infer-server arguments: the no-op model
SMALL_RUN = ("--batch-size", "1", "--image-size", "32", "--output-file", "")  # infer-client arguments
SLEEP_SERVER_MS = 20.0  # the sleep_server fixture's service time


# -- processes ---------------------------------------------------------------------------------


def start_server(
    *args: str, tmp_path: Path, bind: str = "tcp://127.0.0.1:*", env: dict | None = None
) -> ServerProcess:
    """An infer-server with `args`, ready (its `ready` line read); its stderr in a file under tmp_path."""
    return launch_server(list(args), tmp_path / f"server-{time.monotonic_ns()}.err", START_TIMEOUT_S,
                         bind=bind, env=env, cwd=ROOT)


def sleep_model(service_ms: float, *extra: str) -> tuple[str, ...]:
    """infer-server arguments for the sleep model (server/models/synthetic.py) on one worker thread.

    Each call takes service_ms exactly, so the server serves at most 1000 / service_ms
    requests/s however fast the machine is: timing tests offer load relative to that.
    """
    return ("--device", "cpu", "--model", "sleep", "--no-compile", "--num-workers", "1",
            "--service-ms", f"{service_ms:g}", *extra)


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


def regions_named(prefix: str) -> set[str]:
    """The /dev/shm entries whose names start with `prefix`."""
    return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)}


# -- talking to a server -------------------------------------------------------------------------


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


@contextlib.contextmanager
def backend(endpoint: str, curve: CurveKeys | None = None) -> Iterator[Backend]:
    """The client's own connection to one server (STATS, HELLO, CONTROL), closed at the end."""
    ctx = zmq.Context()
    b = Backend(ctx, endpoint, 0, curve)
    try:
        yield b
    finally:
        b.close()
        ctx.term()


def wait_until_answered(endpoint: str, at_least: int, timeout_s: float = 60.0) -> int:
    """Poll the server's STATS (each poll waits on a reply) until it has answered `at_least` requests."""
    deadline = time.monotonic() + timeout_s
    with backend(endpoint) as b:
        while time.monotonic() < deadline:
            answered = b.stats(timeout_s=5.0)["counters"].get("answered", 0)
            if answered >= at_least:
                return answered
    raise TimeoutError(f"{endpoint} did not answer {at_least} requests within {timeout_s} s")


# -- docs/PROTOCOL.md's keys -----------------------------------------------------------------------

PROTOCOL_DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
# A key counts as documented when it appears in backticks in the document.
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", PROTOCOL_DOC))


def undocumented(keys: Iterable[str]) -> list[str]:
    """The keys docs/PROTOCOL.md does not name, sorted."""
    return sorted(k for k in keys if k not in DOCUMENTED)


# -- STATS invariants and the reliability figures ---------------------------------------------------


def record_figures(name: str, **figures: object) -> None:
    """Append figures as a JSON line to $RELIABILITY_FIGURES (default results/reliability_figures.jsonl)
    and print them (visible with `pytest -s`)."""
    path = Path(os.environ.get("RELIABILITY_FIGURES", ROOT / "results" / "reliability_figures.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    with open(path, "a") as f:  # one whole line per write: an interrupted run leaves whole rows
        f.write(line + "\n")
    print(f"\nRELIABILITY {line}")


def server_stats(endpoint: str) -> dict[str, Any]:
    """One STATS_REPLY, from a fresh connection (which the counters then include)."""
    with backend(endpoint) as b:
        return b.stats(timeout_s=STATS_TIMEOUT_S)


def counters_add_up(stats: dict[str, Any]) -> dict[str, int]:
    """Assert docs/PROTOCOL.md's invariants on one STATS_REPLY (rules R40-R45, from the document's
    definitions alone: a test that loses, double-counts or invents a reply fails here); returns its counters."""
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


# -- sweeps ---------------------------------------------------------------------------------------

SMALL_SWEEP = ("--model", "noop", "--image-size", "32", "--num-iters", "5", "--compile", "off")


def sweep(results: Path, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """`python sweep.py` with SMALL_SWEEP's settings, writing to `results`, to completion (bounded)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), *SMALL_SWEEP, "--results-dir", str(results), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def sweep_json(results: Path) -> list[dict]:
    """Every sweep file under --results-dir `results` (each in its sweep's own folder), oldest first."""
    return [json.loads(p.read_text()) for p in sorted(results.glob("sweep-*/sweep-*.json"))]


def only_folder(results: Path) -> Path:
    """The one sweep folder under --results-dir `results`."""
    (folder,) = results.glob("sweep-*/")
    return folder


def peak_record(label: str, rates: list[float], p99s: list[float], measured: float = 0.9) -> SweepRecord:
    """A peak sweep's record: per repeat, a search that passed at `rate` (and at half of it) with `p99` and
    failed at twice it, and the run at the peak (a real RunResult) answering `measured` times the rate."""
    from tests.client.test_results import _result

    runs = []
    for rate, p99 in zip(rates, p99s):
        probes = [{"rate": rate * 2, "passed": False, "latency_s": 3 * p99, "throughput": rate * 1.5},
                  {"rate": rate / 2, "passed": True, "latency_s": p99 / 2, "throughput": rate / 2},
                  {"rate": rate, "passed": True, "latency_s": p99, "throughput": rate}]
        result = _result(len(runs) + 1)
        result.batch_size, result.throughput = 1, rate * measured
        runs.append(Repeat(len(runs), 1.0, result.to_dict(), peak={
            "peak_rate": rate, "peak_samples_per_s": rate, "peak_throughput": rate * measured,
            "peak_latency": p99, "peak_latency_high": p99 * 1.25, "peak_confirmed": True, "confidence": 0.95,
            "percentile": 99.0, "peak_p50_latency": p99 / 2, "peak_p99_latency": p99, "peak_gpu_util": 40.0,
            "peak_gpu_mem_peak_bytes": 2e9, "at_peak": {"average_latency": p99 / 2}, "probes": probes}))
    config = {"batch_size": 1, "compile": False, "concurrency": 1, "num_workers": 1, "max_batch_size": label}
    return SweepRecord(label, label, config, runs)
