"""Whether a latency percentile meets its bound: a sequential test that holds on a queue.

The question "is p99 of latency <= B?" is "is the share of requests over B below
q = 1%?". Requests over a bound come in bursts: one busy period puts tens of
consecutive requests over it, so counting them as independent coin flips (a
binomial test, LoadGen's early-stopping rule) is overconfident by the burst size,
20-50x near the crossing of an M/M/1 queue (docs/metrics.md, "Tail verdicts").

What this test does instead, on the requests in the order they were sent:

* **Regenerative batches.** A request sent while none of ours was in flight
  found the system empty: what came before cannot influence what follows, so
  the run splits there into independent cycles (busy periods). Consecutive
  cycles are grouped into about `BATCHES` batches; the share over the bound is
  the ratio of their sums. An empty system is also where the probe starts, so
  the start needs no warm-up cut (checked by simulation, docs/metrics.md).
* **Burst size measured where bursts are common.** The variance of a batch's
  over-count, as a multiple of the binomial one (the dispersion), is estimated
  at the bound and at a lower latency level that about `LEVEL_SHARES` x q of
  requests exceed. Excursions over a high level look alike whatever the level,
  so the lower level sees the burst size even before the bound has been crossed
  often enough to show it; the larger estimate is used, at its upper confidence
  bound (`DISPERSION_CONFIDENCE`).
* **A score test at the objective.** Under "share = q" the over-count of N
  requests has variance phi q (1 - q) N. The verdict passes when the count is
  below q N by `t` standard deviations, fails when above by as many, and stays
  undecided otherwise; `t` is Student's quantile for the batches' degrees of
  freedom at (1 - confidence) / LOOKS, so the LOOKS looks together keep the
  stated confidence (Bonferroni).
* **Looks** at N_max/16, /8, /4, /2 and N_max requests (those above `min_requests`),
  or earlier when the run ends by time. From the second look on, a probe whose
  pass is out of reach (the share at or over q, or needing over FUTILITY_MARGIN
  times its request limit at the share and dispersion measured) stops as
  undecided.

The measured false-pass rate on M/M/1 and M/D/1 queues is in docs/metrics.md
and checked by tests/client/test_verdict.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

BATCHES = 32  # regenerative batches per look: ~30 is where batch means' t intervals hold (Schmeiser 1982)
MIN_BATCHES = 16  # fewer than this (too few idle moments) and the look decides nothing
LOOKS = 5  # N_max / 16 ... N_max
LEVEL_SHARES = 10  # the lower level for the dispersion: exceeded by about 10 q of requests (at most half)
MIN_REQUESTS = 1024  # no look before this many, whatever the percentile
# The dispersion is estimated from BATCHES batches whose sums are skewed (a few hold the bursts), so it is
# taken at this one-sided upper confidence bound (chi-square): at 88% utilisation (an M/M/1 p90 crossing)
# the point estimate let 5.3% of probes at the crossing pass, the bound 1.3% (docs/metrics.md).
DISPERSION_CONFIDENCE = 0.90
# A probe stops as undecided after its second look when, at the share and dispersion measured so far, a pass
# would need more than this many times its request limit: near the crossing such probes would otherwise run to
# the limit and end undecided anyway.
FUTILITY_MARGIN = 2.0
DEFAULT_CONFIDENCE = 0.99  # LoadGen's
PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"


def student_t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion around the normal one; within 0.5% for df >= 10, p < 0.9999)."""
    if df < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"need df >= 1 and 0 < p < 1, got df={df!r} p={p!r}")
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def chi2_quantile(p: float, df: int) -> float:
    """The chi-square quantile (Wilson-Hilferty; within 1% for df >= 10 and 0.01 <= p <= 0.99)."""
    z = NormalDist().inv_cdf(p)
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


