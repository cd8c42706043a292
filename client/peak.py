"""The peak request rate under a latency objective, as MLPerf LoadGen's Server scenario searches for it.

For one configuration: the highest open-loop (Poisson, seeded) request rate at
which the chosen latency percentile (default p99) stays at or under `--slo-ms`,
the client keeps its schedule and no request fails.

1. A closed-loop probe measures the capacity X: requests/s with several requests
   in flight. No open-loop rate above what the server completes can hold.
2. Bracket: an open-loop probe at X; while it fails, halve the rate until one
   passes; while it passes, double it until one fails (a few times at most).
3. Bisect between the highest passing and the lowest failing rate until they
   are within `tolerance` of each other; the peak is the highest passing rate,
   so the true crossing lies between the peak and peak x (1 + tolerance).

How long a probe is: at least as many requests as LoadGen's early-stopping rule
needs to claim the percentile when no request exceeded the bound
(`early_stopping_min_queries`: 459 for p99). Every probe uses the same seed, so
the schedules at different rates are the same exponential draws scaled by
1/rate: on a server whose service times do not vary, the latency percentile
then rises with the rate, and bisection is sound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from client.config import ClientConfig

if TYPE_CHECKING:
    from client.results import RunResult

EARLY_STOPPING_CONFIDENCE = 0.99  # LoadGen's
MAX_EXPANSIONS = 3  # doublings above the capacity probe's rate before the bracket gives up
MIN_RATE_FRACTION = 1 / 64  # halvings stop below this fraction of the capacity: nothing meets the objective
PLATEAU = 0.9  # ... or once halving the rate no longer cuts the latency percentile by a tenth
CAPACITY_CONCURRENCY = 8  # in flight during the capacity probe, unless --concurrency says more
LAG_FRACTION = 0.5  # a probe whose p99 schedule lag exceeds this share of the objective measured the client
PERCENTILE_KEYS = {"p50": "p50_latency", "p90": "p90_latency", "p95": "p95_latency", "p99": "p99_latency",
                   "p99.9": "p99_9_latency"}  # shown name -> summary row key


def early_stopping_min_queries(percentile: float, over: int = 0, confidence: float = EARLY_STOPPING_CONFIDENCE) -> int:
    """Fewest queries with which LoadGen's early-stopping rule claims `percentile` when `over` exceeded the bound.

    The rule (mlcommons/inference, loadgen/early_stopping.cc): the smallest h such
    that, were exactly a fraction p = percentile/100 of queries under the bound,
    seeing `over` or fewer over it among h + over queries would be less likely
    than 1 - confidence: P[Binomial(h + over, 1 - p) <= over] < 1 - confidence.
    Returns h + over. With none over (the Server scenario's case) that is
    p^h < 0.01: 459 queries for p99, 44 for p90; with one over (its
    SingleStream floor) 662 for p99 and 64 for p90.
    """
    p = percentile / 100.0
    if not 0.0 < p < 1.0:
        raise ValueError(f"percentile must be between 0 and 100 (exclusive), got {percentile!r}")
    if over < 0 or not 0.0 < confidence < 1.0:
        raise ValueError("over must be >= 0 and confidence between 0 and 1")
    bound = 1.0 - confidence

    def too_likely(h: int) -> bool:
        return _binomial_cdf(over, h + over, 1.0 - p) >= bound

    high = 1
    while too_likely(high):  # the probability falls as h grows: double, then bisect
        high *= 2
    low = high // 2 + 1 if high > 1 else 1
    while low < high:
        mid = (low + high) // 2
        if too_likely(mid):
            low = mid + 1
        else:
            high = mid
    return high + over


def _binomial_cdf(k: int, n: int, q: float) -> float:
    """P[X <= k] for X ~ Binomial(n, q), summed in log space so large n do not underflow term by term."""
    log_q, log_not_q = math.log(q), math.log1p(-q)
    total = 0.0
    for x in range(min(k, n) + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) + x * log_q + (n - x) * log_not_q
        total += math.exp(log_term)
    return min(1.0, total)


# -- one probe -------------------------------------------------------------------


@dataclass
class Probe:
    """One open-loop run at a fixed rate, and whether it met the objective."""

    rate: float  # requests/s offered
    passed: bool
    reason: str  # why it failed; empty when it passed
    latency_s: float | None  # at the searched percentile, from each request's scheduled time
    throughput: float  # samples/s answered
    requests: int  # sent
    over_slo: int  # over the objective, failed or lost
    early_stopping_met: bool  # enough requests for LoadGen's rule, given how many were over
    figures: dict[str, Any] = field(default_factory=dict)  # the run's summary row (client/report.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Probe:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def judge(rate: float, result: RunResult, slo_ms: float, percentile: float) -> Probe:
    """A probe's verdict: the percentile at or under the objective, the schedule kept, nothing failed."""
    row = result.summary()
    latency = result.latency.percentile_s(percentile)
    over = result.sent - result.under_slo
    lag = result.schedule_lag.percentile_s(99) or 0.0
    reasons = []
    if result.failed_total or result.lost or not result.complete:
        reasons.append(f"{result.failed_total} failed, {result.lost} lost")
    if result.schedule.client_behind or lag > LAG_FRACTION * slo_ms / 1e3:
        reasons.append(f"client behind its schedule (p99 lag {lag * 1e3:.3g} ms)")
    if latency is None or latency * 1e3 > slo_ms:
        shown = "none answered" if latency is None else f"{latency * 1e3:.4g} ms"
        reasons.append(f"p{percentile:g} {shown} > {slo_ms:g} ms")
    return Probe(
        rate=rate, passed=not reasons, reason="; ".join(reasons), latency_s=latency, throughput=result.throughput,
        requests=result.sent, over_slo=over,
        early_stopping_met=result.sent >= early_stopping_min_queries(percentile, over), figures=row,
    )


# -- the search --------------------------------------------------------------------


@dataclass(frozen=True)
class PeakSearch:
    """What is searched for, and how precisely."""

    slo_ms: float
    percentile: float = 99.0
    tolerance: float = 0.05  # the bracket's final width, as a fraction of the peak
    probe_requests: int | None = None  # per open-loop probe; at least the early-stopping minimum
    capacity_concurrency: int = CAPACITY_CONCURRENCY

    def __post_init__(self) -> None:
        if not self.slo_ms > 0:
            raise ValueError(f"slo_ms (--slo-ms): the peak search needs a positive objective, got {self.slo_ms!r}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile (--peak-percentile): must be > 0 and < 100, got {self.percentile!r}")
        if not 0.001 <= self.tolerance <= 0.5:
            raise ValueError(f"tolerance (--peak-tolerance): must be >= 0.001 and <= 0.5, got {self.tolerance!r}")

    @property
    def min_requests(self) -> int:
        return early_stopping_min_queries(self.percentile)

    @property
    def requests(self) -> int:
        return max(self.min_requests, self.probe_requests or 0)


def bracket_and_bisect(capacity_rps: float, measure: Callable[[float], Probe], tolerance: float) -> list[Probe]:
    """The probes of one search, in the order run; the peak is the highest passing rate below every failing one."""
    probes: list[Probe] = []

    def probe(rate: float) -> Probe:
        probes.append(measure(rate))
        return probes[-1]

    passing, failing = None, None
    rate = capacity_rps
    if probe(rate).passed:
        passing = rate
        for _ in range(MAX_EXPANSIONS):
            rate *= 2
            if not probe(rate).passed:
                failing = rate
                break
            passing = rate
    else:
        failing = rate
        while passing is None and rate / 2 >= capacity_rps * MIN_RATE_FRACTION:
            rate /= 2
            if probe(rate).passed:
                passing = rate
            elif not _queue_shrank(probes[-2], probes[-1]):
                break  # half the load, no less latency: the objective is below the service time itself
            else:
                failing = rate
    while passing is not None and failing is not None and failing - passing > tolerance * passing:
        rate = (passing + failing) / 2
        if probe(rate).passed:
            passing = rate
        else:
            failing = rate
    return probes


def _queue_shrank(higher: Probe, lower: Probe) -> bool:
    """Whether halving the rate cut the latency percentile by a tenth at least.

    While queueing makes the latency, halving the load cuts it by far more than that; once it
    does not, the latency is mostly the service time, which no lower rate shortens, and probes
    at ever lower rates would only take ever longer (each needs its minimum of requests).
    """
    if higher.latency_s is None or lower.latency_s is None:
        return True
    return lower.latency_s < PLATEAU * higher.latency_s


def peak_of(probes: list[Probe]) -> Probe | None:
    """The highest passing probe below the lowest failing one (a noisy pass above a fail does not count)."""
    lowest_fail = min((p.rate for p in probes if not p.passed), default=math.inf)
    passing = [p for p in probes if p.passed and p.rate < lowest_fail]
    return max(passing, key=lambda p: p.rate, default=None)


@dataclass
class PeakResult:
    """A search's answer, and every probe that led to it."""

    search: PeakSearch
    batch_size: int
    capacity_rps: float  # the closed-loop probe's requests/s
    capacity_concurrency: int
    probes: list[Probe]
    peak_run: RunResult | None = None  # the run at the peak, whole (not in to_dict: a sweep stores it apart)

    @property
    def peak(self) -> Probe | None:
        return peak_of(self.probes)

    @property
    def converged(self) -> bool:
        """A failing rate within the tolerance above the peak: the crossing is pinned down."""
        peak = self.peak
        above = [p.rate for p in self.probes if not p.passed and peak is not None and p.rate > peak.rate]
        return bool(above) and min(above) - peak.rate <= self.search.tolerance * peak.rate * (1 + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        peak = self.peak
        at_peak = peak.figures if peak else {}
        return {
            "peak_rate": peak.rate if peak else None,  # requests/s offered at the peak
            "peak_samples_per_s": peak.rate * self.batch_size if peak else None,
            "peak_throughput": peak.throughput if peak else None,  # samples/s answered there
            "peak_latency": peak.latency_s if peak else None,  # at the searched percentile
            **{f"peak_{k}": at_peak.get(k) for k in PERCENTILE_KEYS.values()},
            "peak_gpu_util": at_peak.get("gpu_util"),
            "peak_gpu_mem_peak_bytes": at_peak.get("gpu_mem_peak_bytes"),
            "peak_converged": self.converged,
            "slo_ms": self.search.slo_ms,
            "percentile": self.search.percentile,
            "tolerance": self.search.tolerance,
            "probe_requests": self.search.requests,
            "early_stopping_min_requests": self.search.min_requests,
            "batch_size": self.batch_size,
            "capacity_rps": self.capacity_rps,
            "capacity_concurrency": self.capacity_concurrency,
            "at_peak": at_peak,
            "probes": [p.to_dict() for p in self.probes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeakResult:
        search = PeakSearch(d["slo_ms"], d["percentile"], d["tolerance"], d.get("probe_requests"))
        return cls(search, d["batch_size"], d["capacity_rps"], d["capacity_concurrency"],
                   [Probe.from_dict(p) for p in d["probes"]])

    def format_text(self) -> str:
        s, peak = self.search, self.peak
        lines = [
            f"peak search: p{s.percentile:g} <= {s.slo_ms:g} ms, tolerance {s.tolerance:.0%}, "
            f"{s.requests} requests per probe (LoadGen's early-stopping minimum for p{s.percentile:g}: "
            f"{s.min_requests}); capacity probe {self.capacity_rps:.4g} requests/s at concurrency "
            f"{self.capacity_concurrency}",
            f"{'rate (req/s)':>13} {'verdict':>7} {f'p{s.percentile:g} (ms)':>10} {'samples/s':>10}  reason",
        ]
        for p in self.probes:
            shown = f"{p.latency_s * 1e3:.4g}" if p.latency_s is not None else "n/a"
            lines.append(f"{p.rate:13.4g} {'pass' if p.passed else 'FAIL':>7} {shown:>10} {p.throughput:10.4g}  {p.reason}")
        if peak is None:
            lines.append(f"no rate down to {self.capacity_rps * MIN_RATE_FRACTION:.3g} requests/s met the objective")
        else:
            at = " ".join(f"{name} {peak.figures[k] * 1e3:.4g}" for name, k in PERCENTILE_KEYS.items()
                          if peak.figures.get(k) is not None)
            note = "" if self.converged else " (not converged: no failing rate within the tolerance above it)"
            lines.append(f"peak: {peak.rate:.4g} requests/s = {peak.rate * self.batch_size:.4g} samples/s{note}; "
                         f"latency at it (ms): {at}")
        return "\n".join(lines)


# -- running it against servers ------------------------------------------------------


def check_base(config: ClientConfig) -> None:
    """A configuration the search can vary: ValueError naming the option that contradicts it."""
    if config.request_rate is not None:
        raise ValueError("request_rate (--request-rate): the peak search chooses the rates itself")
    if config.duration_s is not None or config.window_s is not None:
        raise ValueError("duration_s (--duration) / window_s (--window-s): probes are sized in requests")


def probe_config(base: ClientConfig, rate: float, requests: int, slo_ms: float) -> ClientConfig:
    """An open-loop probe: Poisson unless the base asks for another arrival, no in-flight cap, the base's seed."""
    return dataclasses.replace(
        base, request_rate=rate, concurrency=0, num_iters=requests, duration_s=None, window_s=None,
        slo_ms=slo_ms, trace_file=None,
    )


def capacity_config(base: ClientConfig, concurrency: int) -> ClientConfig:
    return dataclasses.replace(
        base, request_rate=None, concurrency=concurrency, num_iters=max(100, 10 * concurrency), duration_s=None,
        window_s=None, trace_file=None,
    )


def find_peak(
    base: ClientConfig,
    search: PeakSearch,
    run: Callable[[ClientConfig], RunResult] | None = None,
    on_probe: Callable[[Probe], None] | None = None,
) -> PeakResult:
    """Search the peak rate for `base`'s servers and client settings (each probe a `client.runner.run`)."""
    check_base(base)
    if run is None:
        from client.runner import run
    concurrency = max(search.capacity_concurrency, base.concurrency or 0)
    capacity = run(capacity_config(base, concurrency))
    if capacity.failed_total or capacity.lost or not capacity.ok:
        raise RuntimeError(f"capacity probe: {capacity.failed_total} requests failed, {capacity.lost} lost")
    capacity_rps = capacity.throughput / capacity.batch_size

    runs: dict[float, RunResult] = {}

    def measure(rate: float) -> Probe:
        runs[rate] = run(probe_config(base, rate, search.requests, search.slo_ms))
        probe = judge(rate, runs[rate], search.slo_ms, search.percentile)
        if on_probe is not None:
            on_probe(probe)
        return probe

    probes = bracket_and_bisect(capacity_rps, measure, search.tolerance)
    peak = peak_of(probes)
    return PeakResult(search, base.batch_size, capacity_rps, concurrency, probes, runs[peak.rate] if peak else None)

