"""`make perf`: is the serving path fast enough not to be the bottleneck it measures?

Four ratios, each measured side by side in one run (A, B, A, B, ... short trials)
so that a noisy shared machine slows both sides alike. A ratio is the median of
the per-trial ratios A_i / B_i (adjacent trials share the machine's state), shown
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
4. per-request overhead: p50 round trip at batch 1 through the noop server (us);
   beside it, reported, the server process's CPU time per request (user +
   system) against the bare echo's: a figure the machine's noise barely moves,
   which says how much of the gap in ratio 2 is the server's own work.

The rows with targets run the server with `--num-workers 0` (its I/O thread runs
the model, as the in-process baseline does); rows marked "1 worker" run the same
measurement through one prediction thread, so the cost of that hand-off is shown
rather than hidden. Concurrency is 1 throughout: one request in flight, so every
microsecond of per-request work is on the measured path.

Ratio 2 over tcp comes with two more reported rows, interleaved with it, that
split its gap: the bare DEALER loop against infer-server (the server's share,
without infer-client's), and against a floor server that only decodes, runs the
noop model and encodes (what any Python server pays per request, before checks).

Prints a markdown table (also written to results/perf.md) and exits non-zero
when a ratio misses its target.
"""

# The measuring closures are called at once, inside their loop turn: B023 does not apply.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import zmq  # noqa: E402

from client.config import ClientConfig  # noqa: E402
from client.results import RunResult  # noqa: E402
from client.runner import run as run_client  # noqa: E402
from common import codec, host  # noqa: E402
from common.protocol import (  # noqa: E402
    BREAKDOWN,
    MODEL_STAGE,
    InferHeader,
    MsgType,
    ResultHeader,
    ServerTimes,
    read_tensor_desc,
    tensor_desc,
)
from common.wire import recv_frames, send_frames  # noqa: E402
from server.launch import ServerProcess, launch_server  # noqa: E402

TARGETS = {"serving": 0.95, "transport": 0.8, "vs_queue": 4.0}
START_TIMEOUT_S = 120.0
CLIENT_WARMUP = 2  # requests infer-client sends before its measured phase
BARE_WARMUP = 3
# One table row: measurement, served, baseline, ratio, target, pass (None: reported only).
Row = tuple[str, str, str, str, str, bool | None]


# -- baselines in other processes (spawned: no ZeroMQ context crosses a fork) ----


def _serve_router(endpoint: str, ready: multiprocessing.Event, answer: Callable[[list], list]) -> None:
    """A bare ROUTER loop: `answer(frames)` gives each request's reply frames, identity first."""
    from server.alloc import keep_large_buffers_in_heap

    keep_large_buffers_in_heap()  # the allocator settings infer-server runs with: like for like
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = recv_frames(sock)
        if len(frames) == 2:  # the stop message
            break
        send_frames(sock, answer(frames))
    sock.close()
    ctx.term()


def _echo_server(endpoint: str, ready: multiprocessing.Event, batch: int) -> None:
    """Answer every request with a fixed RESULT: batch x 1000 float32 zeros, zero copy."""
    control = codec.control_frame(MsgType.RESULT)
    header = codec.pack(ResultHeader(0, [0, 0], [tensor_desc("float32", [batch, 1000])], ServerTimes()).to_wire())
    reply = bytearray(batch * 1000 * 4)
    _serve_router(endpoint, ready, lambda frames: [frames[0], control, header, reply])


def _floor_server(endpoint: str, ready: multiprocessing.Event) -> None:
    """The least a Python inference server can do per request: the floor under ratio 2.

    Unpacks the header, builds the tensor over the received frame, calls the noop
    model (in inference mode, one torch thread) and sends its logits with the
    header infer-server sends (durations all 0), but checks nothing, times
    nothing and keeps no accounts.
    """
    from server.synthetic import NoopModel

    torch.set_num_threads(1)
    model = NoopModel().eval()
    control = codec.control_frame(MsgType.RESULT)

    def answer(frames: list) -> list:
        request = InferHeader.unchecked(msgpack.unpackb(frames[2].buffer))
        _, shape, _ = read_tensor_desc(request.tensors[0])
        out = model(torch.frombuffer(frames[3].buffer, dtype=torch.float32).view(shape))
        reply = ResultHeader(request.id, request.ts, [tensor_desc("float32", list(out.shape))], ServerTimes())
        return [frames[0], control, codec.pack(reply.to_wire()), memoryview(out.numpy())]

    with torch.inference_mode():
        _serve_router(endpoint, ready, answer)


