"""Stand-in models that run no network: `noop` (no time at all) and `sleep` (a known service time).

Both return float32 logits [B, 1000] whose row i repeats the first element of
sample i, so that tests can check that each caller gets its own rows back
(e.g. through dynamic batching).
"""

from __future__ import annotations

import random
import threading
import time

import torch
from torch import nn

from server.models.spec import SERVICE_DISTS

NUM_CLASSES = 1000
# The last stretch of a sleep-model call is spun rather than slept: waking from
# time.sleep lands ~0.1 ms late on Linux (timer slack plus the wake-up itself),
# so sleeping to this much before the deadline and spinning the rest ends the
# call on its deadline instead of after it.
SPIN_NS = 300_000


def rows_from_first_elements(x: torch.Tensor) -> torch.Tensor:
    # A [B, 1000] view whose row i repeats sample i's first element (stride 0
    # along the row), then one copy (converting to float32 on the way when the
    # input is not): 2 torch calls, a third of the time of reshape/slice/expand,
    # which counts when this stands in for the model.
    rows = x.as_strided((x.shape[0], NUM_CLASSES), (x.stride(0), 0))
    return rows.contiguous() if x.dtype == torch.float32 else rows.float()


class NoopModel(nn.Module):
    """Returns logits of the right shape without running a network."""

    # ModelRunner calls a stand-in's forward directly: no hook is ever registered on one, and the checks
    # of a module call cost as much as this model's forward at batch 1.
    stand_in = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rows_from_first_elements(x)


class SleepModel(nn.Module):
    """A model with a known service time, for queueing tests and demonstrations (a "null SUT").

    Each call takes `service_ms` (dist "fixed") or a time drawn from an
    exponential distribution of mean `service_ms` (dist "exp", seeded: the k-th
    call of a model built with the same seed waits the same time, whichever
    worker thread makes it). With `per_row`, the time is multiplied by the
    call's batch rows, as a compute-bound model's would be.

    The GIL: like a real torch model, which releases the GIL inside its kernels
    and holds it only for the Python between them, this model sleeps with the
    GIL released and holds it only for the last SPIN_NS of each call, which it
    spins on so the call ends on its deadline rather than "at least" then. So
    several worker threads overlap their service times as they would with a
    real model. The deadline counts from the start of forward(); a wait runs
    late only when the thread cannot get a CPU or the GIL back on time.

    On a GPU the wait happens on the host between the call's kernel launches: the
    GPU idles, and the worker's CUDA events around the call time the wait as compute.
    """

    stand_in = True  # called through forward (see NoopModel)

    def __init__(self, service_ms: float = 10.0, dist: str = "fixed", per_row: bool = False, seed: int = 0):
        super().__init__()
        if dist not in SERVICE_DISTS:
            raise ValueError(f"service distribution must be one of {', '.join(SERVICE_DISTS)}, not {dist!r}")
        if not service_ms >= 0:  # also refuses NaN
            raise ValueError(f"service time must be >= 0 ms, not {service_ms}")
        self.service_ms = float(service_ms)
        self.dist = dist
        self.per_row = per_row
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()  # one sequence of draws shared by every worker thread

    def describe(self) -> str:
        scale = " per row" if self.per_row else ""
        return f"sleep({self.dist} {self.service_ms:g} ms{scale})"

    def service_s(self, rows: int) -> float:
        """The next call's service time in seconds (draws from the seeded sequence)."""
        ms = self.service_ms
        if self.dist == "exp" and ms > 0:
            with self._rng_lock:
                ms = self._rng.expovariate(1.0 / ms)
        return ms * (rows if self.per_row else 1) / 1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.serve(x.shape[0])
        return rows_from_first_elements(x)

    def before_compile(self) -> None:
        """Keep the wait out of torch.compile's graph, where its times would be traced
        as constants (and recompiled for every new draw): a graph break, run eagerly.
        ModelRunner calls this only when compiling, since importing Dynamo takes seconds."""
        self.serve = torch.compiler.disable(self.serve)

    def serve(self, rows: int) -> None:
        """Take one call's service time for `rows` rows."""
        start = time.perf_counter_ns()
        wait_until(start + int(self.service_s(rows) * 1e9))


def wait_until(deadline_ns: int) -> None:
    """Return at `deadline_ns` (time.perf_counter_ns), sleeping with the GIL released until just before it."""
    while (remaining := deadline_ns - time.perf_counter_ns()) > SPIN_NS:
        time.sleep((remaining - SPIN_NS) / 1e9)
    while time.perf_counter_ns() < deadline_ns:
        pass
