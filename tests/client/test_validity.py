"""Every run says whether it measured the server or the client (client/validity.py): each rule on a
synthetic result, and two real runs, one the client cannot keep up with."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from client.metrics import BREAKDOWN
from client.results import RunResult, Schedule
from client.validity import GIL_BUSY, TRANSPORT_SHARE, invalid_reasons
from tests.client.test_results import _result, _stats
from tests.support import run_cli, sleep_model


def test_a_clean_closed_loop_run_is_valid_and_says_so_everywhere() -> None:
    r = _result(0)
    assert r.valid and r.invalid_reasons == []
    row = r.summary()
    assert row["valid"] is True and row["invalid_reasons"] == ""
    assert "valid: yes" in r.format_text()
    assert RunResult.from_dict(json.loads(r.to_json())).summary()["valid"] is True


@pytest.mark.parametrize(("change", "reason"), [
    (lambda r: dataclasses.replace(r, failed={"OVERLOADED": 3}), "3 requests failed"),
    (lambda r: dataclasses.replace(r, lost=2, complete=False), "2 lost"),
    (lambda r: dataclasses.replace(r, interrupted=True), "interrupted"),
    (lambda r: dataclasses.replace(r, stable=False), "not stable"),
    (lambda r: dataclasses.replace(r, cpu={**r.cpu, "client_gil_pct": 100 * GIL_BUSY + 1}), "client CPU"),
    (lambda r: dataclasses.replace(r, schedule=Schedule("open", 100.0, 80.0, 0.5, True)), "behind its schedule"),
])
def test_each_rule_names_its_reason(change, reason: str) -> None:
    r = change(_result(1))
    assert not r.valid and any(reason in x for x in r.invalid_reasons), r.invalid_reasons
    assert reason in r.summary()["invalid_reasons"] and "NOT VALID" in r.format_text()


def test_open_loop_schedule_lag_over_a_quarter_of_the_latency_is_the_clients() -> None:
    lat = np.full(200, 10e6)
    base = dataclasses.replace(_result(2), schedule=Schedule("open", 50.0, 50.0, 0.0, False), latency=_stats(lat))
    assert dataclasses.replace(base, schedule_lag=_stats(lat * 0.05)).valid  # 0.5 ms: under the 1 ms floor
    late = dataclasses.replace(base, schedule_lag=_stats(lat * 0.3))  # 3 ms of 10 ms
    assert any("schedule lag" in x for x in late.invalid_reasons)
    assert dataclasses.replace(base, schedule_lag=_stats(lat * 0.2)).valid  # 2 ms of 10 ms: under a quarter
    # Against an objective (a peak probe's verdict): 3 ms of a 20 ms bound is under a quarter.
    assert invalid_reasons(late, objective_s=0.020) == []


def test_closed_loop_mostly_transport_and_client_is_not_the_servers() -> None:
    lat = np.full(200, 1e6)
    breakdown = {k: _stats(lat * 0.01) for k in BREAKDOWN}
    heavy = {**breakdown, "transport": _stats(lat * (TRANSPORT_SHARE + 0.1))}
    r = dataclasses.replace(_result(3), rtt=_stats(lat), breakdown=heavy)
    assert any("transport+client" in x for x in r.invalid_reasons)
    assert dataclasses.replace(r, breakdown={**breakdown, "transport": _stats(lat * 0.2)}).valid


def test_merged_processes_keep_the_busiest_gil() -> None:
    a = dataclasses.replace(_result(4), cpu={"client_pct": 40.0, "client_gil_pct": 95.0})
    b = dataclasses.replace(_result(5), cpu={"client_pct": 30.0, "client_gil_pct": 20.0})
    merged = RunResult.merge([a, b])
    assert merged.cpu["client_gil_pct"] == 95.0 and not merged.valid


# -- real runs ----------------------------------------------------------------------------------------

SMALL = ("--batch-size", "1", "--image-size", "32", "--output-file", "", "--json", "-q")


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_run_the_client_cannot_schedule_is_not_valid_and_a_normal_one_is(server_factory) -> None:
    server = server_factory(*sleep_model(20.0))
    normal = run_cli("client", "--server", server.endpoint, *SMALL, "--concurrency", "1", "--num-iters", "20")
    row = json.loads(normal.stdout.strip().splitlines()[-1])
    assert normal.returncode == 0 and row["valid"] is True, row["invalid_reasons"]
    noop = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "0")
    # One client process asked for 50,000 requests in 25 ms (2,000,000 requests/s): sending them takes a Python
    # client a quarter of a second or more, ten times the 25 ms the schedule allows, whatever the machine
    # (200,000 requests/s for 2 s was kept within 5% by a fast enough client).
    flood = run_cli("client", "--server", noop.endpoint, *SMALL, "--request-rate", "2000000", "--num-iters", "50000")
    row = json.loads(flood.stdout.strip().splitlines()[-1])
    assert row["valid"] is False and "behind its schedule" in row["invalid_reasons"], row["invalid_reasons"]
