"""Live progress: the lines a run prints, Ctrl-C as "stop measuring", and the partial result it leaves.

The unit tests feed a Recorder replies and tick it on a clock the test sets, with
a stand-in for the I/O loop, and read the lines its Progress prints; the
integration tests run infer-client against a real server and read its stderr.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.metrics import Completion, Recorder
from client.progress import Progress
from common.protocol import ErrorCode, ErrorHeader, MsgType, ResultHeader, ServerTimes, tensor_desc
from tests.support import ROOT

LINE = re.compile(
    r"^\[\s*(?P<t>[\d.]+) s\] (?P<ok>\d+) ok, (?P<failed>\d+) failed \| (?P<rate>[\d.]+) samples/s,"
    r" p50 (?P<p50>[\d.]+|n/a)( ms)?, p99 (?P<p99>[\d.]+|n/a)( ms)? \(last [\d.]+ s\)"
    r" \| (?P<inflight>\d+) in flight \| schedule lag max [\d.na/]+( ms)?( \| (?P<pct>\d+)%)?$"
)


@dataclass
class FakeLoop:
    """What Progress reads of client.loop.MeasureLoop."""

    sent: int = 0
    pending: dict = field(default_factory=dict)


def _progress(**kw) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(out, interval_s=1.0, batch_size=2, bar=False, **kw), out


def _reply(rid: int, recv_ns: int, latency_ns: int, lag_ns: int = 0, rows: int = 2) -> Completion:
    """A RESULT received at `recv_ns`, scheduled `latency_ns` earlier and sent `lag_ns` after its schedule."""
    scheduled = recv_ns - latency_ns
    header = ResultHeader(rid, [scheduled, scheduled + lag_ns], [tensor_desc("float32", [rows, 1000])], ServerTimes())
    return Completion(0, MsgType.RESULT, header.to_wire(), recv_ns)


def _overloaded(rid: int, recv_ns: int) -> Completion:
    header = ErrorHeader(int(ErrorCode.OVERLOADED), "OVERLOADED", "busy", id=rid, ts=[0, 0])
    return Completion(0, MsgType.ERROR, header.to_wire(), recv_ns)


def test_a_line_per_interval_with_the_recorders_figures_of_that_interval() -> None:
    progress, out = _progress(total_requests=100)
    rec = Recorder(batch_size=2, backends=["x"], progress=progress)
    loop = FakeLoop()
    progress.start_measuring(loop)
    rec.start_ns = 0
    # 50 replies of 1..50 ms in the first second
    rec._take([_reply(i, i * 10_000_000, i * 1_000_000, lag_ns=10_000) for i in range(1, 51)])
    loop.sent, loop.pending = 53, {1: 0, 2: 0, 3: 0}
    rec._progress_tick(500_000_000)  # mid-interval: nothing yet
    assert out.getvalue().splitlines()[-1].startswith("measuring: 100 requests")
    rec._progress_tick(1_000_000_000)
    first = LINE.match(out.getvalue().splitlines()[-1])
    assert first, out.getvalue()
    assert (first["t"], first["ok"], first["failed"], first["inflight"], first["pct"]) == ("1.0", "50", "0", "3", "53")
    assert float(first["rate"]) == 100.0  # 50 replies x batch 2 in 1 s
    # The interval's percentiles are the recorder's (HdrHistogram: within 0.1%); the max is exact.
    assert float(first["p50"]) == pytest.approx(25.0, rel=1e-3) and first["p99"] == "50.000"
    # The next interval counts only its own replies.
    rec._take([_reply(51, 1_500_000_000, 7_000_000), *(_overloaded(52 + i, 1_600_000_000) for i in range(4))])
    rec._progress_tick(2_000_000_000)
    second = LINE.match(out.getvalue().splitlines()[-1])
    assert second and (second["ok"], second["failed"], second["p50"], second["rate"]) == ("51", "4", "7.000", "2.0")
    # The last, partial interval (up to the last reply) is the closing line.
    rec._take([_reply(56, 2_500_000_000, 3_000_000)])
    rec._progress_end()
    progress.finish()
    closing = LINE.match(out.getvalue().splitlines()[-1])
    assert closing and (closing["t"], closing["ok"], closing["p50"]) == ("2.5", "52", "3.000")


def test_a_bar_under_the_lines_when_the_run_has_a_known_length() -> None:
    out = io.StringIO()
    progress = Progress(out, interval_s=1.0, total_s=4.0, bar=True)
    rec = Recorder(batch_size=1, backends=["x"], progress=progress)
    progress.start_measuring(FakeLoop())
    rec.start_ns = 0
    rec._take([_reply(1, 500_000_000, 1_000_000, rows=1)])
    rec._progress_tick(1_000_000_000)  # a quarter of the way: the bar, and the interval's line above it
    assert progress._bar is not None and progress._bar.n == 250
    progress.finish()
    text = out.getvalue()
    assert "25%|" in text and any(LINE.match(ln.strip("\r")) for ln in text.splitlines())


def test_silent_progress_prints_nothing_and_costs_the_recorder_nothing() -> None:
    progress = Progress(None)
    rec = Recorder(batch_size=1, backends=["x"], progress=progress)
    assert rec.progress is None  # no per-reply call at all
    progress.warming_up("tcp://x:1")
    progress.start_measuring(FakeLoop())
    progress.finish()


def test_warm_up_lines_name_the_server() -> None:
    progress, out = _progress()
    progress.warming_up("tcp://h:1")
    progress.warmed_up("tcp://h:1", 38.25)
    assert out.getvalue().splitlines() == [
        "waiting for the warm-up reply from tcp://h:1 (the first request of a shape may compile)",
        "warm-up reply from tcp://h:1 after 38.250 s",
    ]


def test_ctrl_c_stops_the_measurement_once_then_interrupts() -> None:
    progress, out = _progress(total_s=10.0)
    with pytest.raises(KeyboardInterrupt):  # before the measured phase: nothing to keep
        progress.interrupt.on_signal()
    passed_on = []
    progress.interrupt.on_interrupt(lambda: passed_on.append(True))
    progress.start_measuring(FakeLoop())
    progress.interrupt.on_signal()
    assert progress.interrupted and progress.stop.is_set() and passed_on == [True]
    assert "Ctrl-C again to abort" in out.getvalue()
    with pytest.raises(KeyboardInterrupt):
        progress.interrupt.on_signal()


# -- against a real server ---------------------------------------------------------------------


def _client(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(proc: subprocess.Popen, stream, pattern: re.Pattern, timeout_s: float) -> list[str]:
    """`proc`'s lines on `stream` up to the first that matches `pattern` (bounded: fails after `timeout_s`)."""
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            continue
        line = stream.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if pattern.search(line):
            return lines
    proc.kill()
    raise AssertionError(f"no line matching {pattern.pattern!r} within {timeout_s} s: {lines}")


