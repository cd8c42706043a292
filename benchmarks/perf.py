"""`make perf`: is the serving path fast enough not to be the bottleneck it measures?

Each ratio is measured side by side in one run (A, B, A, B, ... short trials) so
that a noisy shared machine slows both sides alike. A ratio is the median of the
per-trial ratios A_i / B_i (adjacent trials share the machine's state), shown
with their range; the throughput columns are each side's median:

1. serving efficiency: ResNet-18 through infer-server/infer-client vs the same
   model called in-process with the same torch thread count (batch 1 and 32);
   beside it, reported, where a served request's time goes (the model, the
   server's own work, transport and client), from the breakdown in every reply;
2. transport efficiency: `--model noop` end to end vs a bare pyzmq DEALER/ROUTER
   echo of the same request bytes and a B x 1000 float32 reply (tcp and ipc);
3. vs the seed's design (the seed: PyTorch's `benchmarks/inference`, whose
   server takes requests through torch.multiprocessing queues): noop end to end
   vs such a queue round trip of the same tensors (messages/s);
4. per-request overhead, reported: p50 round trip at batch 1 through the noop
   server (us), and the server process's CPU time per request (user + system)
   against the bare echo's;
5. no cliff for large messages: noop over tcp at the larger batches (64, 128)
   against the smallest (32) in GB/s, and against the bare echo of the same bytes;
6. shared memory: `--transport shm --shm-refresh` (the client copies each batch
   into the region before its request) against tcp, and against one thread
   copying the same bytes in-process (what the refresh itself costs);
7. infer-server against a floor server (a minimal Python server: decode, noop,
   encode, no checks), both driven by the bare DEALER loop at batch 1 over tcp:
   CPU time per request and messages/s.

The rows with targets run the server with `--num-workers 0` (its I/O thread runs
the model, as the in-process baseline does); rows marked "1 worker" run the same
measurement through one prediction thread, so the cost of that hand-off is shown
rather than hidden. Concurrency is 1 throughout: one request in flight, so every
microsecond of per-request work is on the measured path. The baselines are in
benchmarks/perf_baselines.py.

Prints a markdown table (also written to results/perf.md) and exits non-zero
when a ratio misses its target or could not be measured ("n/a", with the reason).
"""

# The measuring closures are called at once, inside their loop turn: B023 does not apply.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTIONS = ("serving", "transport", "large", "small")  # Bench's methods, in the order they run

from benchmarks.perf_rows import OneLineErrors  # noqa: E402  (torch-free)
from common import __version__  # noqa: E402  (torch-free)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrors(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    parser.add_argument("--image-size", type=int, default=128, help="ResNet-18 input side for ratio 1")
    parser.add_argument("--wire-image-size", type=int, default=250, help="payload side for ratios 2-7 (seed: 250)")
    parser.add_argument("--trials", type=int, default=5, help="interleaved trials per row")
    parser.add_argument("--batches", default="1,32", help="batches of ratios 1-4 and 7")
    parser.add_argument("--large-batches", default="32,64,128",
                        help="ratios 5-6: the first is the reference, shm runs at the first and the last")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="which to run: serving (ratio 1), transport (2-4 and 7), large (5-6), "
                             "small (batch 1 of 3x32x32 uint8: server and client against bare ones)")
    parser.add_argument("--small-messages", type=int, default=4000,
                        help="messages a trial of the small section's server rows (3/4 of it for the client rows)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf.md")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if not set(sections) <= set(SECTIONS):
        parser.error(f"--sections: choose from {', '.join(SECTIONS)}")
    return args


if __name__ == "__main__":
    parse_args()  # --help, --version and bad usage answer before torch is imported

import torch  # noqa: E402

from benchmarks.perf_baselines import (  # noqa: E402
    BARE_WARMUP,
    Baseline,
    CpuMeter,
    bare_zmq,
    memcpy_rate,
    queue_round_trip,
    queue_server,
    start,
)
from benchmarks.perf_rows import (  # noqa: E402, F401  (TARGETS, side_by_side and Unavailable: the tests' too)
    TARGETS,
    Row,
    Unavailable,
    paired_ratio,
    side_by_side,
    target_row,
)
from client.config import ClientConfig  # noqa: E402
from client.loadgen import InputPool  # noqa: E402
from client.results import RunResult  # noqa: E402
from client.runner import run as run_client  # noqa: E402
from common import host  # noqa: E402
from common.protocol import BREAKDOWN, MODEL_STAGE  # noqa: E402
from server.launch import ServerProcess, launch_server  # noqa: E402

