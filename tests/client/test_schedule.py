"""Schedule files and ramps (client/schedule.py), and the options that use them, without a server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from client.config import ClientConfig
from client.schedule import ConcurrencyRamp, RateRamp, read_schedule


def write(tmp_path: Path, text: str, name: str = "schedule.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plain_offsets_with_blank_lines_and_comments(tmp_path) -> None:
    path = write(tmp_path, "# offsets in seconds\n0\n0.25\n\n0.25\n1.5e0\n")
    assert read_schedule(path) == [0.0, 0.25, 0.25, 1.5]


def test_a_trace_file_replays_its_scheduled_times_from_the_first(tmp_path) -> None:
    # A trace lists requests as they completed, not as they were scheduled.
    rows = [{"id": 1, "scheduled_ns": 5_300_000_000, "sent_ns": 5_300_000_100},
            {"id": 0, "scheduled_ns": 5_000_000_000, "sent_ns": 5_000_000_090, "error": "OVERLOADED"},
            {"id": 2, "scheduled_ns": 6_000_000_000}]
    path = write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows), "trace.jsonl")
    assert read_schedule(path) == pytest.approx([0.0, 0.3, 1.0], abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0\nsoon\n", "line 2: expected an offset in seconds"),
        ("0\n-1\n", "line 2: an offset must be"),
        ("0\nnan\n", "line 2: an offset must be"),
        ("0\n2\n1\n", r"send time 1 s \(entry 3\) is before the one above it \(2 s\)"),
        ("\n# nothing\n", "holds no send times"),
        ('{"scheduled_ns": 1}\n{"id": 2}\n', "line 2: no integer scheduled_ns"),
        ('{"scheduled_ns": 1}\n{oops\n', "line 2: not a JSON line"),
    ],
)
def test_a_bad_schedule_file_is_one_line_naming_the_place(tmp_path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_schedule(write(tmp_path, text))


def test_an_unreadable_schedule_file_is_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        read_schedule(tmp_path / "missing.txt")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not a text file"):
        read_schedule(tmp_path / "binary")


def test_rate_ramp_integrates_to_the_work_done() -> None:
    ramp = RateRamp(start=10.0, end=100.0, duration_s=3.0)
    assert ramp.rate_at(0) == 10 and ramp.rate_at(1.5) == pytest.approx(55) and ramp.rate_at(9) == 100
    assert ramp.time_at(0) == 0
    for t in (0.1, 1.0, 2.9, 3.0, 4.5):  # time_at inverts the integral of the rate
        work = 10 * min(t, 3) + 15 * min(t, 3) ** 2 + 100 * max(t - 3, 0)
        assert ramp.time_at(work) == pytest.approx(t, rel=1e-12)
    flat, down = RateRamp(5.0, 5.0, 2.0), RateRamp(start=50.0, end=10.0, duration_s=2.0)
    assert flat.time_at(7) == pytest.approx(1.4)
    assert down.time_at(60) == pytest.approx(2.0) and down.time_at(70) == pytest.approx(3.0)
    assert RateRamp(0.0, 20.0, 1.0).time_at(10) == pytest.approx(1.0)  # from a standstill
    with pytest.raises(ValueError):
        RateRamp(1.0, 0.0, 1.0)


def test_concurrency_ramp_steps_evenly_then_holds() -> None:
    ramp = ConcurrencyRamp(start=1, end=5, duration_s=2.0)
    assert [ramp.at(t) for t in (0, 0.49, 0.5, 1.0, 1.99, 2.0, 10)] == [1, 1, 2, 3, 4, 5, 5]
    assert ramp.next_step_s(0) == 0.5 and ramp.next_step_s(1.2) == 1.5 and ramp.next_step_s(2.0) is None
    assert [ConcurrencyRamp(4, 2, 1.0).at(t) for t in (0, 0.5, 1)] == [4, 3, 2]


def test_schedule_options_set_the_run_length_and_refuse_contradictions(tmp_path) -> None:
    path = write(tmp_path, "0\n0.1\n0.2\n")
    config = ClientConfig(schedule_file=path)
    assert config.num_iters == 3 and config.concurrency == 0  # open loop, as many requests as listed
    assert ClientConfig(schedule_file=path, num_iters=2).num_iters == 2
    for changes, named in [({"num_iters": 4}, "more than the 3 send times"), ({"request_rate": 5.0}, "--request-rate"),
                           ({"duration_s": 2.0}, "--duration"), ({"processes": 2}, "--processes"),
                           ({"ramp_s": 1.0}, "--ramp-s")]:
        with pytest.raises(ValueError, match=named):
            ClientConfig(schedule_file=path, **changes)
    with pytest.raises(ValueError, match="schedule_file .*line 1"):
        ClientConfig(schedule_file=write(tmp_path, "x\n", "bad.txt"))


def test_ramp_options_are_checked_and_shared_between_processes() -> None:
    with pytest.raises(ValueError, match="--ramp-start.*needs.*--ramp-s"):
        ClientConfig(ramp_start=2.0)
    with pytest.raises(ValueError, match="concurrency 0"):
        ClientConfig(ramp_s=1.0, concurrency=0)
    with pytest.raises(ValueError, match="whole number"):
        ClientConfig(ramp_s=1.0, ramp_start=0.5, concurrency=4)
    rate = ClientConfig(ramp_s=2.0, ramp_start=10.0, request_rate=100.0, processes=2, num_iters=10)
    assert rate.part(0, 2).ramp_start == 5.0 and rate.part(1, 2).request_rate == 50.0
    closed = ClientConfig(ramp_s=2.0, ramp_start=3, concurrency=8, processes=2, num_iters=10)
    assert [closed.part(i, 2).ramp_start for i in (0, 1)] == [2, 1]
    assert math.isclose(ClientConfig(ramp_s=2.5, request_rate=9.0).ramp_s, 2.5)
