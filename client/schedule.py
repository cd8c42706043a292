"""Recorded send schedules and linear ramps, for the pacer (client/loadgen.py).

Plain Python (no torch, no numpy), so the client's configuration can read a
schedule file while it validates its options, before any work.

* `read_schedule(path)`: the send times in a schedule file, in seconds from the
  start of the measured phase: one offset per line, or the JSON lines of an
  infer-client `--trace-file` (replayed from each request's `scheduled_ns`,
  relative to the first), so a recorded run can be replayed exactly.
* `RateRamp`: an open-loop rate rising (or falling) linearly over a duration,
  then constant; `time_at` turns the arrival process's unit-rate clock into
  send times (time rescaling), so Poisson or gamma arrivals keep their shape.
* `ConcurrencyRamp`: the closed-loop number of requests in flight, stepped
  linearly over a duration.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SCHEDULE_LINES = 10_000_000  # a bound on what one file may make the client hold


def read_schedule(path: Path) -> list[float]:
    """Send offsets in seconds, non-decreasing, the first at or after 0. ValueError (one line) names the line at fault."""
    offsets: list[float] = []
    trace = None  # decided by the first non-blank line: JSON lines of a --trace-file, or plain offsets
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                if trace is None:
                    trace = text.startswith("{")
                if len(offsets) >= MAX_SCHEDULE_LINES:
                    raise ValueError(f"{path}: more than {MAX_SCHEDULE_LINES} send times")
                offsets.append(_trace_time(text, path, number) if trace else _offset(text, path, number))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    if not offsets:
        raise ValueError(f"{path} holds no send times")
    if not trace:
        _check_non_decreasing(offsets, path)
        return offsets
    # A trace lists requests as they completed: replay them in the order they were scheduled.
    offsets.sort()
    first = offsets[0]
    return [(t - first) / 1e9 for t in offsets]


def _offset(text: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} line {number}: expected an offset in seconds, got {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{path} line {number}: an offset must be a finite number of seconds >= 0, got {text[:40]!r}")
    return value


def _trace_time(text: str, path: Path, number: int) -> float:
    try:
        row = json.loads(text)
    except ValueError:
        raise ValueError(f"{path} line {number}: not a JSON line of a --trace-file") from None
    scheduled = row.get("scheduled_ns") if isinstance(row, dict) else None
    if not isinstance(scheduled, int) or isinstance(scheduled, bool):
        raise ValueError(f"{path} line {number}: no integer scheduled_ns")
    return float(scheduled)


def _check_non_decreasing(offsets: list[float], path: Path) -> None:
    """A plain schedule lists send times in order; a later time before an earlier one is a mistake in the file."""
    for i in range(1, len(offsets)):
        if offsets[i] < offsets[i - 1]:
            raise ValueError(
                f"{path}: send time {offsets[i]:g} s (entry {i + 1}) is before the one above it ({offsets[i - 1]:g} s)")


@dataclass(frozen=True)
class RateRamp:
    """Rate `start` (requests/s) at time 0, rising or falling linearly to `end` at `duration_s`, then `end`."""

    start: float
    end: float
    duration_s: float

    def __post_init__(self) -> None:
        if not (self.start >= 0 and self.end > 0 and self.duration_s > 0):
            raise ValueError("a rate ramp needs a start rate >= 0, an end rate > 0 and a duration > 0")

    def rate_at(self, t: float) -> float:
        if t >= self.duration_s:
            return self.end
        return self.start + (self.end - self.start) * max(t, 0.0) / self.duration_s

    def time_at(self, work: float) -> float:
        """The time t at which the integral of the rate from 0 to t reaches `work` (requests)."""
        if work <= 0:
            return 0.0
        ramp_work = (self.start + self.end) * self.duration_s / 2
        if work >= ramp_work:
            return self.duration_s + (work - ramp_work) / self.end
        slope = (self.end - self.start) / self.duration_s
        # Root of slope/2 t^2 + start t - work = 0, in the form that stays exact when slope is ~0.
        return 2 * work / (self.start + math.sqrt(max(self.start**2 + 2 * slope * work, 0.0)))


@dataclass(frozen=True)
class ConcurrencyRamp:
    """`start` requests in flight at time 0, stepping linearly to `end` at `duration_s`."""

    start: int
    end: int
    duration_s: float

    def __post_init__(self) -> None:
        if not (self.start >= 1 and self.end >= 1 and self.duration_s > 0):
            raise ValueError("a concurrency ramp needs start and end of at least 1 and a duration > 0")

    def at(self, t: float) -> int:
        steps = abs(self.end - self.start)
        if t >= self.duration_s or not steps:
            return self.end
        taken = int(steps * max(t, 0.0) / self.duration_s)
        return self.start + (taken if self.end > self.start else -taken)

    def next_step_s(self, t: float) -> float | None:
        """When the cap next changes after time t (None: it no longer changes)."""
        steps = abs(self.end - self.start)
        if t >= self.duration_s or not steps:
            return None
        taken = int(steps * max(t, 0.0) / self.duration_s)
        return (taken + 1) * self.duration_s / steps


def check_load_options(config: Any) -> int | None:
    """ClientConfig's --schedule-file and --ramp-* checks, before its defaults are filled in.

    ValueError names the options that contradict each other. Returns how many send
    times the schedule file holds (None without one): the run's request count unless
    --num-iters asks for fewer.
    """
    ramp_s, ramp_start = config.ramp_s, config.ramp_start
    if ramp_start is not None and ramp_s is None:
        raise ValueError("ramp_start (--ramp-start) needs ramp_s (--ramp-s)")
    if ramp_s is not None and config.schedule_file is None and not config.request_rate:
        if config.concurrency == 0:
            raise ValueError("ramp_s (--ramp-s): an unbounded closed loop (--concurrency 0) cannot be ramped")
        if ramp_start is not None and (ramp_start < 1 or ramp_start != int(ramp_start)):
            raise ValueError(f"ramp_start (--ramp-start): a closed loop ramps a whole number of requests in "
                             f"flight, at least 1, not {ramp_start:g}")
    if config.schedule_file is None:
        return None
    for name, flag, given in (("request_rate", "--request-rate", config.request_rate),
                              ("ramp_s", "--ramp-s", ramp_s), ("duration_s", "--duration", config.duration_s),
                              ("processes", "--processes", config.processes > 1)):
        if given:
            raise ValueError(f"schedule_file (--schedule-file) gives every send time; it cannot go with "
                             f"{name} ({flag})")
    try:
        count = len(read_schedule(config.schedule_file))
    except ValueError as exc:
        raise ValueError(f"schedule_file (--schedule-file): {exc}") from None
    if config.num_iters is not None and config.num_iters > count:
        raise ValueError(f"num_iters (--num-iters) {config.num_iters} is more than the {count} send times "
                         "in schedule_file (--schedule-file)")
    return count
