"""Arrival schedules and the pacer, with synthetic clocks."""

from __future__ import annotations

import numpy as np
import pytest

from client.loadgen import Pacer, arrival_offsets

N = 50_000


def _gaps(arrival: str, rate: float = 200.0, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.diff(arrival_offsets(N, rate, arrival, burstiness, seed))


@pytest.mark.parametrize("arrival,burstiness", [("constant", 1.0), ("poisson", 1.0), ("gamma", 0.5), ("gamma", 4.0)])
def test_mean_rate_is_the_requested_rate(arrival: str, burstiness: float) -> None:
    gaps = _gaps(arrival, 200.0, burstiness)
    # Standard error of the mean gap is CV/sqrt(N) < 0.7% here; 3% is many sigmas.
    assert 1 / gaps.mean() == pytest.approx(200.0, rel=0.03)


def test_dispersion_of_each_arrival_process() -> None:
    def cv(g: np.ndarray) -> float:
        return float(g.std() / g.mean())

    assert cv(_gaps("constant")) == pytest.approx(0.0, abs=1e-9)
    assert cv(_gaps("poisson")) == pytest.approx(1.0, abs=0.03)  # exponential gaps
    assert cv(_gaps("gamma", burstiness=1.0)) == pytest.approx(1.0, abs=0.03)
    assert cv(_gaps("gamma", burstiness=0.25)) == pytest.approx(2.0, rel=0.05)  # CV = 1/sqrt(shape)
    assert cv(_gaps("gamma", burstiness=4.0)) == pytest.approx(0.5, rel=0.05)


def test_schedule_is_deterministic_for_a_seed() -> None:
    a = arrival_offsets(1000, 50.0, "poisson", seed=3)
    assert np.array_equal(a, arrival_offsets(1000, 50.0, "poisson", seed=3))
    assert not np.array_equal(a, arrival_offsets(1000, 50.0, "poisson", seed=4))
    assert a[0] == 0.0 and np.all(np.diff(a) > 0)


def test_bad_schedule_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        arrival_offsets(10, 0.0, "poisson")
    with pytest.raises(ValueError):
        arrival_offsets(10, 1.0, "gamma", burstiness=0.0)
    with pytest.raises(ValueError):
        arrival_offsets(10, 1.0, "uniform")


def test_pacer_follows_arrival_offsets() -> None:
    offsets = arrival_offsets(100, 1000.0, "poisson", seed=9)
    pacer = Pacer(concurrency=0, rate=1000.0, arrival="poisson", seed=9)
    start = 10**12
    pacer.start(start)
    scheduled = []
    far_future = start + 10**12
    for _ in range(100):
        due = pacer.next_due_ns(far_future, inflight=0)
        scheduled.append(due)
        pacer.sent()
    assert np.allclose((np.array(scheduled) - start) / 1e9, offsets, atol=2e-9)


def test_open_loop_pacer_does_not_wait_for_replies() -> None:
    pacer = Pacer(concurrency=0, rate=100.0, arrival="constant")
    pacer.start(0)
    assert pacer.next_due_ns(0, inflight=0) == 0
    pacer.sent()
    assert pacer.next_due_ns(5_000_000, inflight=1) is None  # not yet due
    assert pacer.wait_ns(5_000_000) == 5_000_000
    # Late by 40 ms with 1000 in flight: still due, and its scheduled time is the schedule's, not now.
    assert pacer.next_due_ns(50_000_000, inflight=1000) == 10_000_000
    pacer.sent()
    assert pacer.next_due_ns(50_000_000, inflight=1000) == 20_000_000


def test_open_loop_cap_holds_sends_back_without_moving_the_schedule() -> None:
    pacer = Pacer(concurrency=2, rate=100.0, arrival="constant")
    pacer.start(0)
    pacer.sent()
    pacer.sent()
    assert pacer.next_due_ns(10**9, inflight=2) is None  # capped
    assert pacer.next_due_ns(10**9, inflight=1) == 20_000_000  # lag = now - scheduled shows the hold-up


def test_closed_loop_pacer_schedules_now_when_a_slot_is_free() -> None:
    pacer = Pacer(concurrency=3)
    pacer.start(0)
    assert not pacer.open_loop
    assert pacer.next_due_ns(123, inflight=2) == 123
    assert pacer.next_due_ns(456, inflight=3) is None
    assert pacer.wait_ns(456) is None  # only a reply frees a slot
    flood = Pacer(concurrency=0)
    flood.start(0)
    assert flood.next_due_ns(7, inflight=10_000) == 7
