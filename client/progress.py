"""Live progress of a client run on stderr.

Before the measured phase: one line per warm-up ("waiting for the warm-up reply
from X..."), since a first request that compiles can take minutes. During it:
one line per interval (the --window-s length, else DEFAULT_INTERVAL_S) with the
elapsed time, requests answered and failed, that interval's throughput and
p50/p99 latency, the requests in flight and the schedule lag, the way
perf_analyzer reports each measurement window; on a terminal, with a run of
known length, a progress bar under the lines.

Nothing here runs on the I/O thread: the metrics thread (client.metrics.Recorder)
keeps the interval's figures and hands each closed interval to `show` as a
Snapshot, and calls `refresh` for the bar; the sent count and the requests in
flight are read from the loop's plain attributes, which the I/O thread writes
and anyone may read.

Ctrl-C is client/interrupt.py's: `progress.interrupt` holds the run's stop flag,
and its lines are written here.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from client.interrupt import Interrupt

if TYPE_CHECKING:
    from client.config import ClientConfig
    from client.metrics import Snapshot

DEFAULT_INTERVAL_S = 2.0
BAR_REFRESH_NS = 200_000_000


class _Counts(Protocol):
    """What progress reads from the I/O thread's loop (client.loop.MeasureLoop): its counts and pending map."""

    sent: int
    pending: dict[int, Any]


