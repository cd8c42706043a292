"""The peak-rate search: LoadGen's early-stopping figures, the bracket-and-bisect logic on a simulated
queue, and the search against a real server whose service time is known (the sleep model).

Predictions come from an M/D/1 queue (Poisson arrivals, one server, a fixed service time D)
simulated on the very schedule the client sends: `arrival_offsets` with the probe's seed and
request count, latencies recorded in the same HdrHistogram the client uses. A real server cannot
serve faster than the simulated one on the same schedule (each request takes at least D and the
round trip adds time), so the simulated crossing bounds the found peak from above exactly; the
lower bound allows for what the simulation leaves out, stated where it is asserted.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from client.config import ClientConfig
from client.loadgen import arrival_offsets
from client.metrics import LatencyStats
from client.peak import (
    MAX_EXPANSIONS,
    PeakResult,
    PeakSearch,
    Probe,
    bracket_and_bisect,
    early_stopping_min_queries,
    find_peak,
    judge,
    peak_of,
    probe_config,
)
from client.runner import run
from tests.conftest import run_cli, sleep_model

SEED = 0


def md1_percentile(rate: float, service_s: float, requests: int, percentile: float, seed: int = SEED) -> float:
    """The latency percentile (s) of an M/D/1 queue fed the client's seeded Poisson schedule."""
    stats, done = LatencyStats(), 0.0
    for arrival in arrival_offsets(requests, rate, "poisson", 1.0, seed):
        done = max(arrival, done) + service_s  # Lindley: wait for the previous request, then be served
        stats.record(round((done - arrival) * 1e9))
    return stats.percentile_s(percentile)


def md1_crossing(service_s: float, slo_s: float, requests: int, percentile: float) -> float:
    """The highest rate at which the simulated percentile stays at or under the objective.

    With one seed the schedules at different rates are the same exponential draws scaled, so
    every wait grows with the rate (Lindley's recursion is monotone in the gaps) and bisection
    finds the crossing exactly."""
    low, high = 0.01 / service_s, 1.0 / service_s  # a rate at capacity never holds a bound
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if md1_percentile(mid, service_s, requests, percentile) <= slo_s else (low, mid)
    return low


# -- LoadGen's early-stopping rule -------------------------------------------------------


def test_early_stopping_minimums_are_loadgens() -> None:
    # None over the bound (the Server scenario): 0.99^h < 0.01 first at h = 459; 0.9^h at 44.
    assert early_stopping_min_queries(99) == 459
    assert early_stopping_min_queries(90) == 44
    # One over (SingleStream's floor): 662 for p99, 64 for p90.
    assert early_stopping_min_queries(99, over=1) == 662
    assert early_stopping_min_queries(90, over=1) == 64
    # Each query over the bound needs more under it to compensate, and a higher percentile more queries.
    needed = [early_stopping_min_queries(99, over=t) for t in range(6)]
    assert needed == sorted(needed) and len(set(needed)) == 6
    assert early_stopping_min_queries(99.9) > early_stopping_min_queries(99) > early_stopping_min_queries(95)


