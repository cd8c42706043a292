"""Latency distributions and the metrics thread.

`LatencyStats` keeps a full HdrHistogram (1 us .. 1 h, 3 significant digits,
so any percentile is within 0.1% of the exact sample) plus exact count, sum,
sum of squares, min and max, so mean, stdev, min and max are exact and no
percentile is ever reported above the max. Its encoded form merges losslessly
across processes and hosts.

`Recorder` runs in its own thread: the I/O thread hands it each reply with its
receive time, and it does all the bookkeeping off the hot path.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hdrh.histogram import HdrHistogram

from common.protocol import (
    BREAKDOWN,
    ErrorHeader,
    MsgType,
    ProtocolError,
    ResultHeader,
    ServerTimes,
    read_tensor_desc,
)

if TYPE_CHECKING:
    from client.progress import Progress

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
TICK_S = 0.05  # how often the metrics thread wakes without replies, to close windows and print progress

__all__ = ["BREAKDOWN", "PERCENTILES", "Completion", "LatencyStats", "Recorder", "ReplyCounts", "SendingStarted",
           "SendingStopped", "Window", "is_stable"]


class LatencyStats:
    """A latency distribution recorded in nanoseconds (the histogram in microseconds)."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.count = 0
        self.sum_ns = 0
        self.sumsq_ns2 = 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None

    def record(self, ns: int) -> None:
        ns = max(0, int(ns))
        self.hist.record_value(min(HIGHEST_US, max(LOWEST_US, round(ns / 1000))))
        self.count += 1
        self.sum_ns += ns
        self.sumsq_ns2 += ns * ns
        self.min_ns = ns if self.min_ns is None else min(self.min_ns, ns)
        self.max_ns = ns if self.max_ns is None else max(self.max_ns, ns)

    def merge(self, other: LatencyStats) -> LatencyStats:
        if other.count:
            self.hist.add(other.hist)
            self.count += other.count
            self.sum_ns += other.sum_ns
            self.sumsq_ns2 += other.sumsq_ns2
            self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)
            self.max_ns = other.max_ns if self.max_ns is None else max(self.max_ns, other.max_ns)
        return self

    def percentile_s(self, p: float) -> float | None:
        if not self.count:
            return None
        value_ns = self.hist.get_value_at_percentile(p) * 1000
        return min(max(value_ns, self.min_ns), self.max_ns) / 1e9

    @property
    def mean_s(self) -> float | None:
        return self.sum_ns / self.count / 1e9 if self.count else None

    @property
    def stdev_s(self) -> float | None:
        if not self.count:
            return None
        var = (self.sumsq_ns2 - self.sum_ns * self.sum_ns / self.count) / self.count
        return math.sqrt(max(0.0, var)) / 1e9

    def summary(self, prefix: str) -> dict[str, float | None]:
        """`{prefix}_min/_mean/_stdev/_p50.../_max` in seconds."""
        out: dict[str, float | None] = {
            f"{prefix}_min": self.min_ns / 1e9 if self.count else None,
            f"{prefix}_mean": self.mean_s,
            f"{prefix}_stdev": self.stdev_s,
        }
        for p in PERCENTILES:
            out[f"{prefix}_p{p:g}".replace(".", "_")] = self.percentile_s(p)
        out[f"{prefix}_max"] = self.max_ns / 1e9 if self.count else None
        return out

    def cdf(self) -> list[tuple[float, float]]:
        """(latency s, cumulative fraction) points, for plots."""
        if not self.count:
            return []
        points = []
        for item in self.hist.get_recorded_iterator():
            points.append((item.value_iterated_to / 1e6, item.total_count_to_this_value / self.count))
        return points

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum_ns": self.sum_ns,
            "sumsq_ns2": self.sumsq_ns2,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "hdr": self.hist.encode().decode("ascii") if self.count else "",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyStats:
        s = cls()
        if d.get("count"):
            s.hist = HdrHistogram.decode(d["hdr"].encode("ascii"))
            s.count, s.sum_ns, s.sumsq_ns2 = d["count"], d["sum_ns"], d["sumsq_ns2"]
            s.min_ns, s.max_ns = d["min_ns"], d["max_ns"]
        return s


