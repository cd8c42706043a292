"""Recorded schedules replayed and ramps, against a real sleep-model server.

Send times come from the schedule by construction, so the assertions on them are
exact whatever the machine; only the schedule lag (how late each send went out)
depends on load, and it is reported, not bounded. The ramp stays under the sleep
server's known capacity, so what each window counts is what was offered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import SLEEP_SERVER_MS, run_cli

pytestmark = pytest.mark.integration  # every test here starts a process

SMALL = ("--batch-size", "1", "--image-size", "32", "--output-file", "", "--json")
CAPACITY = 1e3 / SLEEP_SERVER_MS  # requests/s the sleep server serves at most (one worker)


def _client(server, *args: str) -> dict:
    proc = run_cli("client", "--server", server.endpoint, *SMALL, *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scheduled_offsets_ns(trace: Path) -> list[int]:
    times = sorted(row["scheduled_ns"] for row in _trace_rows(trace))
    return [t - times[0] for t in times]


def _trace_rows(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines()]


def test_a_schedule_file_is_replayed_at_its_offsets_with_the_lag_reported(sleep_server, tmp_path) -> None:
    offsets = [0.0, 0.03, 0.031, 0.1, 0.1, 0.25, 0.4, 0.55]  # bursts and pauses, under capacity on average
    schedule = tmp_path / "offsets.txt"
    schedule.write_text("# seconds from the first send\n" + "\n".join(map(str, offsets)) + "\n")
    trace = tmp_path / "replay.jsonl"
    result = _client(sleep_server, "--schedule-file", str(schedule), "--trace-file", str(trace))
    assert result["requests_ok"] == len(offsets) and result["concurrency"] == 0  # open loop, every send time
    assert _scheduled_offsets_ns(trace) == [int(o * 1e9) for o in offsets]
    rows = _trace_rows(trace)
    assert all(r["sent_ns"] >= r["scheduled_ns"] for r in rows)
    lags = sorted(r["sent_ns"] - r["scheduled_ns"] for r in rows)
    assert result["max_schedule_lag"] == lags[-1] / 1e9 and result["p50_schedule_lag"] is not None


def test_a_trace_file_replays_the_run_it_recorded(sleep_server, tmp_path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _client(sleep_server, "--request-rate", f"{CAPACITY / 2:g}", "--num-iters", "20", "--trace-file", str(first))
    replayed = _client(sleep_server, "--schedule-file", str(first), "--trace-file", str(second))
    assert replayed["requests_ok"] == 20
    assert _scheduled_offsets_ns(second) == _scheduled_offsets_ns(first)


def test_a_rate_ramp_shows_in_its_windows(sleep_server, tmp_path) -> None:
    # 5 -> 35 requests/s over 3 s, constant gaps: per 1 s window the integral of the rate,
    # 10, 20 and 30 sends. The sleep server serves 50/s, so each window answers what it was offered.
    result_file = tmp_path / "ramp.json"
    _client(sleep_server, "--request-rate", "35", "--arrival", "constant", "--ramp-s", "3", "--ramp-start", "5",
            "--duration", "3.5", "--window-s", "1", "--json-file", str(result_file))
    windows = json.loads(result_file.read_text())["windows"]
    counts = [w["count"] for w in windows[:3]]
    assert len(counts) == 3 and counts[0] < counts[1] < counts[2], windows
    assert abs(counts[0] - 10) <= 2 and abs(counts[1] - 20) <= 2 and abs(counts[2] - 30) <= 2, windows
    rates = [w["throughput"] for w in windows[:3]]
    assert rates == sorted(rates) and rates[2] > 2.5 * rates[0]
