"""RunResult: summary, CSV, JSON and merging, on synthetic runs."""

from __future__ import annotations

import csv

import numpy as np

from client.metrics import BREAKDOWN, LatencyStats
from client.results import SEED_COLUMNS, RunResult


def _stats(values_ns) -> LatencyStats:
    s = LatencyStats()
    for v in values_ns:
        s.record(int(v))
    return s


def _result(seed: int, n: int = 500, endpoint: str = "tcp://127.0.0.1:1") -> RunResult:
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(4e6), 0.3, n)
    return RunResult(
        config={"servers": [endpoint], "image_size": 64, "wire_dtype": "float32", "concurrency": 1,
                "request_rate": None, "slo_ms": 5.0},
        servers=[{"model": "noop", "device": "cpu", "compile": False, "num_workers": 2,
                  "torch_load_time": 0.5, "m_compile_time": 0.0}],
        batch_size=4,
        started_unix=1000.0 + seed,
        duration_s=2.0,
        throughput=n * 4 / 2.0,
        sent=n,
        ok=n,
        failed={},
        lost=0,
        latency=_stats(lat),
        rtt=_stats(lat * 0.9),
        schedule_lag=_stats(lat * 0.01),
        breakdown={k: _stats(lat * 0.1) for k in (*BREAKDOWN, "transport")},
        backends=[{"endpoint": endpoint, "sent": n, "ok": n, "failed": {}, "lost": 0, "lost_at_s": None,
                   "lost_reason": "", "throughput": n * 4 / 2.0, "latency": _stats(lat)}],
        warmup_latency=0.1,
        gpu={"util_mean": None, "reason": "no NVML"},
        cpu={"client_pct": 20.0, "server_pct": 50.0},
        under_slo=int((lat <= 5e6).sum()),
    )


def test_summary_starts_with_the_seed_columns_and_is_consistent() -> None:
    r = _result(0)
    s = r.summary()
    assert tuple(s)[: len(SEED_COLUMNS)] == SEED_COLUMNS
    for key in ("p50_latency", "p99_9_latency", "stdev_latency", "p50_rtt", "p99_schedule_lag", "transport_mean",
                "server_compute_mean", "goodput_fraction", "goodput", "client_cpu_pct", "server_cpu_pct", "stable"):
        assert key in s
    assert s["min_latency"] <= s["p50_latency"] <= s["p99_latency"] <= s["max_latency"]
    assert s["goodput_fraction"] == r.under_slo / r.sent
    assert s["goodput"] == r.under_slo * 4 / 2.0 <= s["throughput"]
    assert s["gpu_util"] is None and "GPU: not available (no NVML)" in r.format_text()
    assert "CPU: client 20%, server 50%" in r.format_text()


def test_csv_header_written_once(tmp_path) -> None:
    path = tmp_path / "sub" / "out.csv"
    _result(0).append_csv(path)
    _result(1).append_csv(path)
    rows = list(csv.reader(path.open()))
    assert len(rows) == 3 and rows[0] == list(_result(0).summary())
    assert rows[1] != rows[2]


def test_json_round_trip(tmp_path) -> None:
    r = _result(2)
    r.write_json(tmp_path / "r.json")
    back = RunResult.read_json(tmp_path / "r.json")
    assert back.summary() == r.summary()
    assert back.to_dict() == r.to_dict()


def test_merge_is_exact_on_histograms_and_sums_counts() -> None:
    a, b = _result(3), _result(4, n=300)
    m = RunResult.merge([a, b])
    union = _stats([])
    union.merge(a.latency).merge(b.latency)
    assert m.ok == 800 and m.sent == 800 and m.parts == 2
    assert m.throughput == a.throughput + b.throughput
    assert m.latency.summary("x") == union.summary("x")
    assert m.under_slo == a.under_slo + b.under_slo
    assert m.backends[0]["ok"] == 800 and m.backends[0]["latency"].count == 800
    assert m.cpu["client_pct"] == 40.0
    # The inputs are left untouched (merge builds new histograms).
    assert a.latency.count == 500 and a.backends[0]["latency"].count == 500
