"""The tail verdict (client/verdict.py), judged on the queues it must hold on.

Synthetic probes are M/M/1 and M/D/1 queues simulated exactly (benchmarks/queueing.py):
bursts of requests over the bound, which independent samples would hide, are in
them. The rates are multiples of the crossing, where the percentile equals the bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.queueing import crossing, md1_share_over, mm1_share_over, simulate
from benchmarks.verdict_sim import Queue, probes
from client.verdict import (
    FAIL,
    PASS,
    UNDECIDED,
    TailObjective,
    TailSample,
    decide,
    regenerative_batches,
    student_t_quantile,
)

MM1 = Queue(0.0052, "exp", 0.100, 99.0)  # the M/M/1: crossing 146.3 requests/s
MD1 = Queue(0.0102, "fixed", 0.050, 99.0)  # its M/D/1: crossing 54.2 requests/s


def rate_where_percentile_is(queue: Queue, latency_s: float) -> float:
    """The arrival rate at which the queue's percentile of the time in system is `latency_s`."""
    return crossing(queue.service_s, queue.dist, latency_s, queue.percentile)


@pytest.mark.parametrize(("p", "df", "scipy_value"), [
    (0.99875, 31, 3.2902764551537804), (0.998, 15, 3.3948290317314602), (0.95, 10, 1.8124611228116756),
    (0.9999, 20, 4.538520853793709), (0.999, 63, 3.224708738545393),
])
def test_student_t_quantile_matches_scipy(p: float, df: int, scipy_value: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(scipy_value, rel=1e-4)


def test_the_queues_match_their_closed_forms() -> None:
    # 200,000 simulated M/M/1 and M/D/1 customers at 0.9x the p99 crossing: the share over the bound
    # matches the exponential sojourn time and Crommelin's formula within sampling error.
    rng = np.random.default_rng(1)
    for queue, share in ((MM1, mm1_share_over), (MD1, md1_share_over)):
        rate = 0.9 * crossing(queue.service_s, queue.dist, queue.bound_s, 99)
        sojourn, idle = simulate(rate, queue.service_s, queue.dist, 200_000, rng)
        expected = share(rate, queue.service_s, queue.bound_s)
        assert np.mean(sojourn > queue.bound_s) == pytest.approx(expected, rel=0.35)
        assert np.mean(idle) == pytest.approx(1 - rate * queue.service_s, abs=0.01)
    assert crossing(MM1.service_s, "exp", 0.1, 99) == pytest.approx(1 / 0.0052 - math.log(100) / 0.1)
    assert crossing(MD1.service_s, "fixed", 0.05, 99) == pytest.approx(54.2, abs=0.1)  # NOTES.md's simulation


# -- false passes and power, on the queue itself -----------------------------------------------------


@pytest.mark.parametrize("queue", [MM1, MD1], ids=["M/M/1", "M/D/1"])
def test_a_p99_of_1_2x_the_bound_passes_under_2_percent_of_1000_probes(queue: Queue) -> None:
    # The criterion. Measured: 0 of 1000 for both queues (docs/metrics.md).
    objective = TailObjective(queue.bound_s, 99.0)
    bad = Queue(queue.service_s, queue.dist, queue.bound_s, 99.0)
    rate = rate_where_percentile_is(queue, 1.2 * queue.bound_s)
    multiple = rate / crossing(queue.service_s, queue.dist, queue.bound_s, 99.0)
    decisions = probes(bad, multiple, 1000, objective, seed=11)
    assert sum(d.verdict == PASS for d in decisions) < 20


@pytest.mark.parametrize("queue", [MM1, MD1], ids=["M/M/1", "M/D/1"])
def test_at_the_crossing_itself_a_p99_pass_stays_rare(queue: Queue) -> None:
    # The stated confidence is 0.99; measured 0/200 (M/M/1) and 1/200 (M/D/1).
    decisions = probes(queue, 1.0, 300, TailObjective(queue.bound_s, 99.0), seed=12)
    assert sum(d.verdict == PASS for d in decisions) <= 6


@pytest.mark.parametrize(("queue", "multiple"), [(MM1, 0.8), (MD1, 0.9)], ids=["M/M/1", "M/D/1"])
def test_below_the_crossing_a_p99_verdict_passes_within_its_budget(queue: Queue, multiple: float) -> None:
    # A verdict that never passes would meet every false-pass bound: it must also pass where the
    # objective is met with margin (measured: 100% at 0.8x M/M/1, 99.5% at 0.9x M/D/1, 200 probes).
    decisions = probes(queue, multiple, 100, TailObjective(queue.bound_s, 99.0), seed=13)
    assert sum(d.verdict == PASS for d in decisions) >= 90
    assert all(d.percentile_high_s <= queue.bound_s for d in decisions if d.verdict == PASS)


def test_an_overloaded_queue_fails_fast() -> None:
    objective = TailObjective(MM1.bound_s, 99.0)
    decisions = probes(MM1, 1.2, 50, objective, seed=14)
    assert sum(d.verdict == FAIL for d in decisions) >= 48
    assert all(d.requests <= objective.looks()[1] for d in decisions if d.verdict == FAIL)


def test_a_binomial_rule_would_pass_bursty_queues_the_verdict_fails() -> None:
    # Why the dispersion: at 1.1x the M/M/1 crossing 4.3% of requests are over the bound. A count test
    # that takes requests as independent (the share below q by 2.33 binomial standard deviations, at
    # most 45 of 6,400) would pass such a window with probability ~1e-40 were they independent; in
    # bursts it passes 7 of these 200 windows (seeded). The verdict passes none of them.
    rng = np.random.default_rng(15)
    rate = 1.1 * crossing(MM1.service_s, "exp", MM1.bound_s, 99)
    objective = TailObjective(MM1.bound_s, 99.0, max_requests=6400)
    naive = verdict_passes = 0
    for _ in range(200):
        sojourn, idle = simulate(rate, MM1.service_s, "exp", 6400, rng)
        over = int(np.sum(sojourn > MM1.bound_s))
        naive += over <= 6400 * 0.01 - 2.33 * math.sqrt(6400 * 0.01 * 0.99)
        verdict_passes += decide(objective, sojourn, idle).verdict == PASS
    assert naive >= 4 and verdict_passes == 0


# -- the mechanics ----------------------------------------------------------------------------------


def test_clear_cases_decide_at_the_first_look() -> None:
    objective = TailObjective(0.05, 99.0)
    n = objective.looks()[0]
    idle = np.ones(n, bool)
    fast = decide(objective, np.full(n, 0.001), idle)
    assert fast.verdict == PASS and fast.over == 0 and fast.percentile_high_s == pytest.approx(0.001)
    slow = decide(objective, np.full(n, 0.2), idle)
    assert slow.verdict == FAIL and slow.over == n and "shown >" in slow.reason


def test_failed_and_lost_requests_count_over_the_bound() -> None:
    objective = TailObjective(0.05, 90.0)
    n = objective.looks()[0]
    latencies = np.full(n, 0.001)
    latencies[::5] = np.inf  # every fifth failed
    d = decide(objective, latencies, np.ones(n, bool), lost=16)
    assert d.requests == n + 16 and d.over == len(latencies[::5]) + 16 and d.verdict == FAIL


def test_a_server_never_idle_is_never_passed() -> None:
    # Without idle moments there are no independent stretches to judge a pass on.
    objective = TailObjective(0.05, 99.0)
    n = objective.looks()[0]
    d = decide(objective, np.full(n, 0.001), np.zeros(n, bool))
    assert d.verdict == UNDECIDED and "idle only" in d.reason


def test_batches_are_cut_only_where_the_system_was_idle() -> None:
    idle = np.zeros(1000, bool)
    idle[[0, 100, 101, 350, 700, 999]] = True
    flags = np.ones(1000, bool)
    sizes, (sums,) = regenerative_batches(idle, [flags])
    edges = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert set(edges) <= {0, 100, 101, 350, 700, 999} and sizes.sum() == 1000 and (sums == sizes).all()


def test_tail_sample_looks_once_the_prefix_is_answered_and_finds_idle_moments_from_times() -> None:
    objective = TailObjective(0.05, 90.0, max_requests=2048)
    sample = TailSample(objective)
    assert objective.looks() == [1024, 2048]
    # Requests 1 ms apart, each answered 0.5 ms after it was sent: every one finds the system idle.
    for i in reversed(range(1024)):  # out of order: the look waits for the whole prefix
        assert not sample.look_due()
        sample.record(i, i * 1_000_000, i * 1_000_000, i * 1_000_000 + 500_000)
    assert sample.look_due()
    assert sample.idle_at_send(1024).all()
    d = sample.look()
    assert d.verdict == PASS and d.requests == 1024 and d.ends_probe
    # Overlapping requests are not idle at send: each sent before the previous one was answered.
    overlapped = TailSample(objective)
    for i in range(4):
        overlapped.record(i, i * 1000, i * 1000, i * 1000 + 5000)
    assert overlapped.idle_at_send(4).tolist() == [True, False, False, False]


def test_objective_validates_itself() -> None:
    with pytest.raises(ValueError, match="bound"):
        TailObjective(0.0)
    with pytest.raises(ValueError, match="percentile"):
        TailObjective(0.05, 100.0)
    with pytest.raises(ValueError, match="confidence"):
        TailObjective(0.05, 99.0, confidence=1.0)
    with pytest.raises(ValueError, match="max_requests"):
        TailObjective(0.05, 99.0, max_requests=100)
    assert TailObjective(0.05, 99.0).min_requests == 1385 and TailObjective(0.05, 90.0).min_requests == 1024
    assert TailObjective(0.05, 99.0).request_limit == 64_000 and TailObjective(0.05, 90.0).request_limit == 6400