@dataclass(frozen=True)
class TailObjective:
    """The claim under test: the `percentile` of latency is at or under `bound_s`, at `confidence`."""

    bound_s: float
    percentile: float = 99.0
    confidence: float = DEFAULT_CONFIDENCE
    max_requests: int | None = None  # per probe; default 640 / q (64,000 for p99)

    def __post_init__(self) -> None:
        if not self.bound_s > 0:
            raise ValueError(f"the latency bound must be > 0 s, got {self.bound_s!r}")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be > 0 and < 100, got {self.percentile!r}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be >= 0.5 and < 1, got {self.confidence!r}")
        if self.max_requests is not None and self.max_requests < self.min_requests:
            raise ValueError(f"max_requests must be >= {self.min_requests} for p{self.percentile:g}, "
                             f"got {self.max_requests!r}")

    @property
    def q(self) -> float:
        """The share of requests allowed over the bound."""
        return 1.0 - self.percentile / 100.0

    @property
    def min_requests(self) -> int:
        """Fewest requests a look needs: with none over and no bursts, a pass needs t^2 phi (1 - q) / q, phi
        being the binomial variance's multiple at its upper confidence bound."""
        df = BATCHES - 1
        t = student_t_quantile(1 - (1 - self.confidence) / LOOKS, df)
        phi = df / chi2_quantile(1 - DISPERSION_CONFIDENCE, df)
        return max(MIN_REQUESTS, math.ceil(t * t * phi * (1 - self.q) / self.q))

    @property
    def request_limit(self) -> int:
        return self.max_requests or max(self.min_requests, round(640 / self.q))

    def looks(self) -> list[int]:
        """Request counts at which the verdict is looked at (the last one is the limit)."""
        limit = self.request_limit
        counts = [limit // 2**j for j in range(LOOKS - 1, -1, -1)]
        return [n for n in counts if n >= self.min_requests] or [limit]


@dataclass(frozen=True)
class Decision:
    """A look's outcome, with what it rests on."""

    verdict: str  # PASS, FAIL or UNDECIDED
    requests: int  # judged: the first `requests` sent, all answered, failed or lost
    over: int  # of them over the bound (failed and lost count as over)
    dispersion: float  # the over-count's variance / the binomial variance (>= 1)
    batches: int
    percentile_s: float | None  # the sample's percentile
    percentile_high_s: float | None  # upper confidence bound of the percentile (inf: none yet)
    percentile_low_s: float | None  # lower confidence bound
    reason: str = ""
    ends_probe: bool = False  # decided, or undecided with no reasonable chance of a pass within the budget

    @property
    def share(self) -> float:
        return self.over / self.requests if self.requests else math.nan


@dataclass
class TailSample:
    """Per-request send and receive times of one probe, indexed by request id (0, 1, ...).

    Written by the client's metrics thread only (`record`, `record_failed`); looked
    at from the same thread (`look_due`, `decide`).
    """

    objective: TailObjective
    scheduled_ns: np.ndarray = field(init=False)
    sent_ns: np.ndarray = field(init=False)
    recv_ns: np.ndarray = field(init=False)
    done: np.ndarray = field(init=False)
    failed: np.ndarray = field(init=False)
    prefix: int = 0  # requests 0 .. prefix-1 are all answered
    looks_taken: int = 0
    decision: Decision | None = None

    def __post_init__(self) -> None:
        n = self.objective.request_limit
        self.scheduled_ns = np.zeros(n, np.int64)
        self.sent_ns = np.zeros(n, np.int64)
        self.recv_ns = np.zeros(n, np.int64)
        self.done = np.zeros(n, bool)
        self.failed = np.zeros(n, bool)

    def record(self, request_id: int, scheduled_ns: int, sent_ns: int, recv_ns: int) -> None:
        if 0 <= request_id < len(self.done):
            self.scheduled_ns[request_id], self.sent_ns[request_id] = scheduled_ns, sent_ns
            self.recv_ns[request_id], self.done[request_id] = recv_ns, True

    def record_failed(self, request_id: object, recv_ns: int) -> None:
        if isinstance(request_id, int) and 0 <= request_id < len(self.done):
            self.recv_ns[request_id], self.done[request_id], self.failed[request_id] = recv_ns, True, True

    def look_due(self) -> bool:
        """Whether the next scheduled look's requests have all been answered (advances the prefix)."""
        while self.prefix < len(self.done) and self.done[self.prefix]:
            self.prefix += 1
        looks = self.objective.looks()
        return self.looks_taken < len(looks) and self.prefix >= looks[self.looks_taken]

    def look(self, final: bool = False, lost: int = 0) -> Decision:
        """The next look (at its scheduled count), or with `final` at every request answered so far."""
        looks = self.objective.looks()
        n = self.prefix if final else looks[min(self.looks_taken, len(looks) - 1)]
        self.looks_taken += 1
        last = final or self.looks_taken >= len(looks)
        decision = decide(self.objective, self.latencies_s(n), self.idle_at_send(n), lost=lost,
                          futile_check=self.looks_taken >= 2 and not last)
        self.decision = dataclasses.replace(decision, ends_probe=True) if last else decision
        return self.decision

    def latencies_s(self, n: int) -> np.ndarray:
        """Latency from the scheduled send time; failed requests as +inf."""
        lat = (self.recv_ns[:n] - self.scheduled_ns[:n]) / 1e9
        return np.where(self.failed[:n], np.inf, lat)

    def idle_at_send(self, n: int) -> np.ndarray:
        """Whether each request was sent while none before it was still in flight (the system empty)."""
        answered_by = np.maximum.accumulate(self.recv_ns[:n])
        idle = np.ones(n, bool)
        idle[1:] = answered_by[:-1] <= self.sent_ns[1:n]
        return idle


def decide(objective: TailObjective, latencies_s: np.ndarray, idle: np.ndarray, lost: int = 0,
           futile_check: bool = False) -> Decision:
    """The verdict on requests in send order: their latencies (inf: failed) and whether each found the system idle.

    `lost` requests (never answered) are added as over the bound.
    """
    q, bound = objective.q, objective.bound_s
    n = len(latencies_s) + lost
    if n == 0:
        return Decision(UNDECIDED, 0, 0, 1.0, 0, None, None, None, "undecided: no request answered")
    lat = np.concatenate([latencies_s, np.full(lost, np.inf)]) if lost else latencies_s
    idle = np.concatenate([idle, np.zeros(lost, bool)]) if lost else idle
    over_bound = lat > bound
    level = min(float(np.quantile(lat, 1 - min(0.5, LEVEL_SHARES * q))), bound)
    sizes, (over, over_level) = regenerative_batches(idle, [over_bound, lat > level])
    batches = len(sizes)
    phi = max(1.0, dispersion(over, sizes), dispersion(over_level, sizes))
    total_over = int(over.sum())
    finite = np.sort(lat)
    rarely_idle = batches < MIN_BATCHES
    if rarely_idle:  # no independent batches: consecutive ones, good enough to show an overload, never a pass
        sizes, (over, over_level) = index_batches(n, [over_bound, lat > level])
        batches = len(sizes)
        phi = max(1.0, dispersion(over, sizes), dispersion(over_level, sizes))
    phi *= (batches - 1) / chi2_quantile(1 - DISPERSION_CONFIDENCE, batches - 1)  # its upper confidence bound
    t = student_t_quantile(1 - (1 - objective.confidence) / LOOKS, batches - 1)
    sd_share = t * math.sqrt(phi * q * (1 - q) / n)
    high, low = _quantile(finite, 1 - q + sd_share), _quantile(finite, 1 - q - sd_share)
    estimate = _quantile(finite, 1 - q)
    figures = (n, total_over, phi, batches, estimate, high, low)
    over_text = f"{total_over / n:.2%} over {bound * 1e3:.4g} ms"
    busy_tail = n - int(np.flatnonzero(idle)[-1]) if idle.any() else n
    if total_over >= n * (q + sd_share):
        return Decision(FAIL, *figures, reason=f"{over_text}, shown > {q:.2%}", ends_probe=True)
    if rarely_idle:
        return Decision(UNDECIDED, *figures, reason=f"undecided: {over_text}; the system was idle only "
                        f"{int(idle.sum())} times in {n} requests, too few independent stretches to show a pass")
    if total_over <= n * (q - sd_share) and busy_tail <= n / BATCHES:
        return Decision(PASS, *figures, ends_probe=True)
    if busy_tail > n / BATCHES:
        return Decision(UNDECIDED, *figures, reason=f"undecided: {over_text}; the system was not idle in its last "
                        f"{busy_tail} requests, so the queue may still be growing")
    if futile_check and _out_of_reach(objective, total_over / n, phi, t):
        return Decision(UNDECIDED, *figures, reason=f"undecided: {over_text} after {n} requests, not to be shown "
                        f"under {q:.2%} within the budget", ends_probe=True)
    return Decision(UNDECIDED, *figures, reason=f"undecided: {over_text}, neither shown under nor over {q:.2%} "
                    f"after {n} requests")


def _out_of_reach(objective: TailObjective, share: float, phi: float, t: float) -> bool:
    """Whether a pass is out of reach: the share at or over q, or, were it to stay as measured, a pass would
    need over FUTILITY_MARGIN times the probe's request limit (t^2 phi q (1 - q) / (q - share)^2 requests)."""
    q = objective.q
    if share >= q:
        return True
    needed = t * t * phi * q * (1 - q) / (q - share) ** 2
    return needed > FUTILITY_MARGIN * objective.request_limit


def regenerative_batches(idle: np.ndarray, flags: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Batch sizes and per-batch sums of each flag array, cutting only where a request found the system idle.

    Cuts go at the first idle request at or after each 1/BATCHES of the run, so
    every batch is a run of whole busy periods. The last batch may end in an
    unfinished busy period.
    """
    n = len(idle)
    starts = np.flatnonzero(idle)
    starts = starts[starts > 0]
    targets = (np.arange(1, BATCHES) * n) // BATCHES
    at = np.searchsorted(starts, targets)
    cuts = np.unique(starts[at[at < len(starts)]])
    edges = np.concatenate([[0], cuts])
    sizes = np.diff(np.concatenate([edges, [n]]))
    return sizes, [np.add.reduceat(f.astype(np.int64), edges) for f in flags]


def index_batches(n: int, flags: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """BATCHES batches of consecutive requests (not independent where a busy period spans a cut)."""
    edges = (np.arange(BATCHES) * n) // BATCHES
    edges = np.unique(edges)
    sizes = np.diff(np.concatenate([edges, [n]]))
    return sizes, [np.add.reduceat(f.astype(np.int64), edges) for f in flags]


def dispersion(counts: np.ndarray, sizes: np.ndarray) -> float:
    """The batches' variance of count - p * size over the binomial variance of a batch of mean size."""
    p = counts.sum() / sizes.sum()
    if not 0 < p < 1 or len(sizes) < 2:
        return 1.0
    resid = counts - p * sizes
    return float(resid @ resid / (len(sizes) - 1) / (p * (1 - p) * sizes.mean()))


def _quantile(sorted_values: np.ndarray, p: float) -> float | None:
    """The sample quantile at p: inf for p >= 1 (no bound from this many requests), None for p <= 0."""
    if p >= 1:
        return math.inf
    if p <= 0 or not len(sorted_values):
        return None
    return float(sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)])