@pytest.mark.parametrize("bad", [0, 100, -1, 101])
def test_early_stopping_refuses_percentiles_outside_0_100(bad: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        early_stopping_min_queries(bad)


def test_probes_are_at_least_the_early_stopping_minimum() -> None:
    assert PeakSearch(50.0).requests == 459
    assert PeakSearch(50.0, probe_requests=100).requests == 459
    assert PeakSearch(50.0, percentile=90, probe_requests=200).requests == 200
    with pytest.raises(ValueError, match="slo_ms"):
        PeakSearch(0.0)


# -- the search, on a simulated server -------------------------------------------------------


def simulated(service_s: float, slo_s: float, requests: int, percentile: float):
    def measure(rate: float) -> Probe:
        latency = md1_percentile(rate, service_s, requests, percentile)
        ok = latency <= slo_s
        return Probe(rate, ok, "" if ok else "over", latency, rate, requests, 0, True)

    return measure


@pytest.mark.parametrize("slo_multiple", [3, 6, 12])
def test_search_on_a_simulated_queue_ends_within_its_tolerance_below_the_crossing(slo_multiple: int) -> None:
    service_s, requests, tolerance = 0.005, 459, 0.05
    slo_s = slo_multiple * service_s
    crossing = md1_crossing(service_s, slo_s, requests, 99)
    probes = bracket_and_bisect(1 / service_s, simulated(service_s, slo_s, requests, 99), tolerance)
    peak = peak_of(probes)
    assert peak is not None
    # The peak passes, so it is at most the crossing; a failing rate lies within the tolerance above it.
    assert crossing / (1 + tolerance) <= peak.rate <= crossing
    assert len(probes) <= 2 + 6  # bracket (capacity, half) and log2(1 / 0.05) bisections at most


def test_search_reports_no_peak_when_nothing_meets_the_objective() -> None:
    # An objective shorter than the service time: no rate can meet it. Once halving the rate no
    # longer shortens the latency (it is the service time), the search stops instead of probing
    # ever lower rates, each of which would take twice as long as the one before.
    probes = bracket_and_bisect(200.0, simulated(0.005, 0.004, 100, 99), 0.05)
    assert peak_of(probes) is None and all(not p.passed for p in probes)
    assert min(p.rate for p in probes) > 200.0 / 64 and probes[-1].latency_s >= 0.9 * probes[-2].latency_s


def test_search_stops_doubling_when_everything_passes() -> None:
    probes = bracket_and_bisect(10.0, lambda rate: Probe(rate, True, "", 0.001, rate, 500, 0, True), 0.05)
    assert [p.rate for p in probes] == [10.0 * 2**k for k in range(MAX_EXPANSIONS + 1)]
    result = PeakResult(PeakSearch(10.0), 4, 10.0, 8, probes)
    assert result.peak.rate == 80.0 and not result.converged
    assert result.to_dict()["peak_samples_per_s"] == 320.0


def test_a_noisy_pass_above_a_failure_is_not_the_peak() -> None:
    probes = [Probe(r, ok, "", 0.01, r, 500, 0, True) for r, ok in ((100, False), (50, True), (75, False), (90, True))]
    assert peak_of(probes).rate == 50


def test_probe_config_is_open_loop_uncapped_with_the_base_seed() -> None:
    base = ClientConfig(servers=("tcp://127.0.0.1:5555",), batch_size=4, seed=7, concurrency=3)
    probe = probe_config(base, 123.0, 459, 50.0)
    assert (probe.request_rate, probe.concurrency, probe.num_iters, probe.seed) == (123.0, 0, 459, 7)
    assert probe.arrival == "poisson" and probe.slo_ms == 50.0
    with pytest.raises(ValueError, match="request_rate"):
        find_peak(dataclasses.replace(probe, concurrency=0), PeakSearch(50.0))


# -- against a real server of known service time ---------------------------------------------------

SERVICE_MS = 10.0
# p90 rather than the default p99: the p99 of a few hundred requests is their few largest
# latencies, which a handful of scheduling hiccups on a shared 2-core machine move; the p90 needs
# a tenth of the requests delayed. The search itself is the same for every percentile.
PERCENTILE = 90.0
SLO_MS = 4 * SERVICE_MS  # the crossing sits near 90% of capacity: a few seconds per probe
REQUESTS = 200  # >= the early-stopping minimum for p90 (44)


@pytest.mark.timeout(240)
def test_peak_is_the_md1_prediction_and_20_percent_above_it_breaks_the_objective(server_factory) -> None:
    server = server_factory(*sleep_model(SERVICE_MS))
    base = ClientConfig(servers=(server.endpoint,), batch_size=1, image_size=32, seed=SEED)
    search = PeakSearch(SLO_MS, PERCENTILE, tolerance=0.05, probe_requests=REQUESTS)
    result = find_peak(base, search)
    peak = result.peak
    assert peak is not None, result.format_text()
    text = result.format_text()

    # The capacity probe sees the sleep model's service time: never faster, and a busy machine adds
    # its own per-request time (GIL hand-offs, scheduling) of at most a quarter of it.
    service_s = SERVICE_MS / 1e3
    assert 0.75 / service_s <= result.capacity_rps <= 1.02 / service_s, text

    # Upper bound, exact: on the same schedule no server with service time >= S answers sooner than
    # the simulated one, so no rate above the simulated crossing can pass (1% for HdrHistogram's rounding).
    ideal = md1_crossing(service_s, SLO_MS / 1e3, REQUESTS, PERCENTILE)
    assert peak.rate <= 1.01 * ideal, text
    # Lower bound: the crossing for the service time the server delivered (1 / capacity), less the
    # search's tolerance (5%) and 10% for what M/D/1 leaves out: the ~1 ms round trip outside the
    # server and the jitter a shared machine adds to each service time (M/G/1 queues more than M/D/1).
    delivered = md1_crossing(1 / result.capacity_rps, SLO_MS / 1e3, REQUESTS, PERCENTILE)
    assert peak.rate >= 0.85 * delivered / 1.05, text
    assert result.converged and peak.passed, text

    # 20% above the peak (beyond the search's 5% and the 10% allowance) the objective breaks.
    above = run(probe_config(base, 1.2 * peak.rate, REQUESTS, SLO_MS))
    verdict = judge(1.2 * peak.rate, above, SLO_MS, PERCENTILE)
    assert not verdict.passed and verdict.latency_s * 1e3 > SLO_MS, (verdict, text)

    d = result.to_dict()
    assert d["peak_rate"] == peak.rate and d["peak_samples_per_s"] == peak.rate
    assert [p["rate"] for p in d["probes"]] == [p.rate for p in result.probes]
    assert PeakResult.from_dict(d).peak.rate == peak.rate


# -- infer-client --find-peak ------------------------------------------------------------

SMALL = ("--batch-size", "1", "--image-size", "32", "--output-file", "")


@pytest.mark.timeout(180)
def test_cli_prints_the_search_with_its_peak_rate(server_factory, tmp_path) -> None:
    server = server_factory(*sleep_model(5.0))
    json_file = tmp_path / "peak.json"
    proc = run_cli("client", "--server", server.endpoint, *SMALL, "--find-peak", "--slo-ms", "40",
                   "--peak-percentile", "90", "--num-iters", "100", "--peak-tolerance", "0.2", "--json",
                   "--json-file", str(json_file))
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["peak_rate"] > 0 and found["peak_samples_per_s"] == found["peak_rate"]
    assert found["probe_requests"] == 100 and found["early_stopping_min_requests"] == 44
    assert "peak:" in proc.stdout and "probe 1:" in proc.stderr
    assert json.loads(json_file.read_text())["peak_rate"] == found["peak_rate"]


@pytest.mark.parametrize(("args", "named"), [
    (("--find-peak",), "--slo-ms"),
    (("--find-peak", "--slo-ms", "50", "--request-rate", "10"), "--request-rate"),
    (("--find-peak", "--slo-ms", "50", "--peak-percentile", "100"), "--peak-percentile"),
])
def test_cli_refuses_a_search_it_cannot_run_in_one_line(args: tuple[str, ...], named: str) -> None:
    proc = run_cli("client", "--server", "tcp://127.0.0.1:9", *SMALL, *args, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert named in proc.stderr.strip().splitlines()[-1]
