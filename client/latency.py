"""Latency distributions: `LatencyStats`.

A full HdrHistogram (1 us .. 1 h, 3 significant digits, so any percentile is
within 0.1% of the exact sample) plus exact count, sum, sum of squares, min and
max, so mean, stdev, min and max are exact and no percentile is ever reported
above the max. Its encoded form merges losslessly across processes and hosts.

`record` only appends: samples are added to the histogram and the sums
`FLUSH_AT` at a time, with numpy, and before anything is read. hdrh's own
`record_value` is pure Python at about a microsecond a sample, and every reply
records eleven (docs/performance.md has the measurement).
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

if TYPE_CHECKING:
    import numpy as np

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
FLUSH_AT = 1024  # samples held before they are added (a flush takes tens of microseconds)
NS_CAP = 2 * HIGHEST_US * 1000  # above the histogram's highest value, below int64's
SMALL_NS = 1 << 26  # below it (67 ms) FLUSH_AT squares add up exactly in int64 (the common case)
assert FLUSH_AT * SMALL_NS**2 < 2**63


class LatencyStats:
    """A latency distribution recorded in nanoseconds (the histogram in microseconds)."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._count = 0
        self._sum_ns = 0
        self._sumsq_ns2 = 0
        self._min_ns: int | None = None
        self._max_ns: int | None = None
        self._pending: list[int] = []

    def record(self, ns: int) -> None:
        pending = self._pending
        pending.append(ns)
        if len(pending) >= FLUSH_AT:
            self._flush()

    def record_many(self, samples: list[int]) -> None:
        """`record` of each sample, in order."""
        pending = self._pending
        pending.extend(samples)
        if len(pending) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        """Add the pending samples: each clamped at 0 (as an int, in ns) and, in the histogram, rounded
        to microseconds within its range, exactly as hdrh's record_value of each would."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        import numpy as np  # here, not at import: the CLIs' --help stays free of it

        try:
            raw = np.fromiter(pending, dtype=np.int64, count=len(pending))
        except (TypeError, ValueError, OverflowError):  # floats, or beyond int64
            raw = None
        low = int(raw.min()) if raw is not None else -1
        high = int(raw.max()) if raw is not None else 0
        if low < 0 or high >= SMALL_NS:  # converted one by one; sums in Python ints, exact however large
            pending = [max(0, int(ns)) for ns in pending]
            raw = np.asarray([min(ns, NS_CAP) for ns in pending], dtype=np.int64)  # the histogram's top anyway
            low, high = min(pending), max(pending)
            total, squares = sum(pending), sum(map(operator.mul, pending, pending))
        else:  # each square below 2**52: int64 sums of FLUSH_AT of them are exact
            total, squares = int(raw.sum()), int(np.dot(raw, raw))
        self._count += len(pending)
        self._sum_ns += total
        self._sumsq_ns2 += squares
        self._min_ns = low if self._min_ns is None else min(self._min_ns, low)
        self._max_ns = high if self._max_ns is None else max(self._max_ns, high)
        self._add_to_histogram(raw)

    def _add_to_histogram(self, ns: np.ndarray) -> None:
        """hdrh's record_value for each sample at once: its counts index, computed as it computes it."""
        import numpy as np

        hist = self._hist
        us = np.clip(np.rint(ns / 1000.0), LOWEST_US, HIGHEST_US).astype(np.int64)  # rint: round half to even
        # bucket: the bit length of (value | sub_bucket_mask), less the magnitudes (frexp's exponent is the
        # bit length of an integer below 2**53).
        bits = np.frexp((us | hist.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
        bucket = bits - hist.unit_magnitude - (hist.sub_bucket_half_count_magnitude + 1)
        sub_bucket = us >> (bucket + hist.unit_magnitude)
        index = ((bucket + 1) << hist.sub_bucket_half_count_magnitude) + (sub_bucket - hist.sub_bucket_half_count)
        # Counted over the span the samples cover (np.add.at takes ten times as long).
        low = int(index.min())
        per_index = np.bincount(index - low)
        counts = np.ctypeslib.as_array(hist.counts)
        counts[low:low + len(per_index)] += per_index.astype(counts.dtype)
        hist.total_count += len(us)
        hist.min_value = min(hist.min_value, int(us.min()))
        hist.max_value = max(hist.max_value, int(us.max()))

    # What the rest of the code reads: always with every recorded sample added.

    @property
    def hist(self) -> HdrHistogram:
        self._flush()
        return self._hist

    @property
    def count(self) -> int:
        return self._count + len(self._pending)

    @property
    def sum_ns(self) -> int:
        self._flush()
        return self._sum_ns

    @property
    def sumsq_ns2(self) -> int:
        self._flush()
        return self._sumsq_ns2

    @property
    def min_ns(self) -> int | None:
        self._flush()
        return self._min_ns

    @property
    def max_ns(self) -> int | None:
        self._flush()
        return self._max_ns

    def merge(self, other: LatencyStats) -> LatencyStats:
        if other.count:
            self._flush()
            self._hist.add(other.hist)
            self._count += other.count
            self._sum_ns += other.sum_ns
            self._sumsq_ns2 += other.sumsq_ns2
            self._min_ns = other.min_ns if self._min_ns is None else min(self._min_ns, other.min_ns)
            self._max_ns = other.max_ns if self._max_ns is None else max(self._max_ns, other.max_ns)
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
            s._hist = HdrHistogram.decode(d["hdr"].encode("ascii"))
            s._count, s._sum_ns, s._sumsq_ns2 = d["count"], d["sum_ns"], d["sumsq_ns2"]
            s._min_ns, s._max_ns = d["min_ns"], d["max_ns"]
        return s