START_TIMEOUT_S = 120.0
CLIENT_WARMUP = 2  # requests infer-client sends before its measured phase



# -- measurements ----------------------------------------------------------------


def served(endpoint: str, batch: int, image: int, iters: int, wire: str = "float32", **client: object) -> RunResult:
    """One run of the real client's measurement loop, concurrency 1; every request answered."""
    config = ClientConfig(
        servers=(endpoint,), batch_size=batch, image_size=image, wire_dtype=wire,
        num_iters=iters, warmup=CLIENT_WARMUP, concurrency=1, gpu_source="off", **client,
    )
    result = run_client(config)
    if result.ok != iters:
        raise RuntimeError(f"{endpoint}: {result.ok}/{iters} requests answered")
    return result


def time_split(result: RunResult) -> tuple[float, float, float]:
    """Mean seconds per request in (the model, the server's own work, transport and client).

    From the breakdown each reply carries: the server's own work is queue + decode
    + encode (+ h2d/d2h on a GPU); transport and client is the rest of the round trip.
    """
    means = {name: stats.mean_s or 0.0 for name, stats in result.breakdown.items()}
    compute = means[MODEL_STAGE]
    return compute, sum(means[name] for name in BREAKDOWN) - compute, means["transport"]


def in_process(runner, x: torch.Tensor, iters: int) -> float:
    runner(x)
    start_s = time.perf_counter()
    for _ in range(iters):
        runner(x)
    return iters / (time.perf_counter() - start_s)


