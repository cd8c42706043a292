"""The peak request rate under a latency objective, as MLPerf LoadGen's Server scenario searches for it.

For one configuration: the highest open-loop (Poisson) request rate at which
the chosen latency percentile (default p99) is shown, at a stated confidence
(default 0.99), to stay at or under `--slo-ms`, while the client keeps its
schedule and no request fails.

1. A closed-loop probe measures the capacity X: requests/s with several requests
   in flight. No open-loop rate above what the server completes can hold.
2. Bracket: an open-loop probe at X; while it fails, halve the rate until one
   passes; while it passes, double it until one fails (a few times at most).
3. Bisect between the highest passing and the lowest failing rate until they
   are within `tolerance` of each other; the peak is the highest passing rate.
4. Confirm: one more probe at the peak, on a schedule of its own.

Each probe runs until client/verdict.py's sequential test decides (pass: the
share of requests over the bound shown under 1 - P/100; fail: shown over) or
its budget (`max_probe_requests`, `max_probe_s`) runs out; an undecided probe
counts as failed. Each probe draws its own arrival schedule, from a seed derived
from the run's seed and the probe's index (recorded), so no single lucky sample
path decides every probe. Probes start with an empty queue; the verdict needs
no warm-up cut for that (client/verdict.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from client.config import ClientConfig
from client.validity import invalid_reasons
from client.verdict import DEFAULT_CONFIDENCE, PASS, Decision, TailObjective, TailSample

if TYPE_CHECKING:
    from client.results import RunResult

MAX_EXPANSIONS = 3  # doublings above the capacity probe's rate before the bracket gives up
MIN_RATE_FRACTION = 1 / 64  # halvings stop below this fraction of the capacity: nothing meets the objective
PLATEAU = 0.9  # ... or once halving the rate no longer cuts the latency percentile by a tenth
CAPACITY_CONCURRENCY = 8  # in flight during the capacity probe, unless --concurrency says more
DEFAULT_MAX_PROBE_S = 600.0
PERCENTILE_KEYS = {"p50": "p50_latency", "p90": "p90_latency", "p95": "p95_latency", "p99": "p99_latency",
                   "p99.9": "p99_9_latency"}  # shown name -> summary row key


def probe_seed(run_seed: int, index: int) -> int:
    """Probe `index`'s arrival seed: a distinct, reproducible stream per (run seed, probe)."""
    return int(np.random.SeedSequence([run_seed & 0xFFFFFFFF, index]).generate_state(1)[0])


# -- one probe -------------------------------------------------------------------


@dataclass
class Probe:
    """One open-loop run at a fixed rate, and whether it met the objective."""

    rate: float  # requests/s offered
    passed: bool
    reason: str  # why it failed (or stayed undecided); empty when it passed
    latency_s: float | None  # the judged requests' percentile, from each request's scheduled time
    throughput: float  # samples/s answered
    requests: int  # judged by the verdict
    over_slo: int  # over the objective, failed or lost
    verdict: str = ""  # pass, fail or undecided (the statistical verdict; `passed` also needs the schedule kept)
    latency_high_s: float | None = None  # upper confidence bound of the percentile (inf: none yet)
    dispersion: float | None = None  # burst size: variance of the over-count / the binomial variance
    seed: int | None = None  # the probe's arrival seed
    seconds: float | None = None  # how long it ran
    figures: dict[str, Any] = field(default_factory=dict)  # the run's summary row

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Probe:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def final_decision(tail: TailSample, lost: int) -> Decision:
    """The probe's verdict: the look that ended it, else one more over every request answered (and the lost)."""
    d = tail.decision
    if d is not None and (d.ends_probe or (d.requests >= tail.prefix and not lost)):
        return d
    return tail.look(final=True, lost=lost)


def judge(rate: float, result: RunResult, tail: TailSample, seed: int | None = None) -> Probe:
    """A probe's verdict: the tail test passed, and the run valid (the client kept up, nothing failed)."""
    decision = final_decision(tail, result.lost)
    reasons = invalid_reasons(result, objective_s=tail.objective.bound_s)
    if decision.verdict != PASS:
        reasons.append(decision.reason)
    return Probe(
        rate=rate, passed=not reasons, reason="; ".join(reasons), latency_s=decision.percentile_s,
        throughput=result.throughput, requests=decision.requests, over_slo=decision.over, verdict=decision.verdict,
        latency_high_s=decision.percentile_high_s, dispersion=decision.dispersion, seed=seed,
        seconds=result.duration_s, figures=result.summary(),
    )


