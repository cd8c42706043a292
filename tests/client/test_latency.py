"""LatencyStats adds its samples in bulk: exactly what recording each into hdrh and the sums would give."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from client.latency import FLUSH_AT, HIGHEST_US, LOWEST_US, SIGNIFICANT_DIGITS, LatencyStats


def one_by_one(samples: list) -> dict:
    """The reference: every sample recorded on its own, as LatencyStats did before it buffered."""
    hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    values = [max(0, int(ns)) for ns in samples]
    for ns in values:
        assert hist.record_value(min(HIGHEST_US, max(LOWEST_US, round(ns / 1000))))
    return {"count": len(values), "sum_ns": sum(values), "sumsq_ns2": sum(v * v for v in values),
            "min_ns": min(values), "max_ns": max(values), "hdr": hist.encode().decode("ascii"),
            "hist": (hist.total_count, hist.min_value, hist.max_value, list(hist.counts))}


def recorded(samples: list) -> dict:
    s = LatencyStats()
    for ns in samples:
        s.record(ns)
    d = s.to_dict()
    d["hist"] = (s.hist.total_count, s.hist.min_value, s.hist.max_value, list(s.hist.counts))
    return d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulk_recording_equals_recording_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Lognormal around 5 ms over several flushes, with the edges: 0, rounding halves (1500 ns -> 2 us,
    # 2500 -> 2), below the lowest and above the highest trackable value, past int64 when squared.
    samples = [int(v) for v in rng.lognormal(np.log(5e6), 1.5, 3 * FLUSH_AT + 17)]
    samples += [0, 1, 499, 500, 501, 1500, 2500, 10**9, HIGHEST_US * 1000 + 10**6, 5 * 10**18]
    rng.shuffle(samples)
    assert recorded(samples) == one_by_one(samples)


def test_negative_float_and_huge_samples_convert_as_one_by_one() -> None:
    samples = [-5, -0.5, 1234.9, 2**70, 7, 3_000_000.0, 2**64 - 1]
    assert recorded(samples) == one_by_one(samples)


def test_reads_see_every_sample_before_a_flush() -> None:
    s = LatencyStats()
    for ns in (3_000, 1_000, 2_000):
        s.record(ns)
    assert s.count == 3 and (s.min_ns, s.max_ns, s.sum_ns) == (1_000, 3_000, 6_000)
    s.record(10_000)
    assert s.percentile_s(100) == 10e-6 and s.count == 4 and s.hist.total_count == 4