def large_iters(batch: int) -> int:
    """Requests per trial at the large batches: about 0.3 s of tcp at 24-96 MB a request."""
    return max(6, 960 // batch)


class Bench:
    """One `make perf` run: the processes it started and the table rows it measured."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.batches = [int(b) for b in args.batches.split(",")]
        self.large_batches = [int(b) for b in args.large_batches.split(",")]
        # torch.multiprocessing: tensors in the queue travel through shared memory, as in the seed.
        self.mp = torch.multiprocessing.get_context("spawn")
        self.tmp = Path(tempfile.mkdtemp(prefix="perf-"))
        self.rows: list[Row] = []
        self.cpu_rows: list[Row] = []  # ratio 4's, shown after the rows of 2 and 3
        self.floor_rows: list[Row] = []  # ratio 7's, shown after the others
        self.small_rows: list[Row] = []  # the small section's, shown last
        self.servers: list[ServerProcess] = []
        self.baselines: list[Baseline] = []

    def server(self, *extra: str, workers: int = 0, bind: str = "tcp://127.0.0.1:*") -> ServerProcess:
        s = launch_server(["--device", "cpu", "--no-compile", "--num-workers", str(workers),
                           "--threads", str(self.args.threads), *extra],
                          self.tmp / f"server-{len(self.servers)}.err", START_TIMEOUT_S, bind=bind, cwd=ROOT)
        self.servers.append(s)
        return s

    def baseline(self, kind: str, endpoint: str = "tcp://127.0.0.1:*", batch: int = 0) -> Baseline:
        b = start(kind, endpoint, batch, stderr=self.tmp / f"{kind}-{len(self.baselines)}.err")
        self.baselines.append(b)
        return b

    def close(self) -> None:
        for s in self.servers:
            s.kill()
        for b in self.baselines:
            b.stop()
    def serving(self) -> None:
        """Ratio 1: ResNet-18 served (inline and through 1 worker) vs called in-process."""
        from server.models.build import build_model
        from server.runner import ModelRunner

        args = self.args
        resnet = {0: self.server("--model", "resnet18"), 1: self.server("--model", "resnet18", workers=1)}
        model, _ = build_model("resnet18", torch.device("cpu"), None)
        runner = ModelRunner(model, torch.device("cpu"), compile=False)
        for b in self.batches:
            iters = max(3, 48 // b) if b > 1 else 30
            x = torch.randn(b, 3, args.image_size, args.image_size)
            splits: list[tuple[float, float, float]] = []

            def inline_trial() -> float:
                result = served(resnet[0].endpoint, b, args.image_size, iters)
                splits.append(time_split(result))
                return result.throughput

            inline, pooled, local = side_by_side(
                inline_trial,
                lambda: served(resnet[1].endpoint, b, args.image_size, iters).throughput,
                lambda: in_process(runner, x, iters) * b,
                trials=args.trials,
            )
            name = f"1. serving efficiency, ResNet-18 3x{args.image_size}², batch {b}"
            self.rows.append(target_row(name, f"{statistics.median(inline):,.1f} samples/s",
                                        f"{statistics.median(local):,.1f} samples/s (in-process)",
                                        paired_ratio(inline, local), "serving"))
            self.rows.append(Row(f"{name}, 1 worker", f"{statistics.median(pooled):,.1f} samples/s", "same",
                                 paired_ratio(pooled, local)[1], "(reported)", None))
            # What the serving path itself costs, from the replies' own breakdown: a
            # figure the machine's noise moves far less than the throughput ratio.
            compute, own, transport = (statistics.median(part) for part in zip(*splits))
            self.rows.append(Row(f"{name}: where a served request's time goes (means; median of trials)",
                                 f"model {compute * 1e3:,.2f} ms, server's own work {own * 1e3:,.2f} ms, "
                                 f"transport and client {transport * 1e3:,.2f} ms", "",
                                 f"{compute / (compute + own + transport):.3f} (the model's share)", "(reported)",
                                 None))
        for s in resnet.values():
            s.kill()

    def transport(self) -> None:
        """Ratios 2-4 and 7: the noop server vs a bare echo and a floor server, vs the seed's queue; p50, CPU."""
        side = self.args.wire_image_size
        ipc_dir = Path(tempfile.mkdtemp(prefix="perf-ipc-"))
        requests, replies = self.mp.Queue(), self.mp.Queue()
        qproc = self.mp.Process(target=queue_server, args=(requests, replies), daemon=True)
        qproc.start()
        noop = {"tcp": self.server("--model", "noop"),
                "ipc": self.server("--model", "noop", bind=f"ipc://{ipc_dir}/noop.sock"),
                "1 worker": self.server("--model", "noop", workers=1)}
        floor = self.baseline("floor")
        p50_us: dict[str, float] = {}
        for b in self.batches:
            x = torch.randn(b, 3, side, side)
            iters = 500 if b == 1 else 30  # each trial long against the kernel's 10 ms CPU-time ticks
            echo = {"tcp": self.baseline("echo", batch=b),
                    "ipc": self.baseline("echo", f"ipc://{ipc_dir}/echo{b}.sock", batch=b)}
            for transport in ("tcp", "ipc"):
                latencies = self.transport_rows(transport, x, iters, noop, echo[transport],
                                                floor if transport == "tcp" else None)
                if transport == "tcp" and b == 1:
                    p50_us = {k: statistics.median(v) * 1e6 for k, v in latencies.items()}
            srv, queue = side_by_side(
                lambda: served(noop["tcp"].endpoint, b, side, iters).throughput / b,
                lambda: queue_round_trip(requests, replies, x, iters),
                trials=self.args.trials,
            )
            self.rows.append(target_row(f"3. vs torch.multiprocessing queue, noop tcp, batch {b}",
                                        f"{statistics.median(srv):,.0f} msg/s",
                                        f"{statistics.median(queue):,.0f} msg/s (mp queue)",
                                        paired_ratio(srv, queue, unit="x"), "vs_queue", unit="x"))
            for e in echo.values():
                e.stop()
        for key, us in p50_us.items():
            suffix = "" if key == "inline" else f", {key}"
            self.rows.append(Row(f"4. per-request round trip, noop tcp, batch 1 (3x{side}²){suffix}",
                                 f"{us:,.0f} µs p50", "", "", "(reported)", None))
        self.rows.extend(self.cpu_rows)
        requests.put(None)
        qproc.join(10)
        for s in noop.values():
            s.kill()

    def transport_rows(self, transport: str, x: torch.Tensor, iters: int, noop: dict[str, ServerProcess],
                       echo: Baseline, floor: Baseline | None) -> dict[str, list[float]]:
        """Ratio 2's row for one transport and batch (over tcp with the rows that split its gap and
        ratio 7's, interleaved with it) and ratio 4's CPU row. Returns the served runs' p50 latencies."""
        b, side = x.shape[0], x.shape[-1]
        latencies: dict[str, list[float]] = {"inline": [], "1 worker": []}

        def through(endpoint: str, key: str) -> float:
            result = served(endpoint, b, side, iters)
            latencies[key].append(result.latency.percentile_s(50))
            return result.throughput / b

        server = noop[transport]
        served_cpu, bare_cpu = CpuMeter(server.proc.pid), CpuMeter(echo.pid)
        fns = [lambda: served_cpu.measure(lambda: through(server.endpoint, "inline"), iters + CLIENT_WARMUP),
               lambda: bare_cpu.measure(lambda: bare_zmq(echo.endpoint, x, iters), iters + BARE_WARMUP)]
        if floor is not None:  # where the gap is: the same sides without infer-client
            ours_cpu, floor_cpu = CpuMeter(server.proc.pid), CpuMeter(floor.pid)
            fns += [lambda: through(noop["1 worker"].endpoint, "1 worker"),
                    lambda: ours_cpu.measure(lambda: bare_zmq(server.endpoint, x, iters), iters + BARE_WARMUP),
                    lambda: floor_cpu.measure(lambda: bare_zmq(floor.endpoint, x, iters), iters + BARE_WARMUP)]
        srv, bare, *more = side_by_side(*fns, trials=self.args.trials)
        name = f"2. transport efficiency, noop, {transport}, batch {b} ({x.numel() * 4 / 1e6:.2f} MB)"
        self.rows.append(target_row(name, f"{statistics.median(srv):,.0f} msg/s",
                                    f"{statistics.median(bare):,.0f} msg/s (bare DEALER/ROUTER)",
                                    paired_ratio(srv, bare), "transport"))
        labels = [", 1 worker", ": the noop server, bare client",
                  ": floor, a minimal Python server (decode, noop, encode; no checks), bare client"]
        for label, samples in zip(labels, more):
            self.rows.append(Row(f"{name}{label}", f"{statistics.median(samples):,.0f} msg/s", "same",
                                 paired_ratio(samples, bare)[1], "(reported)", None))
        ours_us, bare_us = served_cpu.per_request_us, bare_cpu.per_request_us
        self.cpu_rows.append(Row(f"4. server CPU per request (user + system), noop, {transport}, batch {b}",
                                 f"{ours_us:,.0f} µs", f"{bare_us:,.0f} µs (bare echo)",
                                 f"{ours_us / bare_us:.2f}x" if bare_us else "", "(reported)", None))
        if floor is not None:
            self.floor_rows += self.floor_comparison(b, more[1], more[2], ours_cpu, floor_cpu)
        return latencies

    def floor_comparison(self, b: int, ours: list[float], floor: list[float],
                         ours_cpu: CpuMeter, floor_cpu: CpuMeter) -> list[Row]:
        """Ratio 7: infer-server against the floor server, both driven by the bare loop (targets at batch 1)."""
        name = f"7. infer-server against the floor server, noop, tcp, batch {b}, bare client"
        cpu = paired_ratio(ours_cpu.per_trial_us, floor_cpu.per_trial_us, unit="x")
        rate = paired_ratio(ours, floor)
        cpu_cells = (f"{name}: server CPU per request", f"{ours_cpu.per_request_us:,.0f} µs",
                     f"{floor_cpu.per_request_us:,.0f} µs (floor)")
        rate_cells = (f"{name}: messages/s", f"{statistics.median(ours):,.0f} msg/s",
                      f"{statistics.median(floor):,.0f} msg/s (floor)")
        if b != 1:
            return [Row(*cpu_cells, cpu[1], "(reported)", None), Row(*rate_cells, rate[1], "(reported)", None)]
        return [target_row(*cpu_cells, cpu, "floor_cpu", unit="x", at_most=True),
                target_row(*rate_cells, rate, "floor_rate")]

    def small(self) -> None:
        """The small section (benchmarks/perf_small.py): per-message cost at batch 1, server and client."""
        from benchmarks.perf_small import small

        self.small_rows = small(self)

    def large(self) -> None:
        """Ratios 5 and 6: tcp at growing batches (no cliff) and against the bare echo; shm against tcp and memcpy."""
        side = self.args.wire_image_size
        ref, *bigger = self.large_batches
        shm_batches = sorted({ref, self.large_batches[-1]})
        noop = self.server("--model", "noop")
        echo = {b: self.baseline("echo", batch=b) for b in bigger}
        inputs = {b: torch.randn(b, 3, side, side) for b in bigger}
        sources = {b: InputPool(b, (3, side, side), "float32", seed=0).batches for b in shm_batches}
        shm = {b: Unavailable(lambda b=b: served(noop.endpoint, b, side, 2 * large_iters(b), transport="shm",
                                                 shm_refresh=True).throughput / b)
               for b in shm_batches}
        fns: dict[tuple[str, int], Callable[[], float]] = {}
        for b in self.large_batches:
            fns["tcp", b] = lambda b=b: served(noop.endpoint, b, side, large_iters(b)).throughput / b
        for b in bigger:
            fns["bare", b] = lambda b=b: bare_zmq(echo[b].endpoint, inputs[b], large_iters(b))
        for b in shm_batches:
            fns["shm", b] = shm[b]
            fns["memcpy", b] = lambda b=b: memcpy_rate(sources[b], 2 * large_iters(b))
        got = dict(zip(fns, side_by_side(*fns.values(), trials=self.args.trials)))
        tcp = {b: got["tcp", b] for b in self.large_batches}
        mb = {b: b * 3 * side * side * 4 / 1e6 for b in self.large_batches}

        def rate(b: int, samples: list[float]) -> str:
            return f"{statistics.median(samples) * mb[b] / 1e3:,.2f} GB/s ({statistics.median(samples):,.1f} msg/s)"

        for b in bigger:
            name = f"5. no cliff: noop, tcp, batch {b} ({mb[b]:.0f} MB)"
            self.rows.append(target_row(f"{name} against batch {ref}, GB/s", rate(b, tcp[b]),
                                        f"{rate(ref, tcp[ref])} at batch {ref}",
                                        paired_ratio([m * b for m in tcp[b]], [m * ref for m in tcp[ref]]),
                                        "cliff"))
            self.rows.append(target_row(f"{name} against a bare echo of the same bytes", rate(b, tcp[b]),
                                        f"{rate(b, got['bare', b])} (bare DEALER/ROUTER)",
                                        paired_ratio(tcp[b], got["bare", b]), "bare_large"))
        for b in shm_batches:
            name = f"6. shared memory, --transport shm --shm-refresh, noop, batch {b} ({mb[b]:.0f} MB)"
            samples = got["shm", b]
            for label, base, base_name, key, unit in (("tcp", tcp[b], "tcp", "shm_vs_tcp", "x"),
                                                      ("one thread copying the same bytes into a shared-memory region",
                                                       got["memcpy", b], "memcpy", "shm_vs_memcpy", "")):
                baseline = f"{rate(b, base)} ({base_name})"
                if shm[b].reason is not None:
                    self.rows.append(target_row(f"{name} against {label}", "n/a", baseline,
                                                (math.nan, f"n/a ({shm[b].reason})"), key, unit=unit))
                else:
                    self.rows.append(target_row(f"{name} against {label}", rate(b, samples), baseline,
                                                paired_ratio(samples, base, unit=unit), key, unit=unit))
        for e in echo.values():
            e.stop()
        noop.kill()


def main() -> int:
    args = parse_args()
    sections = args.sections.split(",")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    bench = Bench(args)
    try:
        for section in SECTIONS:
            if section in sections:
                getattr(bench, section)()
    finally:
        bench.close()
    rows = bench.rows + bench.floor_rows + bench.small_rows
    table = render(rows, args, time.monotonic() - started)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0 if all(row.ok is not False for row in rows) else 1


def render(rows: list[Row], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"Machine: {host.summary_line()}",
        f"Command: `python benchmarks/perf.py --threads {args.threads} --image-size {args.image_size} "
        f"--wire-image-size {args.wire_image_size} --trials {args.trials} --batches {args.batches} "
        f"--large-batches {args.large_batches} --small-messages {args.small_messages}"
        + ("" if args.sections == ",".join(SECTIONS) else f" --sections {args.sections}")
        + "` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s; {args.trials} "
        "interleaved trials; rows 1-7: concurrency 1, float32 wire; small: uint8 3x32x32 at batch 1, in flight "
        "as the row says; ratio: median of the per-trial ratios (their range))",
        "",
        "| measurement | served | baseline | ratio | target | pass |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        verdict = "" if row.ok is None else ("yes" if row.ok else "**no**")
        lines.append(f"| {row.measurement} | {row.served} | {row.baseline} | {row.ratio} | {row.target} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
