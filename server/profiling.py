"""A torch.profiler trace of a chosen window of requests (the CONTROL actions profile_start and profile_stop).

The profiler is started and stopped on the I/O thread, which is not the thread
that runs the model when there are worker threads; torch.profiler records only
the thread that started it unless told otherwise, so it runs with
`profile_all_threads`, and every prediction thread's operators land in the
trace. Each job a prediction thread runs while the profiler is on is one
`infer_job` range (a user annotation), so a trace says how many forward passes
it holds. The window is exact when nothing is in flight at the start and the
stop (a client sends profile_stop after its last reply): a job running across
either edge is recorded in part.

The trace is Chrome/Perfetto JSON (`export_chrome_trace`): CPU operators, and
the CUDA kernels and copies too when the model runs on a GPU. It is written on
the I/O thread when the window stops, so that reply waits for it.

`python -m server.profiling TRACE` prints the operators that took most time of
their own in a trace (a Markdown table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from common.protocol import ErrorCode, ProtocolError

JOB_RANGE = "infer_job"  # the annotation around each job run while profiling
_recording = False  # read by every job: a plain flag costs nothing when no window is open


def recording() -> bool:
    """A profiling window is open (the jobs' ranges are recorded)."""
    return _recording


def job_range() -> contextlib.AbstractContextManager:
    """Around one job's forward pass: an `infer_job` range while a window is open, nothing otherwise."""
    return record_function(JOB_RANGE) if _recording else contextlib.nullcontext()


def writable_dir(path: str) -> Path:
    """`path` as a directory this process may write, made if missing; BAD_REQUEST naming it otherwise."""
    directory = Path(path)
    if not directory.is_absolute():
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"profile dir must be an absolute server-side path: {path!r}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot create profile dir {path}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"profile dir is not a writable directory: {path}")
    return directory


def _new_profile(device: torch.device) -> profile:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    all_threads = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    return profile(activities=activities, experimental_config=all_threads)


class Profiler:
    """The server's one profiling window: at most one open at a time (torch.profiler is per process)."""

    def __init__(self, device: torch.device, instance: str) -> None:
        self.device = device
        self.instance = instance
        self.traces_written = 0
        self._active: profile | None = None
        self._dir: Path | None = None

    def start(self, path: str | None) -> None:
        global _recording
        if self._active is not None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a profile is already running; send profile_stop first")
        if path is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "profile_start needs 'dir', a server-side directory")
        directory = writable_dir(path)
        active = _new_profile(self.device)
        active.start()
        self._active, self._dir = active, directory
        _recording = True

    def stop(self) -> str:
        """End the window and write its trace; returns the trace's path."""
        global _recording
        if self._active is None or self._dir is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "no profile is running; send profile_start first")
        active, directory = self._active, self._dir
        self._active, self._dir, _recording = None, None, False
        active.stop()
        self.traces_written += 1
        trace = directory / f"trace-{self.instance[:12]}-{self.traces_written}.json"
        try:
            active.export_chrome_trace(str(trace))
        except OSError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"could not write the trace {trace}: {exc}") from exc
        return str(trace)

    def close(self) -> None:
        """At shutdown: an open window ends without a trace (nobody is left to be told its path)."""
        global _recording
        if self._active is not None:
            self._active.stop()
            self._active, _recording = None, False


# -- reading a trace -----------------------------------------------------------


@dataclass
class OperatorTime:
    name: str
    calls: int
    self_us: float
    total_us: float


def load_events(trace: str | Path) -> list[dict[str, Any]]:
    """The complete ("X") events of a Chrome trace file."""
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _self_times(ops: list[dict[str, Any]]) -> list[float]:
    """Each op's duration less its direct children's, the ops of one thread in start order."""
    self_us = [float(e["dur"]) for e in ops]
    stack: list[int] = []
    for i, e in enumerate(ops):
        while stack and ops[stack[-1]]["ts"] + ops[stack[-1]]["dur"] <= e["ts"]:
            stack.pop()
        if stack:
            self_us[stack[-1]] -= float(e["dur"])
        stack.append(i)
    return self_us


def top_operators(trace: str | Path, limit: int = 15, category: str = "cpu_op") -> list[OperatorTime]:
    """The operators of `category` (cpu_op, or kernel on a GPU) that took most time of their own."""
    threads: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in load_events(trace):
        if e.get("cat") == category:
            threads[(e.get("pid"), e.get("tid"))].append(e)
    totals: dict[str, OperatorTime] = {}
    for ops in threads.values():
        ops.sort(key=lambda e: (e["ts"], -e["dur"]))
        for e, own in zip(ops, _self_times(ops)):
            op = totals.setdefault(e["name"], OperatorTime(e["name"], 0, 0.0, 0.0))
            op.calls += 1
            op.self_us += own
            op.total_us += float(e["dur"])
    return sorted(totals.values(), key=lambda op: -op.self_us)[:limit]


def format_table(ops: list[OperatorTime]) -> str:
    """A Markdown table: operator, calls, self time (ms, and % of all the listed ops' self time)."""
    whole = sum(op.self_us for op in ops) or 1.0
    lines = ["| operator | calls | self ms | self % | total ms |", "|---|---:|---:|---:|---:|"]
    for op in ops:
        lines.append(f"| `{op.name}` | {op.calls} | {op.self_us / 1e3:.1f} | {100 * op.self_us / whole:.1f} "
                     f"| {op.total_us / 1e3:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.profiling",
                                     description="Top operators by self time in a torch.profiler trace.")
    parser.add_argument("trace", help="a trace written by profile_stop")
    parser.add_argument("--limit", type=int, default=15)
    parser.add_argument("--category", default="cpu_op", help="cpu_op, or kernel for a GPU's kernels")
    args = parser.parse_args(argv)
    try:
        ops = top_operators(args.trace, args.limit, args.category)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read trace {args.trace}: {exc}", file=sys.stderr)
        return 2
    print(format_table(ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
