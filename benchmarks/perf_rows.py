"""`make perf`'s table: rows, targets, and ratios measured side by side (interleaved trials, paired ratios)."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from typing import NamedTuple, NoReturn

TARGETS = {
    "serving": 0.95, "transport": 0.8, "vs_queue": 4.0,
    "cliff": 0.8, "bare_large": 0.9, "shm_vs_tcp": 3.0, "shm_vs_memcpy": 0.7,
    "floor_cpu": 1.3, "floor_rate": 0.8,
    "small_server": 0.8, "small_server_worker": 0.65, "small_client": 0.9,
}


class OneLineErrors(argparse.ArgumentParser):
    """Bad usage: one line and exit status 2, not the usage block (the benchmark scripts' parser)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


class Row(NamedTuple):
    measurement: str
    served: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None  # None: reported only


def target_row(name: str, served: str, baseline: str, ratio: tuple[float, str], key: str, unit: str = "",
               at_most: bool = False) -> Row:
    """A row with a target: TARGETS[key] as a floor (or, with at_most, a ceiling) on the ratio."""
    value, text = ratio
    if math.isnan(value):
        return Row(name, served, baseline, text, f"{'≤' if at_most else '≥'} {TARGETS[key]}{unit}", False)
    ok = value <= TARGETS[key] if at_most else value >= TARGETS[key]
    return Row(name, served, baseline, text, f"{'≤' if at_most else '≥'} {TARGETS[key]}{unit}", ok)


def side_by_side(*fns: Callable[[], float], trials: int) -> list[list[float]]:
    """Interleaved trials of each function (a, b, ..., a, b, ...): each one's samples."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(trials):
        for fn, out in zip(fns, samples):
            out.append(fn())
    return samples


def paired_ratio(a: list[float], b: list[float], unit: str = "") -> tuple[float, str]:
    """Median of the per-trial ratios a[i] / b[i], and that median with the ratios' range as text."""
    ratios = [x / y for x, y in zip(a, b)]
    mid = statistics.median(ratios)
    return mid, f"{mid:.3f}{unit} ({min(ratios):.2f}-{max(ratios):.2f})"


class Unavailable:
    """A measurement that may not be possible here (shared memory, say): NaN and the reason once it failed."""

    def __init__(self, fn: Callable[[], float]):
        self.fn = fn
        self.reason: str | None = None

    def __call__(self) -> float:
        if self.reason is None:
            try:
                return self.fn()
            except Exception as exc:  # any failure: the row says why, the run goes on
                self.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        return math.nan
