"""The peak-rate search: the bracket-and-bisect logic on simulated queues judged by the real verdict,
its bookkeeping, and infer-client --find-peak. The search against real servers of known service
time is tests/client/test_peak_theory.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmarks.queueing import crossing
from benchmarks.search_sim import simulated_queue
from client.config import ClientConfig
from client.peak import (
    MAX_EXPANSIONS,
    PeakResult,
    PeakSearch,
    Probe,
    bracket_and_bisect,
    find_peak,
    peak_of,
    probe_config,
    probe_seed,
)
from client.peak_report import format_search, no_peak_reason
from client.verdict import PASS, UNDECIDED, TailObjective
from common.fileio import json_text
from sweeps.records import peak_figures
from tests.support import run_cli, sleep_model


@pytest.mark.parametrize(("dist", "percentile", "bound_multiple"), [
    ("fixed", 90.0, 5), ("exp", 90.0, 20), ("fixed", 99.0, 10), ("exp", 99.0, 20),
])
def test_search_on_simulated_queues_lands_below_the_crossing_never_above(dist: str, percentile: float,
                                                                        bound_multiple: int) -> None:
    # 10 seeded searches per queue, each probe judged on its own simulated sample path: the peak is
    # never above the crossing (no false pass survives the bisection), and lands within a quarter of it
    # (over 40 seeds the lowest was 0.78 of the crossing, for M/M/1: the bursts make the last tenth below
    # the crossing unprovable within a probe's budget).
    service_s = 0.002
    bound_s = bound_multiple * service_s
    cross = crossing(service_s, dist, bound_s, percentile)
    objective = TailObjective(bound_s, percentile)
    found = []
    for seed in range(10):
        measure = simulated_queue(service_s, dist, objective, np.random.default_rng(seed))
        probes = bracket_and_bisect(1 / service_s, measure, 0.05)
        peak = peak_of(probes)
        assert peak is not None
        found.append(peak.rate / cross)
    assert max(found) <= 1.0 and min(found) >= 0.75, found


def test_search_reports_no_peak_when_nothing_meets_the_objective() -> None:
    # An objective shorter than the service time: no rate can meet it. Once halving the rate no
    # longer shortens the latency (it is the service time), the search stops instead of probing
    # ever lower rates.
    def measure(rate: float) -> Probe:
        return Probe(rate, False, "over", 0.005 + 1 / (200.0 - min(rate, 199.0)) / 100, rate, 1024, 1024, "fail")

    probes = bracket_and_bisect(200.0, measure, 0.05)
    assert peak_of(probes) is None and all(not p.passed for p in probes)
    assert min(p.rate for p in probes) > 200.0 / 64


def test_halving_stops_where_a_probe_cannot_send_the_requests_a_verdict_needs_in_its_time() -> None:
    # A slow model whose p99 stays unshown at every rate tried: each probe has 120 s, so at half the rate it
    # sends half the requests. Below min_requests / 120 s a probe cannot decide anything: the search stops
    # above that rate (not at 1/64 of the capacity) and says to give the probes more time.
    search = PeakSearch(250.0, max_probe_requests=8000, max_probe_s=120.0)
    assert search.min_rate == search.objective.min_requests / 120.0

    def measure(rate: float) -> Probe:
        if rate > 90:
            return Probe(rate, False, "fail", 0.4, rate, 2000, 1400, "fail")
        return Probe(rate, False, "undecided", 0.3 / (100 - rate), rate, int(rate * 120), 0, UNDECIDED)

    probes = bracket_and_bisect(98.0, measure, 0.1, search.min_rate)
    assert [p.rate for p in probes] == [98.0, 49.0, 24.5, 12.25] and 6.125 < search.min_rate < 12.25
    reason = no_peak_reason(PeakResult(search, 1, 98.0, 8, probes))
    assert "within a probe's 120 s" in reason and "0 of 1470 were over" in reason and "--max-probe-s" in reason
    # A search that ran out of rates, not of time: the plain reason.
    full = [Probe(r, False, "over", 0.3, r, 8000, 400, "fail") for r in (98.0, 49.0)]
    assert "met p99 <= 250 ms at confidence 0.99" in no_peak_reason(PeakResult(search, 1, 98.0, 8, full))


def test_search_stops_doubling_when_everything_passes() -> None:
    probes = bracket_and_bisect(10.0, lambda rate: Probe(rate, True, "", 0.001, rate, 1024, 0, PASS), 0.05)
    assert [p.rate for p in probes] == [10.0 * 2**k for k in range(MAX_EXPANSIONS + 1)]
    result = PeakResult(PeakSearch(10.0), 4, 10.0, 8, probes)
    assert result.peak.rate == 80.0 and not result.converged
    assert result.to_dict()["peak_samples_per_s"] == 320.0


def test_a_noisy_pass_above_a_failure_is_not_the_peak() -> None:
    probes = [Probe(r, ok, "", 0.01, r, 1024, 0) for r, ok in ((100, False), (50, True), (75, False), (90, True))]
    assert peak_of(probes).rate == 50


def test_result_round_trips_with_its_confirmation() -> None:
    probes = [Probe(r, ok, "", 0.01, r, 2048, 3, PASS if ok else "fail", 0.02, 2.5, probe_seed(0, i))
              for i, (r, ok) in enumerate(((100, False), (50, True), (75, False), (60, True), (65, False)))]
    confirmation = Probe(60, True, "", 0.011, 60, 4096, 20, PASS, 0.019, 3.0, probe_seed(0, 5))
    result = PeakResult(PeakSearch(40.0, 90.0), 2, 100.0, 8, probes, confirmation=confirmation)
    d = json.loads(json.dumps(result.to_dict()))
    assert d["peak_rate"] == 60 and d["peak_confirmed"] is True and d["peak_latency_high"] == 0.019
    back = PeakResult.from_dict(d)
    assert back.peak.rate == 60 and back.confirmation == confirmation and back.search == result.search
    text = format_search(result)
    assert "confirmation at the peak" in text and "p90 <= 19 ms at confidence 0.99, from 4096 requests" in text


def test_a_peak_no_bound_was_shown_for_is_null_in_strict_json_and_unbounded_in_a_sweep() -> None:
    # A confirmation left undecided has no upper confidence bound (inf in memory). The JSON the CLI and the
    # sweep write says null (Infinity is not JSON), and a sweep reading it back counts it as unbounded.
    undecided = Probe(60, False, "undecided", 0.011, 60, 4096, 41, UNDECIDED, float("inf"), 3.0, probe_seed(0, 2))
    probes = [Probe(100, False, "", 0.05, 100, 2048, 300, "fail"), Probe(60, True, "", 0.01, 60, 2048, 3, PASS, 0.02)]
    result = PeakResult(PeakSearch(40.0, 90.0), 1, 100.0, 8, probes, confirmation=undecided)
    d = json.loads(json_text(result.to_dict()), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert d["peak_rate"] == 60 and d["peak_latency_high"] is None and d["confirmation"]["latency_high_s"] is None
    assert peak_figures(d)["peak_latency_high"] == float("inf")
    assert peak_figures({"peak_rate": 60})["peak_latency_high"] is None  # a file from before the bound: unknown


def test_every_probe_has_its_own_recorded_seed() -> None:
    seeds = {probe_seed(7, i) for i in range(100)}
    assert len(seeds) == 100 and probe_seed(7, 3) == probe_seed(7, 3) and probe_seed(8, 3) != probe_seed(7, 3)


def test_probe_config_is_open_loop_uncapped_and_bounded_in_time() -> None:
    base = ClientConfig(servers=("tcp://127.0.0.1:5555",), batch_size=4, seed=7, concurrency=3)
    search = PeakSearch(50.0, max_probe_s=30.0)
    probe = probe_config(base, 123.0, search, probe_seed(7, 0))
    assert (probe.request_rate, probe.concurrency, probe.num_iters, probe.duration_s) == (123.0, 0, None, 30.0)
    assert probe.arrival == "poisson" and probe.slo_ms == 50.0 and probe.seed == probe_seed(7, 0)
    with pytest.raises(ValueError, match="request_rate"):
        find_peak(dataclasses.replace(probe, concurrency=0, duration_s=None), PeakSearch(50.0))
    with pytest.raises(ValueError, match="processes"):
        find_peak(dataclasses.replace(base, processes=2), PeakSearch(50.0))


def test_search_validates_its_budget() -> None:
    assert PeakSearch(50.0).requests == 64_000 and PeakSearch(50.0, 90.0).requests == 6400
    with pytest.raises(ValueError, match="max_probe_requests"):
        PeakSearch(50.0, max_probe_requests=100)
    with pytest.raises(ValueError, match="confidence"):
        PeakSearch(50.0, confidence=1.5)
    with pytest.raises(ValueError, match="slo_ms"):
        PeakSearch(0.0)


# -- infer-client --find-peak ------------------------------------------------------------

SMALL = ("--batch-size", "1", "--image-size", "32", "--output-file", "")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_cli_prints_the_search_with_its_peak_rate(server_factory, tmp_path) -> None:
    server = server_factory(*sleep_model(3.0))
    json_file = tmp_path / "peak.json"
    proc = run_cli("client", "--server", server.endpoint, *SMALL, "--find-peak", "--slo-ms", "24",
                   "--peak-percentile", "90", "--max-probe-requests", "1024", "--peak-tolerance", "0.2", "--json",
                   "--json-file", str(json_file), timeout=280)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["peak_rate"] > 0 and found["peak_samples_per_s"] == found["peak_rate"]
    assert found["probe_requests"] == 1024 and found["confidence"] == 0.99
    assert found["confirmation"]["rate"] == found["peak_rate"]
    seeds = [p["seed"] for p in found["probes"]] + [found["confirmation"]["seed"]]
    assert len(set(seeds)) == len(seeds)
    assert "peak:" in proc.stdout and "confirmation at the peak" in proc.stdout and "probe 1:" in proc.stderr
    assert json.loads(json_file.read_text())["peak_rate"] == found["peak_rate"]


@pytest.mark.integration
@pytest.mark.parametrize(("args", "named"), [
    (("--find-peak",), "--slo-ms"),
    (("--find-peak", "--slo-ms", "50", "--request-rate", "10"), "--request-rate"),
    (("--find-peak", "--slo-ms", "50", "--peak-percentile", "100"), "--peak-percentile"),
    (("--find-peak", "--slo-ms", "50", "--max-probe-requests", "100"), "--max-probe-requests"),
    (("--find-peak", "--slo-ms", "50", "--duration", "10"), "--duration"),
])
def test_cli_refuses_a_search_it_cannot_run_in_one_line(args: tuple[str, ...], named: str) -> None:
    proc = run_cli("client", "--server", "tcp://127.0.0.1:9", *SMALL, *args, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert named in proc.stderr.strip().splitlines()[-1]
