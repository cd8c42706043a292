"""`make perf`: is the serving path fast enough not to be the bottleneck it measures?

Four ratios, each measured side by side in one run (A, B, A, B, ... short trials,
medians reported) so that a noisy shared machine slows both sides alike:

1. serving efficiency: ResNet-18 through infer-server/infer-client vs the same
   model called in-process with the same torch thread count (batch 1 and 32);
2. transport efficiency: `--model noop` end to end vs a bare pyzmq DEALER/ROUTER
   echo of the same request bytes and a B x 1000 float32 reply (tcp and ipc);
3. vs the seed's design: noop end to end vs a torch.multiprocessing queue round
   trip of the same tensors (messages/s);
4. per-request overhead: p50 round trip at batch 1 through the noop server (us).

Prints a markdown table (also written to results/perf.md) and exits non-zero
when a ratio misses its target.
"""

# The measuring closures are called at once, inside their loop turn: B023 does not apply.
# ruff: noqa: B023
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import zmq  # noqa: E402

from client.config import ClientConfig  # noqa: E402
from client.runner import run as run_client  # noqa: E402
from common import codec  # noqa: E402
from common.protocol import MsgType  # noqa: E402
from server.launch import ServerProcess, launch_server  # noqa: E402

TARGETS = {"serving": 0.95, "transport": 0.8, "vs_queue": 4.0}
START_TIMEOUT_S = 120.0


# -- baselines in other processes (spawned: no ZeroMQ context crosses a fork) ----


def _echo_server(endpoint: str, ready: multiprocessing.Event, reply_bytes: int) -> None:
    """Bare ROUTER: answer every request with a header and reply_bytes of payload, zero copy."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    reply = bytearray(reply_bytes)
    control = codec.control_frame(MsgType.RESULT)
    ready.set()
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2:  # the stop message
            break
        sock.send_multipart([frames[0], control, frames[2], reply], copy=False)
    sock.close()
    ctx.term()


def _queue_server(requests: multiprocessing.Queue, replies: multiprocessing.Queue) -> None:
    """The seed's transport: tensors through torch.multiprocessing queues."""
    while (x := requests.get()) is not None:
        replies.put(torch.empty(x.shape[0], 1000))


# -- measurements ----------------------------------------------------------------


def bare_zmq(endpoint: str, x: torch.Tensor, iters: int) -> float:
    """Messages/s of a DEALER round trip of x's bytes against the bare echo server."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    desc, buf = codec.tensor_to_buffer(x)
    control = codec.control_frame(MsgType.INFER)
    for _ in range(3):  # connect and warm up
        sock.send_multipart([control, codec.pack({"id": 0, "tensors": [desc]}), buf], copy=False)
        sock.recv_multipart(copy=False)
    start = time.perf_counter()
    for i in range(iters):
        sock.send_multipart([control, codec.pack({"id": i, "tensors": [desc]}), buf], copy=False)
        frames = sock.recv_multipart(copy=False)
        codec.unpack_header(frames[1].buffer)  # the real client reads the header too
    elapsed = time.perf_counter() - start
    sock.close(linger=0)
    ctx.term()
    return iters / elapsed


def queue_round_trip(requests, replies, x: torch.Tensor, iters: int) -> float:
    for _ in range(3):
        requests.put(x)
        replies.get()
    start = time.perf_counter()
    for _ in range(iters):
        requests.put(x)
        replies.get()
    return iters / (time.perf_counter() - start)


def served(endpoint: str, batch: int, image: int, iters: int, wire: str = "float32") -> tuple[float, float]:
    """(messages/s, p50 latency s) through the real client's measurement loop, concurrency 1."""
    config = ClientConfig(
        servers=(endpoint,), batch_size=batch, image_size=image, wire_dtype=wire,
        num_iters=iters, warmup=2, concurrency=1, gpu_source="off",
    )
    result = run_client(config)
    if result.ok != iters:
        raise RuntimeError(f"{endpoint}: {result.ok}/{iters} requests answered")
    return result.throughput / batch, result.latency.percentile_s(50)


def in_process(runner, x: torch.Tensor, iters: int) -> float:
    runner(x)
    start = time.perf_counter()
    for _ in range(iters):
        runner(x)
    return iters / (time.perf_counter() - start)


