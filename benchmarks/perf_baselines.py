"""The baselines `make perf` measures infer-server against, and the bare client that drives them.

Servers (each its own process, started with `start`): `echo`, a bare ROUTER loop
that answers every request with a fixed valid RESULT; `mirror`, the same with the
request's id and ts echoed and HELLO and STATS answered, which infer-client can
drive; `floor`, the least a Python inference server can do per request; `floor-worker`,
the floor with that work on one worker thread, handed over as infer-server's pool hands it
(what a server with a prediction thread pays at all). All run with the allocator settings
infer-server runs with, applied as it applies them, before anything starts a
thread (so like for like: no baseline that takes fresh pages for every large
message where the server does not, or the other way round).

In the measuring process: `bare_zmq` (a bare DEALER loop), the seed's queue round
trip (the seed: PyTorch's `benchmarks/inference`), a single-thread memory copy, and
`CpuMeter`, which reads what a server process spent per request.

Run as `python -m benchmarks.perf_baselines echo|mirror|floor|floor-worker ENDPOINT [BATCH]`; it prints
`ready <endpoint>` once bound and stops at a one-frame message.
"""

if __name__ == "__main__":  # first, before any import that starts a thread: see server/alloc.py
    from server.alloc import keep_large_buffers_in_heap

    keep_large_buffers_in_heap()

# The allocator call must precede these imports in a baseline process.
# ruff: noqa: E402
import collections
import contextlib
import mmap
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import psutil
import torch
import zmq

from common import codec
from common.protocol import (
    InferHeader,
    InfoHeader,
    MsgType,
    ResultHeader,
    ServerTimes,
    StatsReplyHeader,
    read_tensor_desc,
    tensor_desc,
)
from common.shm import SHM_DIR
from common.wire import recv_frames, send_frames
from server.launch import stop_process, wait_for_line

ROOT = Path(__file__).resolve().parents[1]
BARE_WARMUP = 3
START_TIMEOUT_S = 60.0


# -- the baseline servers (in their own process) ---------------------------------


