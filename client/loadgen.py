"""Load generation, independent of the transport (as in MLPerf LoadGen's split):

* `InputPool`, the data source: input batches built before timing starts;
* `Pacer`, the settings made operational: when the next request may be sent
  (closed loop: a fixed number in flight; open loop: a seeded arrival schedule).

The I/O loop in client/loop.py asks the pacer and does the sending.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from client.config import ARRIVALS

POOL_BYTES = 256 << 20  # at most this much pre-built input; at least one batch


class InputPool:
    """A few distinct seeded input batches, reused round-robin.

    Built up front so tensor creation never sits inside the measured gaps, as
    pytorch/pytorch#116188 fixed in the seed (PyTorch's benchmarks/inference).
    float32 is `randn` as in the seed; uint8 is random pixels.
    Batches are never modified after creation, so ZeroMQ may send them zero-copy
    while they are reused.
    """

    def __init__(self, batch_size: int, image_size: int, dtype: str, seed: int, distinct: int = 4):
        gen = torch.Generator().manual_seed(seed)
        shape = (batch_size, 3, image_size, image_size)
        per_batch = math.prod(shape) * (1 if dtype == "uint8" else 4)
        count = max(1, min(distinct, POOL_BYTES // per_batch))
        self.batches: list[torch.Tensor] = []
        for _ in range(count):
            if dtype == "uint8":
                t = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
            elif dtype == "float32":
                t = torch.randn(shape, generator=gen)
            else:
                raise ValueError(f"wire dtype must be float32 or uint8, got {dtype!r}")
            self.batches.append(t.contiguous())
        self._next = 0

    def next(self) -> torch.Tensor:
        t = self.batches[self._next]
        self._next = (self._next + 1) % len(self.batches)
        return t


def arrival_gaps(rate: float, arrival: str, burstiness: float, seed: int) -> Iterator[float]:
    """Seconds between consecutive scheduled sends, with mean 1/rate.

    constant: exactly 1/rate; poisson: exponential gaps; gamma: gamma gaps with
    shape = burstiness (1 = Poisson, < 1 burstier, > 1 smoother), as vLLM's
    `--burstiness`.
    """
    if rate <= 0:
        raise ValueError("request rate must be positive")
    if arrival == "constant":
        while True:
            yield 1.0 / rate
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival must be one of {ARRIVALS}")
    shape = 1.0 if arrival == "poisson" else burstiness
    if shape <= 0:
        raise ValueError("burstiness must be positive")
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.gamma(shape, 1.0 / (rate * shape), size=4096).tolist()


def arrival_offsets(n: int, rate: float, arrival: str, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """The first n scheduled send times in seconds from the start, as `Pacer` schedules them:
    the first at 0, each later one a gap after the previous."""
    gaps = arrival_gaps(rate, arrival, burstiness, seed)
    return np.concatenate([[0.0], np.cumsum([next(gaps) for _ in range(n - 1)])])[:n]


@dataclass
class Pacer:
    """Decides when the next request may go.

    Closed loop (`rate` None): at most `concurrency` requests in flight
    (0 = unbounded: everything at once, the seed's flood); a request's scheduled
    time is when its slot became free, i.e. now.

    Open loop (`rate` set): request k is scheduled at start + sum of the first k
    gaps, whether or not earlier replies came back, so latency measured from the
    scheduled time includes any queueing a slow server causes (no coordinated
    omission). `concurrency` > 0 still caps requests in flight; a send held back
    by the cap shows up as schedule lag.
    """

    concurrency: int = 1
    rate: float | None = None
    arrival: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._gaps = arrival_gaps(self.rate, self.arrival, self.burstiness, self.seed) if self.rate else None
        self._start_ns = 0
        self._next_due_ns = 0
        self._offset_s = 0.0

    @property
    def open_loop(self) -> bool:
        return self._gaps is not None

    def start(self, now_ns: int) -> None:
        self._start_ns = now_ns
        if self._gaps is not None:
            # The first request goes at once; later ones follow the schedule.
            self._offset_s = 0.0
            self._next_due_ns = now_ns

    def next_due_ns(self, now_ns: int, inflight: int) -> int | None:
        """Scheduled time of the next request if it may be sent by `now_ns`, else None."""
        if self.concurrency and inflight >= self.concurrency:
            return None
        if self._gaps is None:
            return now_ns
        return self._next_due_ns if self._next_due_ns <= now_ns else None

    def wait_ns(self, now_ns: int) -> int | None:
        """How long until the schedule allows a send (None: only a reply can unblock)."""
        if self._gaps is None:
            return None
        return max(0, self._next_due_ns - now_ns)

    def sent(self) -> None:
        """Advance the schedule after a send."""
        if self._gaps is not None:
            self._offset_s += next(self._gaps)
            self._next_due_ns = self._start_ns + int(self._offset_s * 1e9)