# -- the search --------------------------------------------------------------------


@dataclass(frozen=True)
class PeakSearch:
    """What is searched for, how surely, and how precisely."""

    slo_ms: float
    percentile: float = 99.0
    tolerance: float = 0.05  # the bracket's final width, as a fraction of the peak
    confidence: float = DEFAULT_CONFIDENCE  # of each probe's verdict
    max_probe_requests: int | None = None  # per probe; default 640 / (1 - percentile/100)
    max_probe_s: float = DEFAULT_MAX_PROBE_S  # per probe; an undecided probe at this limit counts as failed
    capacity_concurrency: int = CAPACITY_CONCURRENCY
    confirm: bool = True  # one more probe at the peak, on a fresh schedule

    def __post_init__(self) -> None:
        for name in PEAK_KEYS:  # a sweep file's [peak] table arrives as parsed TOML
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | type(None)):
                raise ValueError(f"{name}: must be a number, got {value!r}")
        if not self.slo_ms > 0:
            raise ValueError(f"slo_ms (--slo-ms): the peak search needs a positive objective, got {self.slo_ms!r}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile (--peak-percentile): must be > 0 and < 100, got {self.percentile!r}")
        if not 0.001 <= self.tolerance <= 0.5:
            raise ValueError(f"tolerance (--peak-tolerance): must be >= 0.001 and <= 0.5, got {self.tolerance!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence (--peak-confidence): must be >= 0.5 and < 1, got {self.confidence!r}")
        if not self.max_probe_s > 0:
            raise ValueError(f"max_probe_s (--max-probe-s): must be > 0, got {self.max_probe_s!r}")
        minimum = TailObjective(self.slo_ms / 1e3, self.percentile, self.confidence).min_requests
        if self.max_probe_requests is not None and self.max_probe_requests < minimum:
            raise ValueError(f"max_probe_requests (--max-probe-requests): a p{self.percentile:g} verdict at "
                             f"confidence {self.confidence:g} needs at least {minimum}, got {self.max_probe_requests}")

    @property
    def objective(self) -> TailObjective:
        return TailObjective(self.slo_ms / 1e3, self.percentile, self.confidence, self.max_probe_requests)

    @property
    def requests(self) -> int:
        """The most requests one probe sends."""
        return self.objective.request_limit

    @property
    def min_rate(self) -> float:
        """The lowest rate at which a probe can send the fewest requests a verdict needs within max_probe_s."""
        return self.objective.min_requests / self.max_probe_s


# The settings a sweep's [peak] table may give (the rest are fixed).
PEAK_KEYS = ("slo_ms", "percentile", "tolerance", "confidence", "max_probe_requests", "max_probe_s")