@pytest.mark.integration
def test_progress_lines_during_a_run_and_none_with_quiet(noop_server) -> None:
    base = ["--server", noop_server.endpoint, "--batch-size", "1", "--image-size", "32", "--output-file", ""]
    proc = subprocess.run([sys.executable, "-m", "client", *base, "--duration", "1.5", "--progress-interval", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == (f"waiting for the warm-up reply from {noop_server.endpoint}"
                        " (the first request of a shape may compile)")
    measured = [m for m in map(LINE.match, lines) if m]
    assert len(measured) >= 2, lines
    assert [int(m["ok"]) for m in measured] == sorted(int(m["ok"]) for m in measured)
    assert measured[-1]["pct"] == "100"
    quiet = subprocess.run([sys.executable, "-m", "client", *base, "--num-iters", "20", "-q"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


@pytest.mark.integration
def test_ctrl_c_writes_the_partial_result_marked_interrupted_and_exits_130(noop_server, tmp_path: Path) -> None:
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    proc = _client("--server", noop_server.endpoint, "--batch-size", "1", "--image-size", "32", "--duration", "600",
                   "--progress-interval", "0.2", "--output-file", str(out_csv), "--json-file", str(out_json))
    try:
        read_until(proc, proc.stderr, LINE, timeout_s=120)  # measuring: a progress line has been printed
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: no more requests sent" in stderr
    assert stdout.startswith("INTERRUPTED (Ctrl-C): a partial result")
    result = json.loads(out_json.read_text())
    assert result["interrupted"] is True and result["summary"]["interrupted"] is True
    assert 0 < result["ok"] == result["sent"] and result["duration_s"] < 600
    (row,) = csv.DictReader(out_csv.open())
    assert row["interrupted"] == "True" and int(row["requests_ok"]) == result["ok"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_ctrl_c_reaches_every_client_process(noop_server, tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    proc = _client("--server", noop_server.endpoint, "--batch-size", "1", "--image-size", "32", "--duration", "600",
                   "--processes", "2", "--output-file", "", "--json-file", str(out_json))
    try:
        read_until(proc, proc.stderr, re.compile("^measuring: "), timeout_s=120)
        proc.send_signal(signal.SIGINT)  # the processes may still be starting: they must stop all the same
        stdout, stderr = proc.communicate(timeout=300)  # each starts an interpreter and imports torch
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stdout.startswith("INTERRUPTED (Ctrl-C)")
    result = json.loads(out_json.read_text())
    assert result["interrupted"] is True and result["parts"] == 2 and result["ok"] == result["sent"]


def test_ctrl_c_inside_a_line_being_written_neither_deadlocks_nor_loses_the_line() -> None:
    progress, out = _progress()
    progress.start_measuring(FakeLoop())

    class Interrupting(io.StringIO):
        """A stream that takes Ctrl-C in the middle of a write, as a signal handler on the main thread would."""

        fired = False

        def write(self, text: str) -> int:
            if not self.fired:
                self.fired = True
                progress.interrupt.on_signal()
            return super().write(text)

    progress.stream = Interrupting()
    progress.say("a line")  # the handler's line must wait: the lock is taken by this very call
    lines = progress.stream.getvalue().splitlines()
    assert progress.interrupted and lines[0] == "a line" and lines[1].startswith("interrupted: no more requests")
    progress.finish()
    assert len(progress.stream.getvalue().splitlines()) == 2
