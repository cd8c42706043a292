"""Load generation, independent of the transport (as in MLPerf LoadGen's split):

* `InputPool`, the data source: input batches built before timing starts;
* `Pacer`, the settings made operational: when the next request may be sent
  (closed loop: a number in flight, fixed or ramped; open loop: a seeded arrival
  schedule at a fixed or ramped rate, or a recorded one replayed, client/schedule.py);
* `check_server_input`: whether the server's model takes the inputs this run sends.

The I/O loop in client/loop.py asks the pacer and does the sending.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.config import ARRIVALS, ClientConfig
from client.schedule import ConcurrencyRamp, RateRamp, read_schedule

POOL_BYTES = 256 << 20  # at most this much pre-built input; at least one batch


class InputPool:
    """A few distinct seeded input batches, reused round-robin.

    Built up front so tensor creation never sits inside the measured gaps, as
    pytorch/pytorch#116188 fixed in the seed (PyTorch's benchmarks/inference).
    float32 is `randn` as in the seed; uint8 is random pixels.
    Batches are never modified after creation, so ZeroMQ may send them zero-copy
    while they are reused.
    """

    def __init__(self, batch_size: int, sample_shape: Sequence[int], dtype: str, seed: int, distinct: int = 4):
        gen = torch.Generator().manual_seed(seed)
        shape = (batch_size, *sample_shape)
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


def check_server_input(info: Mapping[str, Any], batch_size: int, sample_shape: Sequence[int],
                       wire_dtype: str) -> None:
    """ValueError (one line, saying what to change) unless the server's model takes what this run sends.

    The run sends [batch_size, *sample_shape] of `wire_dtype`; INFO's `input_shape`
    (null where any size goes), `input_min_side` and `input_dtypes` say what the model
    takes. A server that does not say takes images.
    """
    shape = info.get("input_shape")
    if not isinstance(shape, list):
        return
    model = info.get("model") or "model"
    sending = list(sample_shape)
    if len(shape) != len(sending) or any(need is not None and need != got for need, got in zip(shape, sending)):
        wanted = ", ".join("S" if d is None else str(d) for d in shape)
        raise ValueError(f"the server's model {model} takes inputs [B, {wanted}], this run would send "
                         f"[{', '.join(map(str, [batch_size, *sending]))}]: {_input_hint(shape)}")
    min_side = info.get("input_min_side")
    free = [got for need, got in zip(shape, sending) if need is None]
    if isinstance(min_side, int) and free and min(free) < min_side:
        raise ValueError(f"the server's model {model} takes images of at least {min_side}x{min_side} pixels: "
                         f"run with --image-size {min_side} or more (not {min(free)})")
    dtypes = info.get("input_dtypes")
    if isinstance(dtypes, list) and dtypes and wire_dtype not in dtypes:
        raise ValueError(f"the server's model {model} takes {', '.join(map(str, dtypes))} inputs, "
                         f"not --wire-dtype {wire_dtype}")


def _input_hint(shape: list) -> str:
    """The flag that makes this run send what a model of input `shape` ([C, H, W] or other) takes."""
    if len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]:
        return "run without --input-shape" if shape[1] is None else f"run with --image-size {shape[1]}"
    if all(isinstance(d, int) for d in shape):
        return f"run with --input-shape {','.join(map(str, shape))}"
    return "infer-client sends [B, 3, S, S] images or a fixed --input-shape"


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

    Closed loop (no `rate`, no `schedule`): at most `concurrency` requests in flight
    (0 = unbounded: everything at once, the seed's flood); a request's scheduled
    time is when its slot became free, i.e. now. With `ramp_s`, the cap steps
    linearly from `ramp_start` to `concurrency` over that many seconds.

    Open loop (`rate`, or a recorded `schedule` of send offsets in seconds): request k
    is scheduled at start + its offset (the sum of the first k gaps for a rate),
    whether or not earlier replies came back, so latency measured from the scheduled
    time includes any queueing a slow server causes (no coordinated omission). With
    `ramp_s`, the rate rises (or falls) linearly from `ramp_start` to `rate` over that
    many seconds, the arrival process keeping its shape. `concurrency` > 0 still caps
    requests in flight; a send held back by the cap shows up as schedule lag. A
    schedule that has run out sends nothing more.
    """

    concurrency: int = 1
    rate: float | None = None
    arrival: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    schedule: Sequence[float] | None = None
    ramp_s: float | None = None
    ramp_start: float = 1.0

    @classmethod
    def from_config(cls, config: ClientConfig) -> Pacer:
        """The pacer a run of `config` sends with (its --schedule-file read again, as validated)."""
        schedule = read_schedule(config.schedule_file) if config.schedule_file else None
        return cls(config.concurrency, config.request_rate, config.arrival, config.burstiness, config.seed,
                   schedule=schedule, ramp_s=config.ramp_s,
                   ramp_start=1.0 if config.ramp_start is None else config.ramp_start)

    def __post_init__(self) -> None:
        self._start_ns = 0
        self._next_due_ns: int | None = 0
        self._offsets = self._open_loop_offsets()
        self._cap_ramp = None
        if self.ramp_s and self._offsets is None:
            if not self.concurrency:
                raise ValueError("an unbounded closed loop (concurrency 0) cannot be ramped")
            self._cap_ramp = ConcurrencyRamp(max(1, int(self.ramp_start)), self.concurrency, self.ramp_s)

    def _open_loop_offsets(self) -> Iterator[float] | None:
        if self.schedule is not None:
            return iter(self.schedule)
        if not self.rate:
            return None
        if self.ramp_s:
            ramp = RateRamp(self.ramp_start, self.rate, self.ramp_s)
            return (ramp.time_at(work) for work in _cumulative(arrival_gaps(1.0, self.arrival, self.burstiness,
                                                                            self.seed)))
        return _cumulative(arrival_gaps(self.rate, self.arrival, self.burstiness, self.seed))

    @property
    def open_loop(self) -> bool:
        return self._offsets is not None

    def start(self, now_ns: int) -> None:
        self._start_ns = now_ns
        if self._offsets is not None:
            self._offsets = self._open_loop_offsets()  # from the first send time again
            self._advance()

    def _advance(self) -> None:
        offset = next(self._offsets, None)  # type: ignore[arg-type]
        self._next_due_ns = None if offset is None else self._start_ns + int(offset * 1e9)

    def _cap(self, now_ns: int) -> int:
        if self._cap_ramp is None:
            return self.concurrency
        return self._cap_ramp.at((now_ns - self._start_ns) / 1e9)

    def next_due_ns(self, now_ns: int, inflight: int) -> int | None:
        """Scheduled time of the next request if it may be sent by `now_ns`, else None."""
        cap = self._cap(now_ns)
        if cap and inflight >= cap:
            return None
        if self._offsets is None:
            return now_ns
        due = self._next_due_ns
        return due if due is not None and due <= now_ns else None

    def wait_ns(self, now_ns: int) -> int | None:
        """How long until the schedule allows a send (None: only a reply can unblock)."""
        if self._offsets is None:
            if self._cap_ramp is None:
                return None
            step = self._cap_ramp.next_step_s((now_ns - self._start_ns) / 1e9)
            return None if step is None else max(0, self._start_ns + int(step * 1e9) - now_ns)
        if self._next_due_ns is None:
            return None  # the schedule has run out
        return max(0, self._next_due_ns - now_ns)

    @property
    def exhausted(self) -> bool:
        """A recorded schedule has no send times left."""
        return self._offsets is not None and self._next_due_ns is None

    def sent(self) -> None:
        """Advance the schedule after a send."""
        if self._offsets is not None:
            self._advance()


def _cumulative(gaps: Iterator[float]) -> Iterator[float]:
    """0, then the running sum of `gaps`: the offsets of an arrival process."""
    offset = 0.0
    while True:
        yield offset
        offset += next(gaps)
