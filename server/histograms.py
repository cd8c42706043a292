"""Histograms of each request's queue, compute and server time, for the metrics endpoint.

Kept only with --metrics-port. Each prediction thread (the I/O thread with
--num-workers 0) has its own `StageHistograms` and is the only thread that
writes it: a bisect and three list increments per request, no lock. A scrape
reads them from another thread; it may see one request's buckets before its
sum, which Prometheus tolerates (the count it reports is the buckets' total).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from common.protocol import ServerTimes

# Upper bounds in seconds, the same for the three histograms: 100 µs (a noop model's
# whole server time) to 10 s (a cold compile in the first request of a shape).
BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BOUNDS_NS = tuple(round(b * 1e9) for b in BUCKETS_S)
STAGES = ("queue", "compute", "server")  # server: the sum of every stage (ServerTimes.total_ns)


class StageHistograms:
    """One thread's counts per bucket (the last is +Inf) and sums in ns, per stage of STAGES."""

    __slots__ = ("counts", "sums_ns")

    def __init__(self) -> None:
        self.counts = [[0] * (len(_BOUNDS_NS) + 1) for _ in STAGES]
        self.sums_ns = [0] * len(STAGES)

    def observe(self, times: ServerTimes) -> None:
        queue, compute = times.queue_ns, times.compute_ns
        total = queue + times.decode_ns + times.h2d_ns + compute + times.d2h_ns + times.encode_ns
        counts, sums = self.counts, self.sums_ns
        counts[0][bisect_left(_BOUNDS_NS, queue)] += 1
        counts[1][bisect_left(_BOUNDS_NS, compute)] += 1
        counts[2][bisect_left(_BOUNDS_NS, total)] += 1
        sums[0] += queue
        sums[1] += compute
        sums[2] += total


@dataclass
class HistogramSnapshot:
    """One stage over every thread: counts per bucket (not cumulative, +Inf last) and their sum in seconds."""

    counts: list[int]
    sum_s: float

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus's buckets: (upper bound, requests at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*map(repr, BUCKETS_S), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out


def merge(histograms: Iterable[StageHistograms]) -> dict[str, HistogramSnapshot]:
    """Every thread's histograms added up, per stage."""
    merged = {stage: HistogramSnapshot([0] * (len(_BOUNDS_NS) + 1), 0.0) for stage in STAGES}
    for h in histograms:
        for i, stage in enumerate(STAGES):
            snap = merged[stage]
            snap.counts = [a + b for a, b in zip(snap.counts, list(h.counts[i]))]
            snap.sum_s += h.sums_ns[i] / 1e9
    return merged