class Progress:
    """Progress lines for one run, and its stop flag; silent when `stream` is None."""

    def __init__(
        self,
        stream: TextIO | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        batch_size: int = 1,
        total_requests: int | None = None,
        total_s: float | None = None,
        bar: bool | None = None,
        interrupt: Interrupt | None = None,
    ):
        self.stream = stream
        self.interval_ns = int(interval_s * 1e9)
        self.batch_size = batch_size
        self.total_requests = total_requests
        self.total_s = total_s
        # Ctrl-C (client/interrupt.py): its stop flag ends the measured phase; its lines are written here.
        self.interrupt = interrupt or Interrupt(say=lambda line, in_handler: self.say(line, in_handler))
        self._phase = "before"  # before -> measuring -> after
        self._loop: _Counts | None = None
        self._want_bar = bar if bar is not None else bool(stream is not None and _isatty(stream))
        self._bar: Any = None
        self._bar_ns = 0  # the last refresh of the bar
        self._last: Snapshot | None = None  # the metrics thread's last, partial interval, for the closing line
        self._lock = threading.Lock()
        self._deferred: list[str] = []  # lines from a signal handler that found the lock taken

    @classmethod
    def for_run(cls, config: ClientConfig, stream: TextIO | None, interval_s: float | None = None) -> Progress:
        """Progress for `config`'s run: lines every window (or `interval_s`), a bar when its length is known."""
        every = interval_s or config.window_s or DEFAULT_INTERVAL_S
        return cls(stream, every, config.batch_size, config.num_iters, config.duration_s)

    @property
    def stop(self) -> threading.Event:
        """Set to end the measured phase (by Ctrl-C, or once the windows are stable)."""
        return self.interrupt.stop

    @property
    def interrupted(self) -> bool:
        return self.interrupt.interrupted

    @property
    def enabled(self) -> bool:
        return self.stream is not None

    # -- the main thread ---------------------------------------------------------

    def warming_up(self, endpoint: str) -> None:
        self.say(f"waiting for the warm-up reply from {endpoint} (the first request of a shape may compile)")

    def warmed_up(self, endpoint: str, seconds: float | None) -> None:
        if seconds is not None:
            self.say(f"warm-up reply from {endpoint} after {seconds:.3f} s")

    def start_measuring(self, loop: _Counts | None) -> None:
        """The measured phase begins (`loop` None: its counts are elsewhere, e.g. in client processes)."""
        self._loop = loop
        self._phase = "measuring"
        self.interrupt.measuring = True
        self.say(f"measuring: {self._length()}; Ctrl-C stops early and keeps the partial result")

    def finish(self) -> None:
        """The measured phase is over (the metrics thread has stopped): its last line, and the bar closed."""
        if self._deferred:
            self.say(self._deferred.pop())  # say() writes the ones before it first
        if self._phase != "measuring":
            return
        self._phase = "after"
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        last = self._last
        if last is not None and last.replies and last.span_ns >= self.interval_ns / 10:  # a sliver's rate misleads
            self.say(self.line(last))

    def say(self, line: str, from_signal_handler: bool = False) -> None:
        """One line on the stream (above the bar, if there is one).

        A signal handler runs on the main thread between any two of its
        bytecodes, perhaps inside this very method: it must not wait for the
        lock (a deadlock) nor write into a write in progress, so its line waits
        for the next one instead when the lock is taken.
        """
        if self.stream is None:
            return
        if not self._lock.acquire(blocking=not from_signal_handler):
            self._deferred.append(line)
            return
        try:
            self._deferred.append(line)
            while self._deferred:  # a handler's line deferred by this very write is written next
                text = self._deferred.pop(0)
                if self._bar is not None:
                    self._bar.write(text, file=self.stream)
                else:
                    self.stream.write(text + "\n")
                    self.stream.flush()
        finally:
            self._lock.release()

    # -- the metrics thread ----------------------------------------------------------

    def refresh(self, elapsed_ns: int) -> None:
        """From the metrics thread's loop: refresh the bar (at most every BAR_REFRESH_NS)."""
        if self.stream is None or self._phase != "measuring" or not self._want_bar:
            return
        now_ns = time.monotonic_ns()
        if now_ns - self._bar_ns >= BAR_REFRESH_NS:
            self._bar_ns = now_ns
            self._update_bar(elapsed_ns)

    def show(self, snapshot: Snapshot, last: bool = False) -> None:
        """From the metrics thread: an interval is over, its line now; the `last`, partial one waits for `finish`."""
        if self.stream is None or self._phase != "measuring":
            return
        if last:
            self._last = snapshot
        else:
            self.say(self.line(snapshot))

    def line(self, s: Snapshot) -> str:
        """One interval as one line."""
        loop = self._loop
        inflight = len(loop.pending) if loop is not None else None  # the I/O thread's own count
        span_s = max(1e-9, s.span_ns / 1e9)
        parts = [
            f"[{s.elapsed_ns / 1e9:6.1f} s]",
            f"{s.ok} ok, {s.failed} failed",
            f"{s.replies * self.batch_size / span_s:.1f} samples/s, p50 {_ms(s.p50_ns)}, p99 {_ms(s.p99_ns)}"
            f" (last {span_s:.1f} s)",
        ]
        if inflight is not None:
            parts.append(f"{inflight} in flight")
        parts.append(f"schedule lag max {_ms(s.lag_max_ns)}")
        done = self._fraction(s.elapsed_ns)
        if done is not None:
            parts.append(f"{100 * done:.0f}%")
        return parts[0] + " " + " | ".join(parts[1:])

    def _fraction(self, elapsed_ns: int) -> float | None:
        if self.total_requests and self._loop is not None:
            return min(1.0, self._loop.sent / self.total_requests)
        if self.total_s:
            return min(1.0, elapsed_ns / 1e9 / self.total_s)
        return None

    def _length(self) -> str:
        if self.total_requests:
            return f"{self.total_requests} requests"
        if self.total_s:
            return f"{self.total_s:g} s"
        return "until the windows are stable"

    def _update_bar(self, elapsed_ns: int) -> None:
        done = self._fraction(elapsed_ns)
        if done is None:
            return
        with self._lock:
            if self._bar is None:
                from tqdm import tqdm  # only on a terminal: nothing heavy before it is needed

                self._bar = tqdm(total=1000, file=self.stream, leave=False, dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
            self._bar.n = int(done * 1000)
            self._bar.refresh()




def _ms(ns: int | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:.3f} ms"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
