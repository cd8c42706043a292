"""Closed and open loop against real servers: latency from the scheduled time,
schedule lag, per-request breakdown, goodput and stability.

Timing assertions run against the sleep model (server/models/synthetic.py): one worker
whose every call takes a known service time, so the server's capacity is known
whatever the machine, and load is offered as a multiple of it. Queueing theory
then predicts what must happen; the bounds leave room for a busy machine (which
only adds time) and still fail if the feature broke.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from common.protocol import BREAKDOWN
from tests.support import SLEEP_SERVER_MS, run_cli, sleep_model

pytestmark = pytest.mark.integration  # every test here starts a process

SMALL = ("--batch-size", "1", "--image-size", "32", "--output-file", "", "--json")
SERVICE_S = SLEEP_SERVER_MS / 1e3
CAPACITY = 1 / SERVICE_S  # requests/s the sleep server can serve at most


def _client(server, *args: str, timeout: float = 120.0) -> tuple[dict, str]:
    proc = run_cli("client", "--server", server.endpoint, *SMALL, *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def _trace(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["scheduled_ns"])


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def test_closed_loop_latency_is_the_service_time_and_open_loop_overload_queues_as_predicted(
    sleep_server, tmp_path
) -> None:
    # Concurrency 1: nothing queues, so latency is one service time plus the round trip's overhead.
    closed, _ = _client(sleep_server, "--concurrency", "1", "--num-iters", "50", "--warmup", "3")
    assert SERVICE_S <= closed["p50_latency"] <= SERVICE_S + 0.005, closed["p50_latency"]
    assert closed["p50_latency"] <= 1.5 * closed["p50_rtt"] + 0.002
    assert closed["p50_schedule_lag"] < 0.5 * closed["p50_latency"]

    # Open loop at 2x capacity (D/D/1 with arrivals every S/2): request k is scheduled at
    # k*S/2 and cannot finish before (k+1)*S, so its latency is at least S + k*S/2: the
    # queue, and so the latency, grows by S/2 per request. A slower machine only serves
    # slower (a steeper slope); a queue that did not grow (or a latency measured from the
    # send instead of the schedule) would give a slope near 0.
    trace = tmp_path / "open.jsonl"
    n = 100  # at most 50 in flight, under the server's --max-inflight (256): nothing refused
    opened, text = _client(sleep_server, "--request-rate", f"{2 * CAPACITY:g}", "--arrival", "constant",
                           "--concurrency", "0", "--num-iters", str(n), "--trace-file", str(trace))
    rows = _trace(trace)
    assert len(rows) == opened["requests_ok"] == n
    latency = [(r["received_ns"] - r["scheduled_ns"]) / 1e9 for r in rows]
    slope = _slope(list(range(n)), latency)
    assert 0.9 * SERVICE_S / 2 <= slope <= 2 * SERVICE_S / 2, slope
    assert all(lat >= SERVICE_S + k * SERVICE_S / 2 - 0.001 for k, lat in enumerate(latency))
    # The server's own queue time grows the same way (the request waits for the ones before it).
    queue_s = [r["server"]["queue_ns"] / 1e9 for r in rows]
    assert _slope(list(range(n)), queue_s) >= 0.8 * SERVICE_S / 2
    assert opened["p50_latency"] > 10 * closed["p50_latency"]
    # Latency counts from the scheduled time, not the send: it includes any send delay.
    assert all(r["sent_ns"] >= r["scheduled_ns"] and r["received_ns"] > r["sent_ns"] for r in rows)
    # The client kept the schedule (nothing capped it); the server did not keep up.
    assert opened["p50_schedule_lag"] < SERVICE_S
    assert "could not keep up" not in text
    # Every request's server components are non-negative and fit inside its end-to-end latency.
    for r in rows:
        parts = [r["server"][f"{stage}_ns"] for stage in BREAKDOWN]
        assert all(p >= 0 for p in parts), r
        assert sum(parts) <= r["received_ns"] - r["sent_ns"], r


def test_capped_open_loop_reports_the_client_behind(sleep_server) -> None:
    # One request in flight at a time, each at least a service time: at most CAPACITY
    # requests/s, so 4x that falls behind the schedule however fast the machine is.
    rate = 4 * CAPACITY
    metrics, text = _client(sleep_server, "--request-rate", f"{rate:g}", "--arrival", "constant",
                            "--concurrency", "1", "--num-iters", "40")
    assert f"WARNING: the client could not keep up with {rate:.1f} requests/s" in text
    assert "--concurrency 1 capped the requests in flight" in text
    # Request k is sent no earlier than k service times in, scheduled at k/4 of that.
    assert metrics["max_schedule_lag"] >= 39 * 0.75 * SERVICE_S - 0.001
    assert metrics["max_schedule_lag"] > metrics["p50_rtt"]
    assert metrics["p50_latency"] >= metrics["p50_schedule_lag"]


def test_open_loop_has_no_in_flight_cap_by_default(sleep_server, tmp_path) -> None:
    # 2x capacity for 1 s: the client keeps the schedule, so requests pile up in flight
    # (at 0.5 s, 50 sent and at most 25 answered); a cap of one would fall behind instead.
    trace = tmp_path / "open.jsonl"
    metrics, text = _client(sleep_server, "--request-rate", f"{2 * CAPACITY:g}", "--num-iters", "100",
                            "--trace-file", str(trace))
    assert metrics["concurrency"] == 0 and metrics["request_rate"] == 2 * CAPACITY
    assert "could not keep up" not in text
    events = sorted([(r["sent_ns"], 1) for r in _trace(trace)] + [(r["received_ns"], -1) for r in _trace(trace)])
    in_flight, peak = 0, 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak >= 20, peak


def test_duration_and_goodput(sleep_server) -> None:
    metrics, _ = _client(sleep_server, "--concurrency", "1", "--duration", "2", "--slo-ms", "1000")
    assert 2.0 <= metrics["duration_s"] < 3.0
    # One at a time, at least a service time each: never more than 2 s / S (+1 in flight at the end).
    assert 10 < metrics["requests_ok"] <= 2 / SERVICE_S + 1
    # A 1 s objective for a 20 ms service: every request meets it.
    assert metrics["goodput_fraction"] == 1.0
    assert abs(metrics["goodput"] - metrics["throughput"]) <= 1e-6 * metrics["throughput"]
    # An objective shorter than the service time: no request can meet it.
    missed, _ = _client(sleep_server, "--concurrency", "1", "--num-iters", "20",
                        "--slo-ms", f"{SLEEP_SERVER_MS / 2:g}")
    assert missed["goodput_fraction"] == 0.0 and missed["goodput"] == 0.0


def test_goodput_fraction_matches_the_latency_distribution(server_factory, tmp_path) -> None:
    # Exponential service times of mean 5 ms (seeded): P(service <= 10 ms) = 1 - e^-2 = 0.86;
    # the round trip's overhead (0.3-3 ms) lowers it, to 0.75 at 3 ms; a loaded machine more.
    server = server_factory(*sleep_model(5.0, "--service-dist", "exp"))
    trace = tmp_path / "trace.jsonl"
    metrics, _ = _client(server, "--concurrency", "1", "--num-iters", "300", "--slo-ms", "10",
                         "--trace-file", str(trace))
    latencies = [r["received_ns"] - r["scheduled_ns"] for r in _trace(trace)]
    under = sum(lat <= 10_000_000 for lat in latencies) / len(latencies)
    # The fraction is exactly the share of this run's latencies within the objective...
    assert abs(metrics["goodput_fraction"] - under) <= 1 / len(latencies)
    # ...and about what the service distribution predicts.
    assert 0.55 < metrics["goodput_fraction"] < 0.9, metrics["goodput_fraction"]
    assert metrics["goodput"] <= metrics["throughput"]


def test_steady_run_is_reported_stable(sleep_server, tmp_path) -> None:
    # Windows alone: run until the last 3 agree within 10% (or 25 windows), as perf_analyzer does.
    # Each window's latencies are the fixed service time plus ~1 ms, so they agree from the start;
    # a passing burst of load from elsewhere on the machine only delays the verdict.
    full = tmp_path / "run.json"
    metrics, text = _client(sleep_server, "--concurrency", "1", "--window-s", "0.5", "--max-windows", "25",
                            "--json-file", str(full))
    windows = json.loads(full.read_text())["windows"]
    assert metrics["stable"] is True and f"windows: {len(windows)}, stable" in text
    assert 3 <= len(windows) < 25  # it stopped because it was stable, not at the bound
    assert all(w["count"] > 0 and w["p50_s"] >= SERVICE_S for w in windows)


def test_open_loop_overload_windows_are_not_stable(server_factory) -> None:
    # 2x capacity: the backlog grows by CAPACITY requests every second, and each 0.5 s
    # window's p50 by ~0.5 s, far beyond 10%. The server's in-flight cap is lifted: a
    # request refused there would stop the queue (and so p50) growing, and the run look stable.
    server = server_factory(*sleep_model(SLEEP_SERVER_MS, "--max-inflight", "100000"))
    metrics, text = _client(server, "--request-rate", f"{2 * CAPACITY:g}", "--arrival", "constant",
                            "--concurrency", "0", "--window-s", "0.5", "--max-windows", "6")
    # Until stable or 6 windows: p50 keeps growing with the queue, so it runs all 6 and says so.
    assert metrics["stable"] is False and "windows: 6, NOT stable" in text, text
    assert metrics["requests_failed"] == 0  # nothing refused: the queue grew all along


def test_no_gpu_reported_as_unavailable_with_cpu_figures(noop_server) -> None:
    metrics, text = _client(noop_server, "--num-iters", "50")
    assert metrics["gpu_util"] is None and "GPU: not available" in text
    assert metrics["client_cpu_pct"] is not None and metrics["client_cpu_pct"] >= 0
    assert metrics["server_cpu_pct"] is not None and metrics["server_cpu_pct"] >= 0
