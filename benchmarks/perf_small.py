"""`make perf`'s small section: batch 1 of 3x32x32 uint8, `--model noop`, where each message's own cost decides.

Each group of rows is measured side by side (interleaved trials of a fixed number
of messages, paired ratios), with the same server processes throughout:

- server: infer-server (`--num-workers 0`, then 1) against the bare echo, both driven
  by the bare DEALER client (`perf_baselines.bare_client`), 8 and 1 in flight; beside
  each, the server process's CPU time per message (all its threads, from the
  kernel's process CPU clock); and, reported, the floor server driven the same way
  (what a Python server that builds a tensor and runs the noop reaches at all);
- client: infer-client against the bare client, both against one infer-server
  `--num-workers 0`, 1 and 8 in flight; beside each, the client's CPU time per
  message over its measured phase;
- scale-out (reported): infer-client `--processes 1` and `2` (8 in flight between
  them) against the mirror (the bare echo answering id, ts, HELLO and STATS, so
  nearly no server at all), against the bare client driving the same mirror: one
  client process's ceiling on this machine, and what a second one adds.
"""

# The measuring closures are called at once, inside their loop turn: B023 does not apply.
# ruff: noqa: B023
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from benchmarks.cputime import process_cpu_ns
from benchmarks.perf_baselines import bare_client
from benchmarks.perf_rows import Row, paired_ratio, side_by_side, target_row
from client.config import ClientConfig
from client.runner import run as run_client

if TYPE_CHECKING:
    from benchmarks.perf import Bench

SIDE = 32
IN_FLIGHT = (8, 1)


def _input() -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class CpuPerMessage:
    """CPU µs per message of one process (all its threads) over each measured trial."""

    def __init__(self, pid: int | None = None):
        self.pid = pid  # None: this process
        self.us: list[float] = []

    def _now(self) -> int:
        return process_cpu_ns(self.pid) if self.pid is not None else time.process_time_ns()

    def measure(self, fn: Callable[[], float], messages: int) -> float:
        before = self._now()
        rate = fn()
        self.us.append((self._now() - before) / messages / 1e3)
        return rate

    def text(self) -> str:
        return f"{statistics.median(self.us):,.1f} µs CPU/msg" if self.us else ""


def infer_client(endpoint: str, messages: int, inflight: int, processes: int = 1,
                 cpu: list[float] | None = None, duration_s: float | None = None) -> float:
    """infer-client's messages/s (its measured phase; `duration_s`: for that long instead of `messages`);
    with `cpu`, its CPU µs per message over that phase (the client's own figure, from 10 ms ticks: within
    a few percent at these trial lengths)."""
    config = ClientConfig(servers=(endpoint,), batch_size=1, image_size=SIDE, wire_dtype="uint8",
                          num_iters=None if duration_s else messages, duration_s=duration_s, warmup=2,
                          concurrency=inflight, processes=processes, gpu_source="off")
    result = run_client(config)
    if result.ok != (result.sent if duration_s else messages):
        raise RuntimeError(f"{endpoint}: {result.ok}/{result.sent} requests answered")
    if cpu is not None and result.cpu.get("client_pct") is not None:
        cpu.append(result.cpu["client_pct"] / 100 * result.duration_s / messages * 1e6)
    return result.throughput


def small(bench: Bench) -> list[Row]:
    """The small section's rows (targets on the server at 8 in flight and on the client)."""
    x, trials = _input(), bench.args.trials
    # A server trial: a few tenths of a second at these rates (`--small-messages`, 4000 by default).
    server_messages = bench.args.small_messages
    client_messages = server_messages * 3 // 4
    servers = {w: bench.server("--model", "noop", workers=w) for w in (0, 1)}
    echo, mirror, floor = (bench.baseline("echo", batch=1), bench.baseline("mirror", batch=1),
                           bench.baseline("floor"))
    rows: list[Row] = []
    for k in IN_FLIGHT:
        pids = {**{f"infer-server, {w} worker{'s' if w != 1 else ''}": s for w, s in servers.items()},
                "the floor server (decode, noop, encode; no checks)": floor}
        meters = {name: CpuPerMessage(s.proc.pid) for name, s in pids.items()}
        echo_cpu = CpuPerMessage(echo.pid)
        ours = [lambda name=name: meters[name].measure(
            lambda: bare_client(pids[name].endpoint, x, server_messages, k), server_messages) for name in pids]
        *served, bare = side_by_side(*ours, lambda: echo_cpu.measure(
            lambda: bare_client(echo.endpoint, x, server_messages, k), server_messages), trials=trials)
        for (name, samples), target in zip(zip(pids, served), ("small_server", "small_server_worker", None)):
            cells = (f"small: {name}, {k} in flight, bare client, noop, against the bare echo",
                     f"{statistics.median(samples):,.0f} msg/s ({meters[name].text()})",
                     f"{statistics.median(bare):,.0f} msg/s ({echo_cpu.text()})")
            if k == 8 and target is not None:
                rows.append(target_row(*cells, paired_ratio(samples, bare), target))
            else:
                rows.append(Row(*cells, paired_ratio(samples, bare)[1], "(reported)", None))
    for k in IN_FLIGHT:
        ours_cpu: list[float] = []
        bare_cpu = CpuPerMessage()
        ours, bare = side_by_side(
            lambda: infer_client(servers[0].endpoint, client_messages, k, cpu=ours_cpu),
            lambda: bare_cpu.measure(lambda: bare_client(servers[0].endpoint, x, client_messages, k),
                                     client_messages),
            trials=trials)
        name = f"small: infer-client, {k} in flight, against infer-server 0 workers, noop"
        cpu = f" ({statistics.median(ours_cpu):,.1f} µs CPU/msg)" if ours_cpu else ""
        rows.append(target_row(f"{name}, against the bare client", f"{statistics.median(ours):,.0f} msg/s{cpu}",
                               f"{statistics.median(bare):,.0f} msg/s ({bare_cpu.text()})",
                               paired_ratio(ours, bare), "small_client"))
    rows += scale_out(mirror.endpoint, x, trials, server_messages)
    return rows


def scale_out(mirror: str, x: torch.Tensor, trials: int, messages: int) -> list[Row]:
    """infer-client --processes 1 and 2 against the mirror, beside the bare client against it (reported).

    Each infer-client run lasts a fixed time (`messages` / 2000 s, 2 s by default) rather than a count:
    the processes start on their own, and a count would end one of them before the other began. The
    merged rate is over the union of their windows, so a start apart costs it that share of the window.
    """
    seconds = messages / 2000
    one, two, bare = side_by_side(
        lambda: infer_client(mirror, 0, 8, duration_s=seconds),
        lambda: infer_client(mirror, 0, 8, processes=2, duration_s=seconds),
        lambda: bare_client(mirror, x, 4 * messages, 8),
        trials=min(trials, 3))
    rows = []
    for n, samples in ((1, one), (2, two)):
        rows.append(Row(f"small: scale-out: infer-client --processes {n}, 8 in flight, against the mirror "
                        "(the bare echo answering id and ts: nearly no server)",
                        f"{statistics.median(samples):,.0f} msg/s",
                        f"{statistics.median(bare):,.0f} msg/s (bare client, same mirror)",
                        paired_ratio(samples, bare)[1], "(reported)", None))
    return rows