def _serve_router(endpoint: str, answer) -> None:
    """A bare ROUTER loop: `answer(frames)` gives each request's reply frames, identity first."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    print("ready", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while True:
        frames = recv_frames(sock)
        if len(frames) == 2:  # the stop message
            break
        send_frames(sock, answer(frames))
    sock.close()
    ctx.term()


def _serve_router_worker(endpoint: str, answer) -> None:
    """`_serve_router` with `answer` run on one worker thread, handed over as infer-server's pool
    does (a queue to the worker; a deque and an eventfd back to the polling I/O thread)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    replies: collections.deque = collections.deque()
    wake = os.eventfd(0, os.EFD_NONBLOCK)

    def work() -> None:
        torch.set_num_threads(1)  # this thread's own count (OpenMP's is per thread)
        with torch.inference_mode():
            while (frames := jobs.get()) is not None:
                replies.append(answer(frames))
                os.eventfd_write(wake, 1)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(wake, zmq.POLLIN)
    print("ready", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    stopping = False
    while not stopping:
        events = dict(poller.poll())
        if wake in events:
            os.eventfd_read(wake)  # before draining: a reply appended after this wakes the poll again
            while replies:
                send_frames(sock, replies.popleft())
        while not stopping and sock in events and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = recv_frames(sock)
            stopping = len(frames) == 2  # the stop message
            jobs.put(None if stopping else frames)
    worker.join()
    os.close(wake)
    sock.close()
    ctx.term()


def echo_answer(batch: int):
    """Every request answered with a fixed RESULT: batch x 1000 float32 zeros, zero copy."""
    control = codec.control_frame(MsgType.RESULT)
    header = codec.pack(ResultHeader(0, [0, 0], [tensor_desc("float32", [batch, 1000])], ServerTimes()).to_wire())
    reply = bytearray(batch * 1000 * 4)
    return lambda frames: [frames[0], control, header, reply]


def mirror_answer(batch: int):
    """The bare echo's RESULT with the request's id and ts echoed, and an answer to HELLO and STATS:
    enough for infer-client to measure against it (its own ceiling, the server nearly free)."""
    control = codec.control_frame(MsgType.RESULT)
    tensors = [tensor_desc("float32", [batch, 1000])]
    reply = bytearray(batch * 1000 * 4)
    replies = {codec.control_frame(MsgType.HELLO): (MsgType.INFO, lambda rid: InfoHeader(id=rid).to_wire()),
               codec.control_frame(MsgType.STATS): (MsgType.STATS_REPLY, lambda rid: StatsReplyHeader(id=rid).to_wire())}

    def answer(frames: list) -> list:
        header = msgpack.unpackb(frames[2].buffer)
        other = replies.get(frames[1].bytes)
        if other is not None:
            return [frames[0], codec.control_frame(other[0]), codec.pack(other[1](header.get("id")))]
        wire = ResultHeader.wire(header.get("id"), header.get("ts"), tensors, {})
        return [frames[0], control, codec.pack(wire), reply]

    return answer


def floor_answer():
    """The least a Python inference server can do per request.

    Unpacks the header, builds the tensor over the received frame, calls the noop
    model (in inference mode, one torch thread) and sends its logits with the
    header infer-server sends (durations all 0), but checks nothing, times
    nothing and keeps no accounts. Call it inside torch.inference_mode().
    """
    from server.models.synthetic import NoopModel

    torch.set_num_threads(1)
    model = NoopModel().eval()
    control = codec.control_frame(MsgType.RESULT)

    def answer(frames: list) -> list:
        request = InferHeader.unchecked(msgpack.unpackb(frames[2].buffer))
        dtype, shape, _ = read_tensor_desc(request.tensors[0])
        out = model(torch.frombuffer(frames[3].buffer, dtype=codec.TORCH_DTYPES[dtype]).view(shape))
        reply = ResultHeader(request.id, request.ts, [tensor_desc("float32", list(out.shape))], ServerTimes())
        return [frames[0], control, codec.pack(reply.to_wire()), memoryview(out.numpy())]

    return answer


def _main(argv: list[str]) -> None:
    kind, endpoint, *rest = argv
    if kind == "echo":
        _serve_router(endpoint, echo_answer(int(rest[0])))
    elif kind == "mirror":
        _serve_router(endpoint, mirror_answer(int(rest[0])))
    elif kind == "floor":
        with torch.inference_mode():
            _serve_router(endpoint, floor_answer())
    elif kind == "floor-worker":
        _serve_router_worker(endpoint, floor_answer())
    else:
        raise SystemExit(f"unknown baseline {kind!r}: echo, mirror, floor or floor-worker")


@dataclass
class Baseline:
    """A started baseline server: its process and the endpoint it bound."""

    proc: subprocess.Popen
    endpoint: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """The one-frame stop message, then (if that did not end it) SIGTERM and SIGKILL."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.endpoint)
        sock.send(b"stop")
        sock.close()
        ctx.term()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 10)


def start(kind: str, endpoint: str = "tcp://127.0.0.1:*", batch: int = 0, stderr: Path | None = None) -> Baseline:
    """Start the `echo` or `mirror` (answering batch x 1000 logits), `floor` or `floor-worker` baseline on
    endpoint; wait until bound."""
    args = [kind, endpoint] + ([str(batch)] if kind in ("echo", "mirror") else [])
    with open(stderr or "/dev/null", "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.perf_baselines", *args],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
    try:
        line = wait_for_line(proc, "ready ", START_TIMEOUT_S)
    except (TimeoutError, RuntimeError) as exc:
        stop_process(proc, 10)
        raise RuntimeError(f"baseline {kind} did not start: {exc}") from None
    return Baseline(proc, line.split()[1])


# -- in the measuring process ----------------------------------------------------


def bare_zmq(endpoint: str, x: torch.Tensor, iters: int) -> float:
    """Messages/s of a bare DEALER loop sending x as a valid INFER request, one at a time.

    Against the bare echo this is the transport's baseline; against infer-server
    or the floor server it shows their share of the gap without infer-client's.
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
    start_s = time.perf_counter()
    for i in range(iters):
        now = time.monotonic_ns()  # the header infer-client sends: id, two timestamps, the tensor
        send_frames(sock, [control, codec.pack(InferHeader(tensors, i, [now, now]).to_wire()), buf])
        frames = recv_frames(sock)
        codec.unpack_reply(frames[1])  # the real client reads the header too
    elapsed = time.perf_counter() - start_s
    sock.close(linger=0)
    ctx.term()
    return iters / elapsed


def warm_dealer(endpoint: str, x: torch.Tensor) -> tuple[zmq.Context, zmq.Socket, Callable[[int], int]]:
    """A DEALER connected to endpoint and warmed up, and its `send(id)`: one INFER of x with the
    header infer-client sends (id, two timestamps, the tensor), the input frame pre-built; it returns
    the send's monotonic time."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    desc, buf = codec.tensor_to_buffer(x)
    frame = zmq.Frame(buf)  # sent by reference count, as infer-client sends its inputs
    tensors = [desc]
    control = codec.control_frame(MsgType.INFER)
    for _ in range(BARE_WARMUP):
        send_frames(sock, [control, codec.pack(InferHeader(tensors, 0, [0, 0]).to_wire()), frame])
        reply = codec.decode([f.buffer for f in recv_frames(sock)])
        if reply.msg_type != MsgType.RESULT:
            raise RuntimeError(f"{endpoint} answered {reply.msg_type.name}: {reply.header}")

    def send(i: int) -> int:
        now = time.monotonic_ns()
        send_frames(sock, [control, codec.pack(InferHeader(tensors, i, [now, now]).to_wire()), frame])
        return now

    return ctx, sock, send


def bare_client(endpoint: str, x: torch.Tensor, iters: int, inflight: int = 1) -> float:
    """Messages/s of a bare DEALER loop keeping `inflight` valid INFER requests of x in flight.

    The least a Python client can do per message: it packs the header infer-client
    sends (id, two timestamps, the tensor), sends the pre-built input frame, and per
    reply reads the header and sends the next request. It checks that every reply
    is a RESULT (an ERROR is cheaper to send and would flatter the server).
    """
    ctx, sock, send = warm_dealer(endpoint, x)
    result = codec.control_frame(MsgType.RESULT)
    start_s = time.perf_counter()
    sent = 0
    for _ in range(min(inflight, iters)):
        send(sent)
        sent += 1
    for _ in range(iters):
        frames = recv_frames(sock)
        codec.unpack_reply(frames[1])  # the real client reads the header too
        if frames[0].bytes != result:
            raise RuntimeError(f"{endpoint} answered with control frame {frames[0].bytes!r}")
        if sent < iters:
            send(sent)
            sent += 1
    elapsed = time.perf_counter() - start_s
    sock.close(linger=0)
    ctx.term()
    return iters / elapsed


def queue_server(requests, replies) -> None:
    """The seed's transport: tensors through torch.multiprocessing queues."""
    while (x := requests.get()) is not None:
        replies.put(torch.empty(x.shape[0], 1000))


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
    start_s = time.perf_counter()
    for batch in batches:
        requests.put(batch)
        replies.get()
    return iters / (time.perf_counter() - start_s)


def memcpy_rate(sources: list[torch.Tensor], iters: int) -> float:
    """Copies/s of one thread copying each source in turn into one warm shared-memory region of their size.

    What `--shm-refresh` asks of the client per request, and nothing else: the same
    kind of destination (a /dev/shm file mapped shared, where the kernel gives
    4 KiB pages: a copy into it runs about 1.6x as long as one into private memory,
    which transparent huge pages back), and one thread (numpy's copy runs on the
    calling thread whatever torch's thread count is). Private memory where there is
    no /dev/shm.
    """
    src = [s.numpy() for s in sources]
    with _shm_region(src[0].nbytes) as region:
        dst = np.frombuffer(region, dtype=src[0].dtype).reshape(src[0].shape) if region is not None else \
            np.empty_like(src[0])
        for s in src:  # warm: every page of both sides touched before the clock starts
            np.copyto(dst, s)
        start_s = time.perf_counter()
        for i in range(iters):
            np.copyto(dst, src[i % len(src)])
        rate = iters / (time.perf_counter() - start_s)
        del dst
    return rate


@contextlib.contextmanager
def _shm_region(nbytes: int) -> Iterator[mmap.mmap | None]:
    """A /dev/shm file of nbytes mapped shared, unlinked on the way out (None without /dev/shm)."""
    if not SHM_DIR.is_dir():
        yield None
        return
    path = SHM_DIR / f"perf-memcpy-{os.getpid()}-{nbytes}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        region = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            yield region
        finally:
            region.close()
    finally:
        os.close(fd)
        path.unlink()


class CpuMeter:
    """CPU time (user + system) one process spends per request, over several measured calls."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.trials: list[tuple[float, int]] = []  # (CPU seconds, requests) of each measured call

    def measure(self, fn: Callable[[], float], requests: int) -> float:
        """Run fn (which makes the process serve `requests` requests) and return its result."""
        before = self.process.cpu_times()
        result = fn()
        after = self.process.cpu_times()
        self.trials.append(((after.user + after.system) - (before.user + before.system), requests))
        return result

    @property
    def cpu_s(self) -> float:
        return sum(cpu for cpu, _ in self.trials)

    @property
    def requests(self) -> int:
        return sum(n for _, n in self.trials)

    @property
    def per_request_us(self) -> float:
        # Totals over all trials: the kernel counts CPU time in 10 ms ticks, coarse for one trial.
        return self.cpu_s / max(1, self.requests) * 1e6

    @property
    def per_trial_us(self) -> list[float]:
        return [cpu / max(1, n) * 1e6 for cpu, n in self.trials]


if __name__ == "__main__":
    _main(sys.argv[1:])
