"""`make perf`'s small section: batch 1 of 3x32x32 uint8, `--model noop`, where each message's own cost decides.

Each group of rows is measured side by side (interleaved trials of a fixed number
of messages, paired ratios), with the same server processes throughout:

- server: infer-server (`--num-workers 0`, then 1) against the bare echo, both driven
  by the bare DEALER client (`perf_baselines.bare_client`), 8 and 1 in flight; beside
  each, the server process's CPU time per message (all its threads, from the
  kernel's process CPU clock); and, reported, the floor server driven the same way
  (what a Python server that builds a tensor and runs the noop reaches at all), on
  its one thread and on one worker thread (what a server that hands each request to
  a thread, as infer-server's pool does, reaches at all);
- client: infer-client against the bare client, both against one infer-server
  `--num-workers 0`, 1 and 8 in flight; beside each, the client's CPU time per
  message over its measured phase; and, reported, the floor client driven the same
  way (the bare client that also matches, timestamps and records each reply: what
  a Python client that measures reaches at all);
- a core each (reported): infer-client against the bare client at 8 in flight
  again, with the server's threads on one core and the client's on another, so
  that neither competes with the other for a core (`core_each`);
- scale-out (reported): infer-client `--processes 1` and `2` (8 in flight between
  them) against the mirror (the bare echo answering id, ts, HELLO and STATS, so
  nearly no server at all), against the bare client driving the same mirror: one
  client process's ceiling on this machine, and what a second one adds.
"""

# The measuring closures are called at once, inside their loop turn: B023 does not apply.
# ruff: noqa: B023
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from benchmarks.cputime import process_cpu_ns
from benchmarks.perf_baselines import bare_client, warm_dealer
from benchmarks.perf_rows import Row, paired_ratio, side_by_side, target_row
from client.config import ClientConfig
from client.latency import LatencyStats
from client.runner import run as run_client
from common import codec
from common.protocol import MsgType
from common.wire import recv_frames

if TYPE_CHECKING:
    from benchmarks.perf import Bench
    from server.launch import ServerProcess

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


