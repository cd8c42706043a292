"""Optional dynamic batching: stack small requests into one forward pass.

Runs inside the I/O thread's event loop (no thread of its own): requests whose
samples have the same dtype and [C, H, W] wait in a bucket until the bucket
holds `max_batch_size` rows or its oldest request has waited `timeout_ns`, then
the bucket becomes one Job. Workers split the output back per request.
"""

from __future__ import annotations

from server.workers import Job, PendingRequest


class Batcher:
    def __init__(self, max_batch_size: int, timeout_ns: int):
        self.max_batch_size = max_batch_size
        self.timeout_ns = timeout_ns
        self._buckets: dict[tuple, list[PendingRequest]] = {}
        self._deadlines: dict[tuple, int] = {}
        self._rows: dict[tuple, int] = {}

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    def add(self, req: PendingRequest, now_ns: int) -> list[Job]:
        """Queue a request; returns the jobs that are now ready."""
        rows = req.tensor.shape[0]
        if rows >= self.max_batch_size:
            return [Job([req])]
        key = (req.tensor.dtype, tuple(req.tensor.shape[1:]))
        ready = []
        if self._rows.get(key, 0) + rows > self.max_batch_size:
            ready.append(self._pop(key))
        if key not in self._buckets:
            self._buckets[key] = []
            self._rows[key] = 0
            self._deadlines[key] = now_ns + self.timeout_ns
        self._buckets[key].append(req)
        self._rows[key] += rows
        if self._rows[key] >= self.max_batch_size:
            ready.append(self._pop(key))
        return ready

    def due(self, now_ns: int, flush_all: bool = False) -> list[Job]:
        """Jobs whose oldest request has waited long enough (or all, when draining)."""
        keys = [k for k, d in self._deadlines.items() if flush_all or d <= now_ns]
        return [self._pop(k) for k in keys]

    def next_deadline_ns(self) -> int | None:
        return min(self._deadlines.values(), default=None)

    def _pop(self, key: tuple) -> Job:
        reqs = self._buckets.pop(key)
        del self._rows[key], self._deadlines[key]
        return Job(reqs)
