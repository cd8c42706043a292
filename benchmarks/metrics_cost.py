"""What infer-server's Prometheus endpoint (--metrics-port) costs: CPU per scrape, and per request.

1. Per scrape: a noop server with --metrics-port 0; SCRAPES scrapes back to back over
   HTTP, and the server process's CPU time (user + system) over them, less its CPU
   over an idle window as long (its loop wakes every 50 ms); ROUNDS alternations,
   the median. Scraping once a second costs that time per second: its share of
   one core. It is CPU time, not wall time, so a busy machine inflates it little.
2. Per request: StageHistograms.observe, what a prediction thread adds to each
   request with --metrics-port (nothing without it), in thread CPU time per call,
   beside prometheus_client's Histogram.observe three times (a locked histogram per
   stage, the obvious alternative) measured in the same run.

Prints a markdown table; the figures and the command go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.perf_rows import OneLineErrors  # noqa: E402  (torch-free)
from common import __version__  # noqa: E402  (torch-free)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes per measured window")
    parser.add_argument("--rounds", type=int, default=5, help="idle/scrape alternations")
    parser.add_argument("--observations", type=int, default=200_000, help="histogram observations timed")
    args = parser.parse_args(argv)
    if min(args.scrapes, args.rounds, args.observations) < 1:
        parser.error("--scrapes, --rounds and --observations must be at least 1")
    return args


if __name__ == "__main__":
    parse_args()  # --help, --version and bad usage answer before anything heavy is imported

import urllib.request  # noqa: E402

import psutil  # noqa: E402

from server.launch import launch_server  # noqa: E402


def cpu_s(process: psutil.Process) -> tuple[float, float]:
    """(the process's CPU seconds, its I/O thread's: the main thread, whose id is the pid)."""
    times = process.cpu_times()
    io = next(t for t in process.threads() if t.id == process.pid)
    return times.user + times.system, io.user_time + io.system_time


def scrape_cost(scrapes: int, rounds: int) -> tuple[float, float, float, int]:
    """Medians of the server's CPU seconds per scrape, its I/O thread's, and its idle CPU share of one core;
    and the bytes of one scrape."""
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        server = launch_server(["--device", "cpu", "--model", "noop", "--no-compile", "--metrics-port", "0",
                                "--ready-file", str(ready)], Path(tmp) / "server.err", 120.0)
        try:
            url = json.loads(ready.read_text())["metrics"]
            process = psutil.Process(server.proc.pid)
            size = len(urllib.request.urlopen(url, timeout=30).read())
            per_scrape, io_per_scrape, idle_share = [], [], []
            for _ in range(rounds):
                (start_cpu, start_io), start = cpu_s(process), time.monotonic()
                for _ in range(scrapes):
                    urllib.request.urlopen(url, timeout=30).read()
                (end_cpu, end_io), wall = cpu_s(process), time.monotonic() - start
                time.sleep(wall)  # the idle window being measured, as long as the scraping one
                idle_cpu, idle_io = (a - b for a, b in zip(cpu_s(process), (end_cpu, end_io)))
                per_scrape.append(max(0.0, end_cpu - start_cpu - idle_cpu) / scrapes)
                io_per_scrape.append(max(0.0, end_io - start_io - idle_io) / scrapes)
                idle_share.append(idle_cpu / wall)
        finally:
            server.terminate()
    return statistics.median(per_scrape), statistics.median(io_per_scrape), statistics.median(idle_share), size


def observe_cost(n: int) -> tuple[float, float]:
    """(ns of thread CPU per StageHistograms.observe, ns per three prometheus_client Histogram.observe)."""
    from prometheus_client import CollectorRegistry, Histogram

    from common.protocol import ServerTimes
    from server.histograms import BUCKETS_S, StageHistograms

    times = [ServerTimes(queue_ns=(i * 7919) % 3_000_000, compute_ns=(i * 104729) % 20_000_000, encode_ns=5_000)
             for i in range(1024)]
    ours = StageHistograms()
    registry = CollectorRegistry()
    theirs = [Histogram(f"h{i}", "h", buckets=BUCKETS_S, registry=registry) for i in range(3)]

    def ours_loop() -> None:
        for i in range(n):
            ours.observe(times[i & 1023])

    def theirs_loop() -> None:
        q, c, s = theirs
        for i in range(n):
            t = times[i & 1023]
            q.observe(t.queue_ns / 1e9)
            c.observe(t.compute_ns / 1e9)
            s.observe(t.total_ns / 1e9)

    def empty_loop() -> None:
        for i in range(n):
            times[i & 1023]  # noqa: B018 (the loop's own cost, subtracted)

    samples: dict[str, list[float]] = {"ours": [], "theirs": [], "empty": []}
    for _ in range(5):  # interleaved, so that a busy machine slows each alike
        for name, loop in (("ours", ours_loop), ("theirs", theirs_loop), ("empty", empty_loop)):
            start = time.thread_time_ns()
            loop()
            samples[name].append((time.thread_time_ns() - start) / n)
    empty = statistics.median(samples["empty"])
    return statistics.median(samples["ours"]) - empty, statistics.median(samples["theirs"]) - empty


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    per_scrape_s, io_s, idle_share, size = scrape_cost(args.scrapes, args.rounds)
    ours_ns, theirs_ns = observe_cost(args.observations)
    print("| what | cost |\n|---|---|")
    print(f"| server CPU per scrape ({size} bytes of text) | {per_scrape_s * 1e6:.0f} µs |")
    print(f"| of which the I/O thread (the STATS it answers) | {io_s * 1e6:.0f} µs |")
    print(f"| scraping once a second, share of one core | {per_scrape_s * 100:.3f} % |")
    print(f"| idle server, share of one core (for scale) | {idle_share * 100:.3f} % |")
    print(f"| per request: StageHistograms.observe (3 stages) | {ours_ns:.0f} ns |")
    print(f"| per request: prometheus_client Histogram.observe x3 | {theirs_ns:.0f} ns |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