def side_by_side(a: Callable[[], float], b: Callable[[], float], trials: int) -> tuple[float, float]:
    """Medians of interleaved trials of a and b."""
    xs, ys = [], []
    for _ in range(trials):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    parser.add_argument("--image-size", type=int, default=128, help="ResNet-18 input side for ratio 1")
    parser.add_argument("--wire-image-size", type=int, default=250, help="payload side for ratios 2-4 (seed: 250)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf.md")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    # torch.multiprocessing: tensors in the queue travel through shared memory, as in the seed.
    mp = torch.multiprocessing.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="perf-"))
    rows: list[tuple[str, str, str, str, str, bool | None]] = []
    servers: list[ServerProcess] = []
    procs = []
    started = time.monotonic()

    def server(*extra: str, bind: str = "tcp://127.0.0.1:*") -> ServerProcess:
        s = launch_server(["--device", "cpu", "--no-compile", "--num-workers", "1", "--threads", str(args.threads),
                           *extra], tmp / f"server-{len(servers)}.err", START_TIMEOUT_S, bind=bind, cwd=ROOT)
        servers.append(s)
        return s

    try:
        # (1) serving efficiency
        from server.model import ModelRunner, build_model

        resnet = server("--model", "resnet18")
        model, _ = build_model("resnet18", torch.device("cpu"), None)
        runner = ModelRunner(model, torch.device("cpu"), compile=False)
        for b in batches:
            iters = max(3, 48 // b) if b > 1 else 20
            x = torch.randn(b, 3, args.image_size, args.image_size)
            srv, local = side_by_side(
                lambda: served(resnet.endpoint, b, args.image_size, iters)[0] * b,
                lambda: in_process(runner, x, iters) * b,
                args.trials,
            )
            ratio = srv / local
            rows.append((f"1. serving efficiency, ResNet-18 3x{args.image_size}², batch {b}",
                         f"{srv:,.1f} samples/s", f"{local:,.1f} samples/s (in-process)",
                         f"{ratio:.3f}", f"≥ {TARGETS['serving']}", ratio >= TARGETS["serving"]))
        resnet.kill()

        # (2) transport efficiency and (3) vs multiprocessing queue, (4) p50 overhead
        side = args.wire_image_size
        ipc_dir = Path(tempfile.mkdtemp(prefix="perf-ipc-"))
        requests, replies = mp.Queue(), mp.Queue()
        qproc = mp.Process(target=_queue_server, args=(requests, replies), daemon=True)
        qproc.start()
        procs.append(qproc)
        noop = {
            "tcp": server("--model", "noop"),
            "ipc": server("--model", "noop", bind=f"ipc://{ipc_dir}/noop.sock"),
        }
        p50_us = None
        for b in batches:
            x = torch.randn(b, 3, side, side)
            iters = 200 if b == 1 else 20
            echo_eps = {}
            for transport in ("tcp", "ipc"):
                ep = f"tcp://127.0.0.1:{_free_port()}" if transport == "tcp" else f"ipc://{ipc_dir}/echo{b}.sock"
                ready = mp.Event()
                proc = mp.Process(target=_echo_server, args=(ep, ready, b * 1000 * 4), daemon=True)
                proc.start()
                procs.append(proc)
                if not ready.wait(60):
                    raise RuntimeError("echo server did not start")
                echo_eps[transport] = ep
            for transport in ("tcp", "ipc"):
                latencies = []

                def through_server(transport=transport, latencies=latencies) -> float:
                    rate, p50 = served(noop[transport].endpoint, b, side, iters)
                    latencies.append(p50)
                    return rate

                srv, bare = side_by_side(
                    through_server, lambda ep=echo_eps[transport]: bare_zmq(ep, x, iters), args.trials
                )
                ratio = srv / bare
                rows.append((f"2. transport efficiency, noop, {transport}, batch {b} ({x.numel() * 4 / 1e6:.2f} MB)",
                             f"{srv:,.0f} msg/s", f"{bare:,.0f} msg/s (bare DEALER/ROUTER)",
                             f"{ratio:.3f}", f"≥ {TARGETS['transport']}", ratio >= TARGETS["transport"]))
                if transport == "tcp" and b == 1:
                    p50_us = statistics.median(latencies) * 1e6
            srv, queue = side_by_side(
                lambda: served(noop["tcp"].endpoint, b, side, iters)[0],
                lambda: queue_round_trip(requests, replies, x, iters),
                args.trials,
            )
            ratio = srv / queue
            rows.append((f"3. vs torch.multiprocessing queue, noop tcp, batch {b}",
                         f"{srv:,.0f} msg/s", f"{queue:,.0f} msg/s (mp queue)",
                         f"{ratio:.2f}x", f"≥ {TARGETS['vs_queue']}x", ratio >= TARGETS["vs_queue"]))
            for ep in echo_eps.values():
                _stop_echo(ep)
        if p50_us is not None:
            rows.append((f"4. per-request overhead, noop tcp, batch 1 (3x{side}²)", f"{p50_us:,.0f} µs p50",
                         "", "", "(reported)", None))
        requests.put(None)
    finally:
        for s in servers:
            s.kill()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    elapsed = time.monotonic() - started
    table = render(rows, args, elapsed)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0 if all(ok is not False for *_, ok in rows) else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_echo(endpoint: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    sock.send(b"stop")
    sock.close()
    ctx.term()


def render(rows, args, elapsed: float) -> str:
    lines = [
        f"Machine: {machine()}",
        f"Command: `python benchmarks/perf.py --threads {args.threads} --image-size {args.image_size} "
        f"--wire-image-size {args.wire_image_size} --trials {args.trials} --batches {args.batches}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed:.0f} s; medians of {args.trials} "
        "interleaved trials, concurrency 1, float32 wire)",
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
