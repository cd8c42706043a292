"""Arrival schedules, ramps and replayed schedules in the pacer, with synthetic clocks; the server input check."""

from __future__ import annotations

import numpy as np
import pytest

from client.config import ClientConfig
from client.loadgen import Pacer, arrival_offsets, check_server_input

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


def _due_times(pacer: Pacer, n: int, start: int = 10**12) -> list[int]:
    """The first n scheduled times, taken as if every send went out far in the future (no cap reached)."""
    pacer.start(start)
    due = []
    for _ in range(n):
        due.append(pacer.next_due_ns(start + 10**15, inflight=0) - start)
        pacer.sent()
    return due


def test_a_recorded_schedule_is_replayed_then_runs_out() -> None:
    offsets = [0.0, 0.001, 0.001, 0.25, 1.5]
    pacer = Pacer(concurrency=0, schedule=offsets)
    assert pacer.open_loop
    assert _due_times(pacer, 5) == [0, 1_000_000, 1_000_000, 250_000_000, 1_500_000_000]
    assert pacer.exhausted and pacer.next_due_ns(10**16, inflight=0) is None and pacer.wait_ns(10**16) is None
    pacer.start(0)  # a new start replays from the first send time
    assert not pacer.exhausted and pacer.next_due_ns(0, inflight=0) == 0


def test_a_rate_ramp_speeds_up_then_holds_the_rate() -> None:
    pacer = Pacer(concurrency=0, rate=100.0, arrival="constant", ramp_s=3.0, ramp_start=10.0)
    due = np.array(_due_times(pacer, 400)) / 1e9
    counts = np.histogram(due, bins=[0, 1, 2, 3, 4])[0]
    # Sends per second: the integral of the rate over each second (10+30t up to t=3, then 100).
    assert counts.tolist() == pytest.approx([25, 55, 85, 100], abs=1)
    assert np.all(np.diff(due) > 0)


def test_a_poisson_ramp_keeps_its_shape_and_the_ramped_mean() -> None:
    pacer = Pacer(concurrency=0, rate=4000.0, arrival="poisson", ramp_s=10.0, ramp_start=0.0, seed=4)
    due = np.array(_due_times(pacer, 30_000)) / 1e9
    first_half, second_half = (np.sum(due < 5.0), np.sum((due >= 5.0) & (due < 10.0)))
    # The integrals of the rate 400t over [0, 5] and [5, 10]; a Poisson count's sd is its root (1.4%, 0.8%).
    assert first_half == pytest.approx(5000, rel=0.06)
    assert second_half == pytest.approx(15000, rel=0.04)
    late_gaps = np.diff(due[due > 10.0])
    assert late_gaps.std() / late_gaps.mean() == pytest.approx(1.0, abs=0.05)  # still exponential gaps


def test_a_concurrency_ramp_raises_the_cap_and_says_when() -> None:
    pacer = Pacer(concurrency=4, ramp_s=3.0, ramp_start=1)
    pacer.start(0)
    assert not pacer.open_loop
    assert pacer.next_due_ns(0, inflight=0) == 0 and pacer.next_due_ns(0, inflight=1) is None
    assert pacer.wait_ns(400_000_000) == 600_000_000  # the second slot opens at 1 s, with no reply needed
    assert pacer.next_due_ns(1_000_000_000, inflight=1) == 1_000_000_000
    assert pacer.next_due_ns(2_999_999_999, inflight=3) is None
    assert pacer.next_due_ns(3_000_000_000, inflight=3) == 3_000_000_000
    assert pacer.wait_ns(3_000_000_000) is None  # the ramp is over: only replies free slots
    with pytest.raises(ValueError, match="unbounded"):
        Pacer(concurrency=0, ramp_s=1.0)


def test_from_config_builds_the_configured_pacer(tmp_path) -> None:
    (tmp_path / "s.txt").write_text("0\n0.5\n")
    assert _due_times(Pacer.from_config(ClientConfig(schedule_file=tmp_path / "s.txt")), 2) == [0, 500_000_000]
    ramped = Pacer.from_config(ClientConfig(request_rate=100.0, arrival="constant", ramp_s=3.0, ramp_start=10.0))
    assert _due_times(ramped, 3) == _due_times(Pacer(0, 100.0, "constant", ramp_s=3.0, ramp_start=10.0), 3)
    plain = Pacer.from_config(ClientConfig(request_rate=50.0, seed=2))
    assert _due_times(plain, 50) == _due_times(Pacer(0, 50.0, "poisson", seed=2), 50)


VIT_INFO = {"model": "vit_b_16", "input_shape": [3, 224, 224], "input_min_side": 224,
            "input_dtypes": ["float32", "uint8", "float16", "bfloat16"]}


def test_server_input_check_passes_what_the_model_takes() -> None:
    check_server_input(VIT_INFO, 1, (3, 224, 224), "uint8")
    check_server_input({"input_shape": [3, None, None], "input_min_side": 75}, 8, (3, 75, 75), "float32")
    check_server_input({}, 8, (3, 250, 250), "float32")  # a server that does not say takes images
    check_server_input({"model": "m:f", "input_shape": [16], "input_dtypes": ["float32"]}, 8, (16,), "float32")


@pytest.mark.parametrize(
    ("info", "sample_shape", "wire_dtype", "message"),
    [
        (VIT_INFO, (3, 250, 250), "float32", r"vit_b_16 takes inputs \[B, 3, 224, 224\], this run would send "
                                             r"\[4, 3, 250, 250\]: run with --image-size 224"),
        ({"model": "m:f", "input_shape": [1, 28, 28]}, (3, 32, 32), "float32", "run with --input-shape 1,28,28"),
        ({"model": "m:f", "input_shape": [16]}, (3, 32, 32), "float32",
         r"takes inputs \[B, 16\], this run would send \[4, 3, 32, 32\]: run with --input-shape 16"),
        ({"model": "m:f", "input_shape": [16]}, (15,), "float32", "--input-shape 16"),
        ({"model": "m:f", "input_shape": [3, None, 20]}, (3, 32, 32), "float32", "images or a fixed --input-shape"),
        ({"input_shape": [3, None, None]}, (16,), "float32", r"\[B, 3, S, S\].*run without --input-shape"),
        ({"input_shape": [3, None, None], "input_min_side": 75}, (3, 64, 64), "float32",
         "at least 75x75.*--image-size 75"),
        ({"model": "m:f", "input_shape": [3, 64, 64], "input_dtypes": ["float16"]}, (3, 64, 64), "float32",
         "takes float16 inputs, not --wire-dtype float32"),
    ],
)
def test_server_input_check_refuses_a_mismatch_in_one_line(info, sample_shape, wire_dtype, message) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        check_server_input(info, 4, sample_shape, wire_dtype)
    assert "\n" not in str(caught.value)