def bracket_and_bisect(capacity_rps: float, measure: Callable[[float], Probe], tolerance: float,
                       min_rate: float = 0.0) -> list[Probe]:
    """The probes of one search, in the order run; the peak is the highest passing rate below every failing one.

    Halving stops above `min_rate`, below which a probe cannot send the requests its verdict needs
    within its time (`PeakSearch.min_rate`)."""
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
        while passing is None and rate / 2 >= max(capacity_rps * MIN_RATE_FRACTION, min_rate):
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
    """A search's answer, every probe that led to it, and the confirmation run at the answer."""

    search: PeakSearch
    batch_size: int
    capacity_rps: float  # the closed-loop probe's requests/s
    capacity_concurrency: int
    probes: list[Probe]
    peak_run: RunResult | None = None  # the confirmation's run (else the peak probe's), whole: not in to_dict
    confirmation: Probe | None = None

    @property
    def peak(self) -> Probe | None:
        return peak_of(self.probes)

    @property
    def converged(self) -> bool:
        """A failing rate within the tolerance above the peak: the crossing is pinned down."""
        peak = self.peak
        above = [p.rate for p in self.probes if not p.passed and peak is not None and p.rate > peak.rate]
        return bool(above) and min(above) - peak.rate <= self.search.tolerance * peak.rate * (1 + 1e-9)

    @property
    def at_peak(self) -> Probe | None:
        """The figures reported at the peak: the confirmation's, else the peak probe's."""
        return self.confirmation or self.peak

    def to_dict(self) -> dict[str, Any]:
        peak, at = self.peak, self.at_peak
        figures = at.figures if at else {}
        s = self.search
        return {
            "peak_rate": peak.rate if peak else None,  # requests/s offered at the peak
            "peak_samples_per_s": peak.rate * self.batch_size if peak else None,
            "peak_throughput": at.throughput if at else None,  # samples/s answered there
            "peak_latency": at.latency_s if at else None,  # at the searched percentile
            "peak_latency_high": at.latency_high_s if at else None,  # its upper confidence bound
            **{f"peak_{k}": figures.get(k) for k in PERCENTILE_KEYS.values()},
            "peak_gpu_util": figures.get("gpu_util"),
            "peak_gpu_mem_peak_bytes": figures.get("gpu_mem_peak_bytes"),
            "peak_converged": self.converged,
            "peak_confirmed": self.confirmation.passed if self.confirmation else None,
            "slo_ms": s.slo_ms,
            "percentile": s.percentile,
            "tolerance": s.tolerance,
            "confidence": s.confidence,
            "max_probe_requests": s.max_probe_requests,
            "max_probe_s": s.max_probe_s,
            "probe_requests": s.requests,  # the most one probe sends
            "min_probe_requests": s.objective.min_requests,
            "batch_size": self.batch_size,
            "capacity_rps": self.capacity_rps,
            "capacity_concurrency": self.capacity_concurrency,
            "at_peak": figures,
            "probes": [p.to_dict() for p in self.probes],
            "confirmation": self.confirmation.to_dict() if self.confirmation else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeakResult:
        search = PeakSearch(d["slo_ms"], d["percentile"], d["tolerance"], d.get("confidence", DEFAULT_CONFIDENCE),
                            d.get("max_probe_requests"), d.get("max_probe_s", DEFAULT_MAX_PROBE_S))
        confirmation = Probe.from_dict(d["confirmation"]) if d.get("confirmation") else None
        return cls(search, d["batch_size"], d["capacity_rps"], d["capacity_concurrency"],
                   [Probe.from_dict(p) for p in d["probes"]], None, confirmation)


# -- running it against servers ------------------------------------------------------


def check_base(config: ClientConfig) -> None:
    """A configuration the search can vary: ValueError naming the option that contradicts it."""
    if config.request_rate is not None:
        raise ValueError("request_rate (--request-rate): the peak search chooses the rates itself")
    if config.duration_s is not None or config.window_s is not None:
        raise ValueError("duration_s (--duration) / window_s (--window-s): each probe runs until its verdict is "
                         "decided, within --max-probe-requests and --max-probe-s")
    if config.processes > 1:
        raise ValueError("processes (--processes): a probe's verdict needs every request's times in one process")


def probe_config(base: ClientConfig, rate: float, search: PeakSearch, seed: int) -> ClientConfig:
    """An open-loop probe: Poisson unless the base asks for another arrival, no in-flight cap, its own seed.

    It runs for at most max_probe_s; its TailSample ends it sooner, once decided or at max_probe_requests."""
    return dataclasses.replace(
        base, request_rate=rate, concurrency=0, num_iters=None, duration_s=search.max_probe_s,
        window_s=None, slo_ms=search.slo_ms, trace_file=None, seed=seed,
    )


def capacity_config(base: ClientConfig, concurrency: int) -> ClientConfig:
    return dataclasses.replace(
        base, request_rate=None, concurrency=concurrency, num_iters=max(100, 10 * concurrency), duration_s=None,
        window_s=None, trace_file=None,
    )


Runner = Callable[..., "RunResult"]  # client.runner.run(config, tail=TailSample)


def find_peak(
    base: ClientConfig,
    search: PeakSearch,
    run: Runner | None = None,
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

    runs: list[RunResult] = []

    def measure(rate: float) -> Probe:
        seed = probe_seed(base.seed, len(runs))
        tail = TailSample(search.objective)
        runs.append(run(probe_config(base, rate, search, seed), tail=tail))
        probe = judge(rate, runs[-1], tail, seed)
        if on_probe is not None:
            on_probe(probe)
        return probe

    probes = bracket_and_bisect(capacity_rps, measure, search.tolerance, search.min_rate)
    peak = peak_of(probes)
    if peak is None:
        return PeakResult(search, base.batch_size, capacity_rps, concurrency, probes)
    peak_run = runs[probes.index(peak)]
    confirmation = None
    if search.confirm:
        confirmation = measure(peak.rate)
        peak_run = runs[-1]
    return PeakResult(search, base.batch_size, capacity_rps, concurrency, probes, peak_run, confirmation)
