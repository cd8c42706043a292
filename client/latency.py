"""`LatencyStats`: a latency distribution, exact where it can be and mergeable across processes and hosts.

It keeps a full HdrHistogram (1 us .. 1 h, 3 significant digits, so any
percentile is within 0.1% of the exact sample) plus exact count, sum, sum of
squares, min and max, so mean, stdev, min and max are exact and no percentile
is ever reported above the max. Its encoded form merges losslessly.
"""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


class LatencyStats:
    """A latency distribution recorded in nanoseconds (the histogram in microseconds)."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.count = 0
        self.sum_ns = 0
        self.sumsq_ns2 = 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None

    def record(self, ns: int) -> None:
        ns = max(0, int(ns))
        self.hist.record_value(min(HIGHEST_US, max(LOWEST_US, round(ns / 1000))))
        self.count += 1
        self.sum_ns += ns
        self.sumsq_ns2 += ns * ns
        self.min_ns = ns if self.min_ns is None else min(self.min_ns, ns)
        self.max_ns = ns if self.max_ns is None else max(self.max_ns, ns)

    def merge(self, other: LatencyStats) -> LatencyStats:
        if other.count:
            self.hist.add(other.hist)
            self.count += other.count
            self.sum_ns += other.sum_ns
            self.sumsq_ns2 += other.sumsq_ns2
            self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)
            self.max_ns = other.max_ns if self.max_ns is None else max(self.max_ns, other.max_ns)
        return self

    def percentile_s(self, p: float) -> float | None:
        if not self.count:
            return None
        value_ns = self.hist.get_value_at_percentile(p) * 1000
        return min(max(value_ns, self.min_ns), self.max_ns) / 1e9

    @property
    def mean_s(self) -> float | None:
        return self.sum_ns / self.count / 1e9 if self.count else None

    @property
    def stdev_s(self) -> float | None:
        if not self.count:
            return None
        var = (self.sumsq_ns2 - self.sum_ns * self.sum_ns / self.count) / self.count
        return math.sqrt(max(0.0, var)) / 1e9

    def summary(self, prefix: str) -> dict[str, float | None]:
        """`{prefix}_min/_mean/_stdev/_p50.../_max` in seconds."""
        out: dict[str, float | None] = {
            f"{prefix}_min": self.min_ns / 1e9 if self.count else None,
            f"{prefix}_mean": self.mean_s,
            f"{prefix}_stdev": self.stdev_s,
        }
        for p in PERCENTILES:
            out[f"{prefix}_p{p:g}".replace(".", "_")] = self.percentile_s(p)
        out[f"{prefix}_max"] = self.max_ns / 1e9 if self.count else None
        return out

    def cdf(self) -> list[tuple[float, float]]:
        """(latency s, cumulative fraction) points, for plots."""
        if not self.count:
            return []
        points = []
        for item in self.hist.get_recorded_iterator():
            points.append((item.value_iterated_to / 1e6, item.total_count_to_this_value / self.count))
        return points

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_ns": self.sum_ns,
            "sumsq_ns2": self.sumsq_ns2,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "hdr": self.hist.encode().decode("ascii") if self.count else "",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        s = cls()
        if d.get("count"):
            s.hist = HdrHistogram.decode(d["hdr"].encode("ascii"))
            s.count, s.sum_ns, s.sumsq_ns2 = d["count"], d["sum_ns"], d["sumsq_ns2"]
            s.min_ns, s.max_ns = d["min_ns"], d["max_ns"]
        return s