def floor_client(endpoint: str, x: torch.Tensor, iters: int, inflight: int = 1) -> float:
    """Messages/s of the bare client plus the least any client that measures must add per reply: it
    matches the reply to its request, timestamps it, and records latency and round trip (client.latency,
    32 replies at a time), all on one thread. No pacer, loss detection, breakdown or metrics thread: what
    infer-client could reach at best, as the floor server is for infer-server."""
    ctx, sock, send = warm_dealer(endpoint, x)
    result = codec.control_frame(MsgType.RESULT)
    latency, rtt = LatencyStats(), LatencyStats()
    pending: dict[int, int] = {}
    latencies: list[int] = []
    round_trips: list[int] = []
    start_s = time.perf_counter()
    sent = 0
    for _ in range(min(inflight, iters)):
        pending[sent] = send(sent)
        sent += 1
    for _ in range(iters):
        frames = recv_frames(sock)
        recv_ns = time.monotonic_ns()
        header = codec.unpack_reply(frames[1])
        if frames[0].bytes != result:
            raise RuntimeError(f"{endpoint} answered with control frame {frames[0].bytes!r}")
        sent_ns = pending.pop(header["id"], None)
        if sent_ns is None:
            raise RuntimeError(f"{endpoint} answered id {header['id']!r}, not a request in flight")
        latencies.append(recv_ns - header["ts"][0])
        round_trips.append(recv_ns - sent_ns)
        if len(latencies) == 32:
            latency.record_many(latencies)
            rtt.record_many(round_trips)
            latencies, round_trips = [], []
        if sent < iters:
            pending[sent] = send(sent)
            sent += 1
    elapsed = time.perf_counter() - start_s
    latency.record_many(latencies)
    rtt.record_many(round_trips)
    if latency.count != iters:
        raise RuntimeError(f"{endpoint}: {latency.count} of {iters} replies recorded")
    sock.close(linger=0)
    ctx.term()
    return iters / elapsed


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
    echo, mirror = bench.baseline("echo", batch=1), bench.baseline("mirror", batch=1)
    floors = {"the floor server (decode, noop, encode; no checks)": bench.baseline("floor"),
              "the floor server with one worker thread (the same, handed over as infer-server's pool does)":
                  bench.baseline("floor-worker")}
    rows: list[Row] = []
    for k in IN_FLIGHT:
        pids = {**{f"infer-server, {w} worker{'s' if w != 1 else ''}": s for w, s in servers.items()}, **floors}
        meters = {name: CpuPerMessage(s.proc.pid) for name, s in pids.items()}
        echo_cpu = CpuPerMessage(echo.pid)
        ours = [lambda name=name: meters[name].measure(
            lambda: bare_client(pids[name].endpoint, x, server_messages, k), server_messages) for name in pids]
        *served, bare = side_by_side(*ours, lambda: echo_cpu.measure(
            lambda: bare_client(echo.endpoint, x, server_messages, k), server_messages), trials=trials)
        for (name, samples), target in zip(zip(pids, served), ("small_server", "small_server_worker", None, None)):
            cells = (f"small: {name}, {k} in flight, bare client, noop, against the bare echo",
                     f"{statistics.median(samples):,.0f} msg/s ({meters[name].text()})",
                     f"{statistics.median(bare):,.0f} msg/s ({echo_cpu.text()})")
            if k == 8 and target is not None:
                rows.append(target_row(*cells, paired_ratio(samples, bare), target))
            else:
                rows.append(Row(*cells, paired_ratio(samples, bare)[1], "(reported)", None))
    endpoint = servers[0].endpoint  # the client rows' server
    for k in IN_FLIGHT:
        ours_cpu: list[float] = []
        floor_cpu, bare_cpu = CpuPerMessage(), CpuPerMessage()
        ours, floor_rates, bare = side_by_side(
            lambda: infer_client(endpoint, client_messages, k, cpu=ours_cpu),
            lambda: floor_cpu.measure(lambda: floor_client(endpoint, x, client_messages, k), client_messages),
            lambda: bare_cpu.measure(lambda: bare_client(endpoint, x, client_messages, k), client_messages),
            trials=trials)
        against = f"{statistics.median(bare):,.0f} msg/s ({bare_cpu.text()})"
        name = f"small: infer-client, {k} in flight, against infer-server 0 workers, noop"
        cpu = f" ({statistics.median(ours_cpu):,.1f} µs CPU/msg)" if ours_cpu else ""
        rows.append(target_row(f"{name}, against the bare client", f"{statistics.median(ours):,.0f} msg/s{cpu}",
                               against, paired_ratio(ours, bare), "small_client"))
        rows.append(Row(f"small: the floor client (matches, timestamps, records; one thread), {k} in flight, "
                        "against infer-server 0 workers, noop, against the bare client",
                        f"{statistics.median(floor_rates):,.0f} msg/s ({floor_cpu.text()})", against,
                        paired_ratio(floor_rates, bare)[1], "(reported)", None))
    rows.append(core_each_row(servers[0], x, trials, client_messages))
    rows += scale_out(mirror.endpoint, x, trials, server_messages)
    return rows


@contextlib.contextmanager
def core_each(server_pid: int) -> Iterator[bool]:
    """Every thread of the server process on the first core this process may use; this thread, and the
    threads it starts, on the second: a core each, as a client and a GPU server on their own cores
    have. Yields False, changing nothing, where there are not two cores to give."""
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else set()
    if len(mine) < 2:
        yield False
        return
    server_core, client_core = sorted(mine)[:2]
    before = {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{server_pid}/task")}
    try:
        for tid in before:
            os.sched_setaffinity(tid, {server_core})
        os.sched_setaffinity(0, {client_core})
        yield True
    finally:
        os.sched_setaffinity(0, mine)
        for tid, cores in before.items():
            with contextlib.suppress(OSError):  # a thread that has ended since
                os.sched_setaffinity(tid, cores)


def core_each_row(server: ServerProcess, x: torch.Tensor, trials: int, messages: int) -> Row:
    """infer-client against the bare client at 8 in flight, the server and the client on a core each
    (reported): whether the client keeps up when it does not compete with the server for the cores."""
    name = ("small: infer-client, 8 in flight, a core each (infer-server 0 workers on one, the client on "
            "another), against the bare client the same way")
    with core_each(server.proc.pid) as pinned:
        if not pinned:
            return Row(name, "n/a", "n/a", "n/a (fewer than two cores to give)", "(reported)", None)
        ours, bare = side_by_side(lambda: infer_client(server.endpoint, messages, 8),
                                  lambda: bare_client(server.endpoint, x, messages, 8), trials=trials)
    return Row(name, f"{statistics.median(ours):,.0f} msg/s", f"{statistics.median(bare):,.0f} msg/s",
               paired_ratio(ours, bare)[1], "(reported)", None)


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
