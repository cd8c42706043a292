"""The metrics thread, and the latency distributions it keeps (`LatencyStats`, client/latency.py).

`Recorder` runs in its own thread: the I/O thread hands it each reply with its
receive time, and it does all the bookkeeping off the hot path.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from client.columns import record_all
from client.latency import PERCENTILES, LatencyStats
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
    from client.verdict import TailSample

TICK_S = 0.05  # how often the metrics thread wakes without replies, to close windows and print progress
HANDED_WITHIN_NS = 20_000_000  # the I/O thread hands a reply over within this (client/loop.py: every 2 ms)

__all__ = ["BREAKDOWN", "PERCENTILES", "Completion", "LatencyStats", "ProgressSink", "Recorder", "ReplyCounts",
           "SendingStarted", "SendingStopped", "Snapshot", "Window", "is_stable"]


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


@dataclass(frozen=True)
class Snapshot:
    """The run so far and one interval of it, as the metrics thread closed that interval (a progress line)."""

    elapsed_ns: int  # from the first send to the interval's end
    span_ns: int  # the interval's length
    ok: int  # replies so far, every server
    failed: int
    replies: int  # successful replies within the interval
    p50_ns: int | None  # the interval's latency percentiles; None without a reply in it
    p99_ns: int | None
    lag_max_ns: int | None


class ProgressSink(Protocol):
    """What the metrics thread feeds with snapshots (client/progress.py's Progress)."""

    interval_ns: int

    @property
    def enabled(self) -> bool: ...

    def refresh(self, elapsed_ns: int) -> None: ...

    def show(self, snapshot: Snapshot, last: bool = False) -> None: ...


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
        progress: ProgressSink | None = None,
        tail: TailSample | None = None,
        on_decided: Callable[[], None] | None = None,
    ):
        super().__init__(name="metrics", daemon=True)
        self.batch_size = batch_size
        self.slo_ns = slo_ns
        self.window_ns = window_ns
        self.on_window = on_window  # called with the list of closed windows, from this thread
        # Live progress (client/progress.py): fed snapshots from this thread, never from the I/O thread.
        self.progress = progress if progress is not None and progress.enabled else None
        self._interval = LatencyStats()  # the progress interval's latencies (only with progress)
        self._interval_lag_max_ns = 0
        self._interval_start_ns: int | None = None
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
        # A peak-search probe's per-request times (client/verdict.py), looked at after each batch of replies.
        self.tail = tail
        self._on_decided = on_decided
        self.cpu_s = 0.0  # this thread's CPU time, once it has stopped

    def run(self) -> None:
        ticking = bool(self.window_ns or self.progress)
        cpu0 = time.thread_time()
        try:
            self._serve(ticking)
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _serve(self, ticking: bool) -> None:
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
                self._progress_tick(time.monotonic_ns())
        if self.progress is not None:
            self._progress_end()
        if self._trace:
            self._trace.close()

    def _progress_tick(self, now_ns: int) -> None:
        """Refresh the progress bar; when a progress interval is over, hand progress its snapshot."""
        assert self.progress is not None
        if self.start_ns is None:
            return
        if self._interval_start_ns is None:
            self._interval_start_ns = self.start_ns
        self.progress.refresh(now_ns - self.start_ns)
        if now_ns - self._interval_start_ns >= self.progress.interval_ns:
            self.progress.show(self.snapshot(now_ns))

    def _progress_end(self) -> None:
        """Hand progress the last, partial interval: up to the last reply."""
        assert self.progress is not None
        if self.start_ns is not None:
            end_ns = max((b.last_recv_ns or 0 for b in self.backends), default=0) or time.monotonic_ns()
            self.progress.show(self.snapshot(end_ns), last=True)

    def snapshot(self, now_ns: int) -> Snapshot:
        """The run so far and the progress interval ending at `now_ns`; starts the next interval."""
        assert self.start_ns is not None
        start = self._interval_start_ns if self._interval_start_ns is not None else self.start_ns
        interval = self._interval

        def ns(p: float) -> int | None:
            value = interval.percentile_s(p)
            return round(value * 1e9) if value is not None else None

        snap = Snapshot(
            elapsed_ns=now_ns - self.start_ns, span_ns=now_ns - start, ok=sum(b.ok for b in self.backends),
            failed=sum(sum(b.failed.values()) for b in self.backends), replies=interval.count, p50_ns=ns(50),
            p99_ns=ns(99), lag_max_ns=self._interval_lag_max_ns if interval.count else None,
        )
        self._interval, self._interval_lag_max_ns, self._interval_start_ns = LatencyStats(), 0, now_ns
        return snap

    def stop(self) -> None:
        self.inbox.put(None)
        self.join()

    def _take(self, batch: list[Completion]) -> None:
        self._take_batch(batch)
        if self.tail is not None and self.tail.look_due() and self.tail.look().ends_probe and self._on_decided:
            self._on_decided()

    def _take_batch(self, batch: list[Completion]) -> None:
        if not self.window_ns or self.start_ns is None:
            record_all(self, batch)
            return
        if not batch:  # a tick: windows that ended before the replies still with the I/O thread can close
            self._close_windows(time.monotonic_ns() - HANDED_WITHIN_NS)
        first = 0
        while first < len(batch):
            # Close finished windows first, so a reply counts in the window it arrived in: the replies
            # up to the next window's start are recorded together.
            self._close_windows(batch[first].recv_ns)
            end = self.start_ns + (len(self.windows) + 1) * self.window_ns
            stop = self.send_end_ns if self.send_end_ns is not None else end
            last = first + 1
            while last < len(batch) and min(batch[last].recv_ns, stop) < end:
                last += 1
            record_all(self, batch[first:last])
            first = last

    def _record(self, c: Completion) -> None:
        b = self.backends[c.backend]
        b.last_recv_ns = c.recv_ns if b.last_recv_ns is None else max(b.last_recv_ns, c.recv_ns)
        if c.msg_type == MsgType.ERROR:
            error = ErrorHeader.from_wire(c.header)
            b.failed[error.name] = b.failed.get(error.name, 0) + 1
            if self.tail is not None:
                self.tail.record_failed(error.id, c.recv_ns)
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
            self._interval.record(latency)
            self._interval_lag_max_ns = max(self._interval_lag_max_ns, sent_ns - scheduled_ns)
        if self.slo_ns is not None and latency <= self.slo_ns:
            self.under_slo += 1
        if self.tail is not None:
            self.tail.record(reply.id, scheduled_ns, sent_ns, c.recv_ns)
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