def start_baseline(
    mp: multiprocessing.context.BaseContext, target: Callable[..., None], endpoint: str, *args: object
) -> multiprocessing.Process:
    """Spawn one of the bare servers above on `endpoint` and wait until it has bound it."""
    ready = mp.Event()
    proc = mp.Process(target=target, args=(endpoint, ready, *args), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return proc


def stop_baseline(endpoint: str) -> None:
    """Send a bare server the one-frame stop message, which ends its loop."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    sock.send(b"stop")
    sock.close()
    ctx.term()


def _queue_server(requests: multiprocessing.Queue, replies: multiprocessing.Queue) -> None:
    """The seed's transport: tensors through torch.multiprocessing queues."""
    while (x := requests.get()) is not None:
        replies.put(torch.empty(x.shape[0], 1000))


# -- measurements ----------------------------------------------------------------


def bare_zmq(endpoint: str, x: torch.Tensor, iters: int) -> float:
    """Messages/s of a bare DEALER loop sending x as a valid INFER request, one at a time.

    Against the bare echo this is ratio 2's baseline; against infer-server or the
    floor server it shows their share of the gap without infer-client's.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    desc, buf = codec.tensor_to_buffer(x)
    buf = zmq.Frame(buf)  # sent by reference count, as infer-client sends its inputs
    tensors = [desc]
    control = codec.control_frame(MsgType.INFER)
    for _ in range(BARE_WARMUP):  # connect and warm up
        send_frames(sock, [control, codec.pack(InferHeader(tensors, 0, [0, 0]).to_wire()), buf])
        reply = codec.decode([f.buffer for f in recv_frames(sock)])
        if reply.msg_type != MsgType.RESULT:  # an ERROR is faster to send: it would flatter the server
            raise RuntimeError(f"{endpoint} answered {reply.msg_type.name}: {reply.header}")
    start = time.perf_counter()
    for i in range(iters):
        now = time.monotonic_ns()  # the header infer-client sends: id, two timestamps, the tensor
        send_frames(sock, [control, codec.pack(InferHeader(tensors, i, [now, now]).to_wire()), buf])
        frames = recv_frames(sock)
        codec.unpack_header(frames[1].buffer)  # the real client reads the header too
    elapsed = time.perf_counter() - start
    sock.close(linger=0)
    ctx.term()
    return iters / elapsed


def queue_round_trip(requests, replies, x: torch.Tensor, iters: int) -> float:
    """Messages/s of the seed's transport: each request a fresh batch, as the seed sends.

    Putting one tensor again and again would be unfair to us: after the first put
    its storage already lives in shared memory and later puts pass only a handle.
    So every put gets its own (not yet shared) tensor, made before the clock starts;
    the queue then pays what it pays in the seed, a copy into new shared memory.
    """
    for _ in range(3):
        requests.put(x.clone())
        replies.get()
    batches = [x.clone() for _ in range(iters)]
    start = time.perf_counter()
    for batch in batches:
        requests.put(batch)
        replies.get()
    return iters / (time.perf_counter() - start)


def served(endpoint: str, batch: int, image: int, iters: int, wire: str = "float32") -> RunResult:
    """One run of the real client's measurement loop, concurrency 1; every request answered."""
    config = ClientConfig(
        servers=(endpoint,), batch_size=batch, image_size=image, wire_dtype=wire,
        num_iters=iters, warmup=CLIENT_WARMUP, concurrency=1, gpu_source="off",
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
    start = time.perf_counter()
    for _ in range(iters):
        runner(x)
    return iters / (time.perf_counter() - start)


class CpuMeter:
    """CPU time (user + system) one process spends per request, over several measured calls."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.cpu_s = 0.0
        self.requests = 0

    def measure(self, fn: Callable[[], float], requests: int) -> float:
        """Run fn (which makes the process serve `requests` requests) and return its result."""
        before = self.process.cpu_times()
        result = fn()
        after = self.process.cpu_times()
        self.cpu_s += (after.user + after.system) - (before.user + before.system)
        self.requests += requests
        return result

    @property
    def per_request_us(self) -> float:
        # Totals over all trials: the kernel counts CPU time in 10 ms ticks, too coarse for one trial.
        return self.cpu_s / max(1, self.requests) * 1e6


def side_by_side(*fns: Callable[[], float], trials: int) -> list[list[float]]:
    """Interleaved trials of each function (a, b, ..., a, b, ...): each one's samples."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(trials):
        for fn, out in zip(fns, samples):
            out.append(fn())
    return samples


def paired_ratio(a: list[float], b: list[float], unit: str = "") -> tuple[float, str]:
    """Median of the per-trial ratios a[i] / b[i], and that median with the ratios' range as text."""
    ratios = [x / y for x, y in zip(a, b)]
    mid = statistics.median(ratios)
    return mid, f"{mid:.3f}{unit} ({min(ratios):.2f}-{max(ratios):.2f})"


class Bench:
    """One `make perf` run: the processes it started and the table rows it measured."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.batches = [int(b) for b in args.batches.split(",")]
        # torch.multiprocessing: tensors in the queue travel through shared memory, as in the seed.
        self.mp = torch.multiprocessing.get_context("spawn")
        self.tmp = Path(tempfile.mkdtemp(prefix="perf-"))
        self.rows: list[Row] = []
        self.cpu_rows: list[Row] = []  # ratio 4's, shown after every other row
        self.servers: list[ServerProcess] = []
        self.procs: list[multiprocessing.Process] = []

    def server(self, *extra: str, workers: int = 0, bind: str = "tcp://127.0.0.1:*") -> ServerProcess:
        s = launch_server(["--device", "cpu", "--no-compile", "--num-workers", str(workers),
                           "--threads", str(self.args.threads), *extra],
                          self.tmp / f"server-{len(self.servers)}.err", START_TIMEOUT_S, bind=bind, cwd=ROOT)
        self.servers.append(s)
        return s

    def baseline(self, target: Callable[..., None], endpoint: str, *args: object) -> multiprocessing.Process:
        proc = start_baseline(self.mp, target, endpoint, *args)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for s in self.servers:
            s.kill()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()

    def serving(self) -> None:
        """Ratio 1: ResNet-18 served (inline and through 1 worker) vs called in-process."""
        from server.model import build_model
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
            ratio, text = paired_ratio(inline, local)
            self.rows.append((name, f"{statistics.median(inline):,.1f} samples/s",
                              f"{statistics.median(local):,.1f} samples/s (in-process)", text,
                              f"≥ {TARGETS['serving']}", ratio >= TARGETS["serving"]))
            self.rows.append((f"{name}, 1 worker", f"{statistics.median(pooled):,.1f} samples/s", "same",
                              paired_ratio(pooled, local)[1], "(reported)", None))
            # What the serving path itself costs, from the replies' own breakdown: a
            # figure the machine's noise moves far less than the throughput ratio.
            compute, own, transport = (statistics.median(part) for part in zip(*splits))
            self.rows.append((f"{name}: where a served request's time goes (means; median of trials)",
                              f"model {compute * 1e3:,.2f} ms, server's own work {own * 1e3:,.2f} ms, "
                              f"transport and client {transport * 1e3:,.2f} ms", "",
                              f"{compute / (compute + own + transport):.3f} (the model's share)", "(reported)", None))
        for s in resnet.values():
            s.kill()

    def transport(self) -> None:
        """Ratios 2-4: the noop server vs a bare echo and a floor server, vs the seed's queue; p50 and CPU."""
        side = self.args.wire_image_size
        ipc_dir = Path(tempfile.mkdtemp(prefix="perf-ipc-"))
        requests, replies = self.mp.Queue(), self.mp.Queue()
        qproc = self.mp.Process(target=_queue_server, args=(requests, replies), daemon=True)
        qproc.start()
        self.procs.append(qproc)
        noop = {"tcp": self.server("--model", "noop"),
                "ipc": self.server("--model", "noop", bind=f"ipc://{ipc_dir}/noop.sock"),
                "1 worker": self.server("--model", "noop", workers=1)}
        floor_ep = f"tcp://127.0.0.1:{_free_port()}"
        self.baseline(_floor_server, floor_ep)
        p50_us: dict[str, float] = {}
        for b in self.batches:
            x = torch.randn(b, 3, side, side)
            iters = 500 if b == 1 else 30  # each trial long against the kernel's 10 ms CPU-time ticks
            echo = {}
            for transport in ("tcp", "ipc"):
                ep = f"tcp://127.0.0.1:{_free_port()}" if transport == "tcp" else f"ipc://{ipc_dir}/echo{b}.sock"
                echo[transport] = (ep, self.baseline(_echo_server, ep, b).pid)
            for transport in ("tcp", "ipc"):
                latencies = self.transport_rows(transport, x, iters, noop, echo[transport],
                                                floor_ep if transport == "tcp" else None)
                if transport == "tcp" and b == 1:
                    p50_us = {k: statistics.median(v) * 1e6 for k, v in latencies.items()}
            srv, queue = side_by_side(
                lambda: served(noop["tcp"].endpoint, b, side, iters).throughput / b,
                lambda: queue_round_trip(requests, replies, x, iters),
                trials=self.args.trials,
            )
            ratio, text = paired_ratio(srv, queue, unit="x")
            self.rows.append((f"3. vs torch.multiprocessing queue, noop tcp, batch {b}",
                              f"{statistics.median(srv):,.0f} msg/s",
                              f"{statistics.median(queue):,.0f} msg/s (mp queue)",
                              text, f"≥ {TARGETS['vs_queue']}x", ratio >= TARGETS["vs_queue"]))
            for ep, _ in echo.values():
                stop_baseline(ep)
        stop_baseline(floor_ep)
        for key, us in p50_us.items():
            suffix = "" if key == "inline" else f", {key}"
            self.rows.append((f"4. per-request round trip, noop tcp, batch 1 (3x{side}²){suffix}",
                              f"{us:,.0f} µs p50", "", "", "(reported)", None))
        self.rows.extend(self.cpu_rows)
        requests.put(None)

    def transport_rows(self, transport: str, x: torch.Tensor, iters: int, noop: dict[str, ServerProcess],
                       echo: tuple[str, int], floor_ep: str | None) -> dict[str, list[float]]:
        """Ratio 2's row for one transport and batch (over tcp with the rows that split its gap,
        interleaved with it) and ratio 4's CPU row. Returns the served runs' p50 latencies."""
        b, side = x.shape[0], x.shape[-1]
        echo_ep, echo_pid = echo
        latencies: dict[str, list[float]] = {"inline": [], "1 worker": []}

        def through(endpoint: str, key: str) -> float:
            result = served(endpoint, b, side, iters)
            latencies[key].append(result.latency.percentile_s(50))
            return result.throughput / b

        served_cpu, bare_cpu = CpuMeter(noop[transport].proc.pid), CpuMeter(echo_pid)
        fns = [lambda: served_cpu.measure(lambda: through(noop[transport].endpoint, "inline"), iters + CLIENT_WARMUP),
               lambda: bare_cpu.measure(lambda: bare_zmq(echo_ep, x, iters), iters + BARE_WARMUP)]
        if floor_ep is not None:  # where the gap is: the same sides without infer-client
            fns += [lambda: through(noop["1 worker"].endpoint, "1 worker"),
                    lambda: bare_zmq(noop["tcp"].endpoint, x, iters),
                    lambda: bare_zmq(floor_ep, x, iters)]
        srv, bare, *more = side_by_side(*fns, trials=self.args.trials)
        ratio, text = paired_ratio(srv, bare)
        name = f"2. transport efficiency, noop, {transport}, batch {b} ({x.numel() * 4 / 1e6:.2f} MB)"
        self.rows.append((name, f"{statistics.median(srv):,.0f} msg/s",
                          f"{statistics.median(bare):,.0f} msg/s (bare DEALER/ROUTER)", text,
                          f"≥ {TARGETS['transport']}", ratio >= TARGETS["transport"]))
        labels = [", 1 worker", ": the noop server, bare client",
                  ": floor, a minimal Python server (decode, noop, encode; no checks), bare client"]
        for label, samples in zip(labels, more):
            self.rows.append((f"{name}{label}", f"{statistics.median(samples):,.0f} msg/s", "same",
                              paired_ratio(samples, bare)[1], "(reported)", None))
        ours_us, bare_us = served_cpu.per_request_us, bare_cpu.per_request_us
        self.cpu_rows.append((f"4. server CPU per request (user + system), noop, {transport}, batch {b}",
                              f"{ours_us:,.0f} µs", f"{bare_us:,.0f} µs (bare echo)",
                              f"{ours_us / bare_us:.2f}x" if bare_us else "", "(reported)", None))
        return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    parser.add_argument("--image-size", type=int, default=128, help="ResNet-18 input side for ratio 1")
    parser.add_argument("--wire-image-size", type=int, default=250, help="payload side for ratios 2-4 (seed: 250)")
    parser.add_argument("--trials", type=int, default=5, help="interleaved trials per row")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.serving()
        bench.transport()
    finally:
        bench.close()
    table = render(bench.rows, args, time.monotonic() - started)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0 if all(ok is not False for *_, ok in bench.rows) else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(rows: list[Row], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"Machine: {host.summary_line()}",
        f"Command: `python benchmarks/perf.py --threads {args.threads} --image-size {args.image_size} "
        f"--wire-image-size {args.wire_image_size} --trials {args.trials} --batches {args.batches}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s; {args.trials} "
        "interleaved trials, concurrency 1, float32 wire; ratio: median of the per-trial ratios (their range))",
        "",
        "| measurement | served | baseline | ratio | target | pass |",
        "|---|---|---|---|---|---|",
    ]
    for name, a, b, ratio, target, ok in rows:
        verdict = "" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {a} | {b} | {ratio} | {target} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