@dataclass
class Completion:
    """What the I/O thread hands the metrics thread for each reply."""

    backend: int
    msg_type: MsgType
    header: dict[str, Any]
    recv_ns: int


@dataclass(frozen=True)
class SendingStarted:
    """I/O thread -> metrics thread: the measured phase's first send is due now."""

    ns: int


@dataclass(frozen=True)
class SendingStopped:
    """I/O thread -> metrics thread: no more measured sends; replies may still arrive.

    Windows describe the load as offered, so none reaching into the drain that
    follows is closed.
    """

    ns: int


@dataclass
class ReplyCounts:
    """One backend's replies as the metrics thread counted them (sends and losses are the I/O thread's)."""

    endpoint: str
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    last_recv_ns: int | None = None
    latency: LatencyStats = field(default_factory=LatencyStats)


Inbox = list[Completion] | SendingStarted | SendingStopped | None


@dataclass
class Window:
    throughput: float  # samples/s
    p50_s: float | None
    count: int


class Recorder(threading.Thread):
    """The metrics thread: turns completions into distributions, windows and traces.

    Everything here is written by this thread only. The I/O thread talks to it
    through `inbox`: a list of `Completion`s per loop turn, `SendingStarted` and
    `SendingStopped` events, and None to stop.
    """

    def __init__(
        self,
        batch_size: int,
        backends: list[str],
        slo_ns: int | None = None,
        window_ns: int | None = None,
        trace_file: Path | None = None,
        on_window: Callable[[list[Window]], None] | None = None,
        progress: Progress | None = None,
    ):
        super().__init__(name="metrics", daemon=True)
        self.batch_size = batch_size
        self.slo_ns = slo_ns
        self.window_ns = window_ns
        self.on_window = on_window  # called with the list of closed windows, from this thread
        # Live progress (client/progress.py): fed and ticked from this thread, never from the I/O thread.
        self.progress = progress if progress is not None and progress.enabled else None
        self.inbox: queue.SimpleQueue[Inbox] = queue.SimpleQueue()
        self.latency = LatencyStats()
        self.rtt = LatencyStats()
        self.schedule_lag = LatencyStats()
        self.breakdown = {name: LatencyStats() for name in (*BREAKDOWN, "transport")}
        self.backends = [ReplyCounts(e) for e in backends]
        self.under_slo = 0
        self.windows: list[Window] = []
        self.start_ns: int | None = None  # from SendingStarted
        self.send_end_ns: int | None = None  # from SendingStopped
        self._window_count = 0
        self._window_hist: LatencyStats | None = None
        self._trace: TextIO | None = open(trace_file, "w") if trace_file else None

    def run(self) -> None:
        ticking = bool(self.window_ns or self.progress)
        while True:
            try:
                item = self.inbox.get(timeout=TICK_S if ticking else None)
            except queue.Empty:
                item = []  # a tick: close windows by the clock too
            if item is None:
                break
            if isinstance(item, list):
                self._take(item)
            elif isinstance(item, SendingStarted):
                self.start_ns = item.ns
            else:
                self.send_end_ns = item.ns
            if self.progress is not None:
                self.progress.tick(self, time.monotonic_ns())
        if self._trace:
            self._trace.close()

    def stop(self) -> None:
        self.inbox.put(None)
        self.join()

    def _take(self, batch: list[Completion]) -> None:
        if not self.window_ns or self.start_ns is None:
            for c in batch:
                self._record(c)
            return
        if not batch:
            self._close_windows(time.monotonic_ns())
        for c in batch:
            # Close finished windows first, so a reply counts in the window it arrived in.
            self._close_windows(c.recv_ns)
            self._record(c)

    def _record(self, c: Completion) -> None:
        b = self.backends[c.backend]
        b.last_recv_ns = c.recv_ns if b.last_recv_ns is None else max(b.last_recv_ns, c.recv_ns)
        if c.msg_type == MsgType.ERROR:
            error = ErrorHeader.from_wire(c.header)
            b.failed[error.name] = b.failed.get(error.name, 0) + 1
            self._write_trace(c, error.id, error.ts, error=error.name)
            return
        try:
            reply = ResultHeader.from_wire(c.header)
        except ProtocolError:
            reply = None
        if c.msg_type != MsgType.RESULT or reply is None or not self._well_formed(reply):
            b.failed["BAD_REPLY"] = b.failed.get("BAD_REPLY", 0) + 1
            return
        scheduled_ns, sent_ns = reply.ts
        latency = c.recv_ns - scheduled_ns
        rtt = c.recv_ns - sent_ns
        b.ok += 1
        b.latency.record(latency)
        self.latency.record(latency)
        self.rtt.record(rtt)
        self.schedule_lag.record(sent_ns - scheduled_ns)
        if self.progress is not None:
            self.progress.add(latency, sent_ns - scheduled_ns)
        if self.slo_ns is not None and latency <= self.slo_ns:
            self.under_slo += 1
        server = reply.server
        for stage in BREAKDOWN:
            self.breakdown[stage].record(server.stage_ns(stage))
        # What the server did not spend: both directions of the network stack,
        # ZeroMQ's I/O threads, and this client's own send/receive work.
        self.breakdown["transport"].record(max(0, rtt - server.total_ns))
        if self.window_ns:
            self._window_count += 1
            if self._window_hist is None:
                self._window_hist = LatencyStats()
            self._window_hist.record(latency)
        self._write_trace(c, reply.id, reply.ts, server)

    def _well_formed(self, reply: ResultHeader) -> bool:
        """Our two timestamps echoed, and one output row per input row."""
        ts = reply.ts
        if not isinstance(ts, list) or len(ts) != 2 or not all(isinstance(t, int) for t in ts):
            return False
        if not reply.tensors or not isinstance(reply.tensors[0], dict):
            return False
        shape = read_tensor_desc(reply.tensors[0])[1]
        return isinstance(shape, list) and bool(shape) and shape[0] == self.batch_size

    def _write_trace(
        self, c: Completion, request_id: Any, ts: Any, server: ServerTimes | None = None, error: str | None = None
    ) -> None:
        if not self._trace:
            return
        ts = ts if isinstance(ts, list) else []
        row = {
            "id": request_id,
            "backend": self.backends[c.backend].endpoint,
            "scheduled_ns": ts[0] if ts else None,
            "sent_ns": ts[1] if len(ts) > 1 else None,
            "received_ns": c.recv_ns,
            "server": server.to_wire() if server is not None else None,
        }
        if error:
            row["error"] = error
        self._trace.write(json.dumps(row) + "\n")

    def _close_windows(self, now_ns: int) -> None:
        assert self.window_ns and self.start_ns is not None
        if self.send_end_ns is not None:
            now_ns = min(now_ns, self.send_end_ns)
        while now_ns - self.start_ns >= (len(self.windows) + 1) * self.window_ns:
            hist = self._window_hist
            self.windows.append(
                Window(
                    throughput=self._window_count * self.batch_size / (self.window_ns / 1e9),
                    p50_s=hist.percentile_s(50) if hist else None,
                    count=self._window_count,
                )
            )
            self._window_count = 0
            self._window_hist = None
            if self.on_window:
                self.on_window(self.windows)


def is_stable(windows: list[Window], count: int = 3, tolerance: float = 0.10) -> bool:
    """perf_analyzer's criterion: the last `count` windows' throughput and p50 each
    within `tolerance` of their mean."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.throughput for w in last], [w.p50_s for w in last]):
        if any(v is None for v in values):
            return False
        mean = sum(values) / count
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in values):
            return False
    return True
