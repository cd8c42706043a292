"""RunResult: summary, CSV, JSON and merging, on synthetic runs and on a file in today's format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from client.metrics import BREAKDOWN, LatencyStats
from client.results import SEED_COLUMNS, BackendResult, RunResult, Schedule

DATA = Path(__file__).parent / "data"


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
        backends=[BackendResult(endpoint, sent=n, ok=n, throughput=n * 4 / 2.0, latency=_stats(lat))],
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
    assert m.backends[0].ok == 800 and m.backends[0].latency.count == 800
    assert m.cpu["client_pct"] == 40.0
    # The inputs are left untouched (merge builds new histograms).
    assert a.latency.count == 500 and a.backends[0].latency.count == 500


def test_merge_keeps_backends_apart_and_the_first_outage() -> None:
    a, b = _result(5, endpoint="tcp://a:1"), _result(6, endpoint="tcp://a:1")
    b.backends[0].lost, b.backends[0].lost_reason, b.backends[0].lost_at_s = 2, "no reply for 1 s", 0.5
    b.backends.append(BackendResult("tcp://b:1", sent=7, ok=7, failed={"OVERLOADED": 1}))
    m = RunResult.merge([a, b, RunResult.merge([b])])
    assert [x.endpoint for x in m.backends] == ["tcp://a:1", "tcp://b:1"]
    first, second = m.backends
    assert (first.lost, first.lost_reason, first.lost_at_s) == (4, "no reply for 1 s", 0.5)
    assert second.ok == 14 and second.failed == {"OVERLOADED": 2}
    assert m.parts == 3 and m.config["merged_from"][0] == a.config


def test_a_result_file_in_todays_format_still_loads_and_reports_the_same() -> None:
    """Written before the nested parts became typed: the figures, the report and every key survive."""
    old = json.loads((DATA / "result_format_1.json").read_text())
    r = RunResult.from_dict(old)
    summary = r.summary()
    assert list(summary)[: len(old["summary"])] == list(old["summary"])  # columns added at the end only
    assert old["summary"].items() <= summary.items()
    assert r.format_text() + "\n" == (DATA / "result_format_1.txt").read_text()
    new = r.to_dict()
    for key, value in old.items():  # keys may be added, never renamed or dropped
        if isinstance(value, dict):
            assert value.items() <= new[key].items(), key
        elif key in ("backends", "cold_start", "windows"):
            assert all(o.items() <= n.items() for o, n in zip(value, new[key], strict=True)), key
        else:
            assert new[key] == value, key
    assert RunResult.from_dict(json.loads(json.dumps(new))).to_dict() == new
    lost = r.backends[1]
    assert (lost.lost_reason, lost.recoveries, lost.latency.count) == ("no reply for 0.2 s", 1, 11)
    assert r.cold_start[0].first_call_s == {"uint8[2,3,64,64]": 0.003} and r.cold_start[1].compiled_graphs is None
    assert r.schedule.mode == "open" and r.windows[1].p50_s == 0.0041
    assert r.backpressure == []  # written before it was kept: no ZeroMQ line in the report above


def _backpressure(dropped_gone: int, dropped_hwm: int, blocked: int) -> dict[str, int]:
    return {"replies_dropped": dropped_gone + dropped_hwm, "replies_dropped_gone": dropped_gone,
            "replies_dropped_hwm": dropped_hwm, "replies_dropped_bytes": 0, "send_blocked": blocked,
            "send_blocked_ns": 2_500_000, "peers_connected": 3, "peers_disconnected": 1, "handshakes_failed": 0}


def test_backpressure_is_reported_kept_in_json_and_merged(tmp_path) -> None:
    r = _result(3, endpoint="tcp://127.0.0.1:5555")
    r.backpressure = [_backpressure(2, 5, 4)]
    lines = [x for x in r.format_text().splitlines() if x.startswith("ZeroMQ")]
    assert lines == ["ZeroMQ (tcp://127.0.0.1:5555): 7 replies dropped (2 peer gone, 5 at the high-water mark,"
                     " 0 over the byte budget), send queue full 4 times for 2.500 ms,"
                     " connections 3 opened, 1 closed"]
    path = tmp_path / "run.json"
    r.write_json(path)
    assert RunResult.read_json(path).backpressure == r.backpressure
    no_stats = _result(4, endpoint="tcp://127.0.0.1:5555")
    no_stats.backpressure = [None]  # a server that gave no STATS: no line, and the other part's figures stand
    assert not [x for x in no_stats.format_text().splitlines() if x.startswith("ZeroMQ")]
    other = _result(5, endpoint="tcp://127.0.0.1:5555")
    other.backpressure = [_backpressure(1, 9, 1)]
    merged = RunResult.merge([r, no_stats, other])
    assert merged.backpressure[0]["replies_dropped_hwm"] == 9 and merged.backpressure[0]["send_blocked"] == 4


def test_unknown_keys_from_a_newer_version_are_ignored() -> None:
    d = _result(7).to_dict()
    d["added_later"] = 1
    d["backends"][0]["added_later"] = 2
    d["schedule"]["added_later"] = 3
    assert RunResult.from_dict(d).summary() == _result(7).summary()


def test_csv_floats_have_meaningful_digits_and_rows_describe_their_run(tmp_path) -> None:
    r = _result(8)
    r.throughput = 0.00026103060000000003  # repr noise must not reach the file
    r.host, r.git_commit, r.window_unix = "hostx", "abc123", [1764597787.5, 1764597789.5]
    r.schedule = Schedule("open", offered_rate=50.0)
    r.config.update(label="bf16 try", transport="zmq", seed=3, request_rate=50.0, arrival="gamma", burstiness=0.5)
    r.servers[0].update(precision="bf16", channels_last=True, compile_mode="max-autotune", max_batch_size=8,
                        config={"precision": "bf16", "threads": 4})
    r.append_csv(tmp_path / "out.csv")
    (row,) = csv.DictReader((tmp_path / "out.csv").open())
    assert row["throughput"] == "0.000261031"
    for key, cell in row.items():
        try:
            value = float(cell)
        except ValueError:
            continue
        assert cell in (f"{value:.6g}", str(int(value))), (key, cell)  # six significant digits at most
    assert row["timestamp_utc"] == "2025-12-01T14:03:07.500Z" and row["host"] == "hostx" and row["git_commit"] == "abc123"
    assert (row["label"], row["load"], row["arrival"], row["burstiness"], row["seed"]) == (
        "bf16 try", "open", "gamma", "0.5", "3")
    assert (row["precision"], row["channels_last"], row["compile_mode"], row["max_batch_size"]) == (
        "bf16", "True", "max-autotune", "8")
    assert json.loads(row["server_config"]) == {"precision": "bf16", "threads": 4}
    assert row["interrupted"] == "False"
    back = RunResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert (back.host, back.git_commit, back.window_unix, back.interrupted) == ("hostx", "abc123", r.window_unix, False)
