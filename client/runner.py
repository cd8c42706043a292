"""One client run: handshake, warm-up, the measured phase, and its result.

Threads (as in the seed's frontend, PyTorch's benchmarks/inference):
* the I/O (request-generator) thread, this one, running `client.loop.MeasureLoop`:
  owns every measurement socket, sends on the pacer's schedule and timestamps
  replies the moment they arrive;
* the metrics thread (`client.metrics.Recorder`): all bookkeeping per reply;
* the GPU-utilization thread (`client.monitor.ResourceMonitor`): GPU and CPU
  figures over the measurement window, on sockets of its own.
They hand each other events through queues; `RunResult.from_run` combines what
each recorded once they have stopped. `--processes N` runs N such clients in
spawned processes and merges their results.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from client.config import ClientConfig
from client.inputs import InputSource, open_inputs
from client.loadgen import InputPool, check_server_input
from client.loop import MeasureLoop
from client.metrics import Recorder, Window, is_stable
from client.monitor import ResourceMonitor
from client.progress import Progress, sigint_deferred
from client.results import ColdStart, RunResult
from client.transport import HELLO_NOTICE_S, Backend, ClientError
from common.protocol import WIRE_DTYPES, InferHeader, InfoHeader, MsgType

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as EventType

    from client.verdict import TailSample

# profile_stop's reply waits for the trace to be written: a long window's trace takes a while.
PROFILE_STOP_TIMEOUT_S = 300.0


def run(config: ClientConfig, progress: Progress | None = None, tail: TailSample | None = None) -> RunResult:
    """Run the benchmark described by `config` (in `config.processes` processes), reporting to `progress`.

    With `tail` (a peak-search probe), every request's times go to it, and the run
    ends as soon as its verdict is decided.
    """
    progress = progress or Progress()
    if config.processes > 1:
        if tail is not None:
            raise ValueError("a tail verdict needs every request's times in one process")
        return _run_processes(config, progress)
    ctx = zmq.Context()
    backends = [Backend(ctx, e, i, config.curve) for i, e in enumerate(config.servers)]
    try:
        return _run(ctx, config, backends, progress, tail)
    finally:
        for b in backends:
            b.close()
        ctx.term()


def _run(ctx: zmq.Context, config: ClientConfig, backends: list[Backend], progress: Progress,
         tail: TailSample | None = None) -> RunResult:
    started_unix = time.time()
    infos = [b.hello(config.timeout_s, HELLO_NOTICE_S) for b in backends]  # kept as sent, in the result
    for b, info in zip(backends, infos):
        try:
            check_server_input(info, config.batch_size, config.sample_shape, config.wire_dtype)
            check_request_fits(info, config)
        except ValueError as exc:
            raise ClientError(f"{b.endpoint}: {exc}") from None
    headers = [InfoHeader.from_wire(info) for info in infos]
    pool = InputPool(config.batch_size, config.sample_shape, config.wire_dtype, config.seed)
    # Set up before warm-up, so a server that cannot share this host's memory is refused at once.
    inputs = open_inputs(config, backends, infos, pool)
    try:
        cold_start = [ColdStart.from_info(b.endpoint, h, _warm_up(b, pool, config, progress))
                      for b, h in zip(backends, headers)]
        loop, recorder, resources = _measure(ctx, config, backends, headers, pool, inputs, progress, tail)
    finally:
        inputs.close()
    for entry, stats in zip(cold_start, resources.get("server_stats") or []):
        entry.add_stats(stats)
    return RunResult.from_run(config, infos, started_unix, loop, recorder, resources, cold_start)


def _measure(ctx: zmq.Context, config: ClientConfig, backends: list[Backend], headers: list[InfoHeader],
             pool: InputPool, inputs: InputSource, progress: Progress,
             tail: TailSample | None = None) -> tuple[MeasureLoop, Recorder, dict]:
    """The measured phase, with the metrics and GPU-utilization threads around it."""
    stop = progress.stop  # set by Ctrl-C (client/progress.py), once the windows are stable or the verdict decided
    recorder = _recorder(config, stop, progress, tail)
    monitor = ResourceMonitor(ctx, list(config.servers), headers, config.gpu_source, config.gpu_interval_s, config.curve)
    profiled = _start_profiles(config, backends)  # after warm-up: the trace holds measured requests only
    # All inside the try: a Ctrl-C anywhere from here on must stop both threads, or ctx.term() waits for ever
    # on the monitor's sockets (a second Ctrl-C just after the first hung the client so).
    try:
        monitor.start_window()  # GPU/CPU figures cover the measured phase only
        recorder.start()
        loop = MeasureLoop(config, backends, pool, recorder.inbox, stop, on_link=monitor.link_changed, inputs=inputs)
        progress.start_measuring(loop)
        wall0, io_cpu0 = time.monotonic(), time.thread_time()
        loop.run()
        io_cpu, wall = time.thread_time() - io_cpu0, time.monotonic() - wall0
    except BaseException:
        _stop_profiles(profiled, quietly=True)  # leave no window open on the servers
        raise
    finally:
        resources = monitor.stop_window() if monitor.ident is not None else {}
        if recorder.ident is not None:
            recorder.stop()
        progress.finish()
    # The I/O and metrics threads share one GIL: their CPU together, against one core (client/validity.py).
    resources.setdefault("cpu", {})["client_gil_pct"] = 100 * (io_cpu + recorder.cpu_s) / max(1e-9, wall)
    # After the window's figures are taken, so writing the trace does not count in the server's CPU.
    resources["profile_trace"] = _stop_profiles(profiled)
    return loop, recorder, resources


def _start_profiles(config: ClientConfig, backends: list[Backend]) -> list[Backend]:
    """With --profile-dir, open a profiling window on every server; returns the servers that opened one."""
    opened: list[Backend] = []
    if config.profile_dir is None:
        return opened
    try:
        for b in backends:
            b.control("profile_start", timeout_s=config.timeout_s, directory=str(config.profile_dir))
            opened.append(b)
    except ClientError as exc:
        _stop_profiles(opened, quietly=True)
        raise ClientError(f"--profile-dir: {exc}") from None
    return opened


def _stop_profiles(opened: list[Backend], quietly: bool = False) -> list[str]:
    """Close the windows `_start_profiles` opened; the trace files the servers wrote, in server order."""
    traces = []
    for b in opened:
        try:
            reply = b.control("profile_stop", timeout_s=PROFILE_STOP_TIMEOUT_S)
        except ClientError:
            if quietly:
                continue
            raise
        traces.append(str(reply.get("trace")))
    return traces


def request_bytes(config: ClientConfig) -> int:
    """The input tensor one request of this run carries: batch * the sample's elements * the dtype's itemsize."""
    return config.batch_size * math.prod(config.sample_shape) * WIRE_DTYPES[config.wire_dtype]


def check_request_fits(info: dict, config: ClientConfig) -> None:
    """ValueError unless the server accepts a frame this big: libzmq would drop the connection instead of
    answering, and the run would see only timeouts. Shared memory sends no tensor frame."""
    limit = InfoHeader.from_wire(info).max_frame_bytes
    need = request_bytes(config)
    if config.transport != "shm" and isinstance(limit, int) and need > limit:
        raise ValueError(
            f"one request is {need} bytes (batch {config.batch_size} of {'x'.join(map(str, config.sample_shape))}"
            f" {config.wire_dtype}), over the server's limit of {limit} bytes per frame: lower --batch-size or"
            " --image-size, or restart the server with a larger --max-message-bytes"
        )


def _recorder(config: ClientConfig, stop: threading.Event, progress: Progress | None = None,
              tail: TailSample | None = None) -> Recorder:
    """The metrics thread; with --window-s and no other bound it ends the run once stable; with `tail`, once
    the verdict is decided."""

    def on_window(windows: list[Window]) -> None:
        stable = is_stable(windows, config.stability_windows, config.stability_tolerance)
        if config.run_until_stable and (stable or len(windows) >= config.max_windows):
            stop.set()

    return Recorder(
        config.batch_size,
        list(config.servers),
        slo_ns=int(config.slo_ms * 1e6) if config.slo_ms is not None else None,
        window_ns=int(config.window_s * 1e9) if config.window_s else None,
        trace_file=config.trace_file,
        on_window=on_window,
        progress=progress,
        tail=tail,
        on_decided=stop.set,
    )


def _warm_up(backend: Backend, pool: InputPool, config: ClientConfig, progress: Progress) -> float | None:
    """`config.warmup` sequential requests; returns the first one's latency (s).

    With compile on and no server-side warm-up, the first request of a shape
    includes compilation: this is the seed's cold-start "warm-up latency".
    """
    first = None
    if config.warmup:
        progress.warming_up(backend.endpoint)
    for _ in range(config.warmup):
        start = time.monotonic_ns()
        header = InferHeader([], ts=[start, start]).to_wire()
        backend.request(MsgType.INFER, header, timeout_s=config.warmup_timeout_s, tensors=(pool.next(),))
        if first is None:
            first = (time.monotonic_ns() - start) / 1e9
    progress.warmed_up(backend.endpoint, first)
    return first


def _child(config: ClientConfig, out_path: str, stop_all: EventType | None = None) -> None:
    """Entry point of one client process of a --processes run."""
    progress = Progress.in_client_process(stop_all)  # silent; Ctrl-C ends its measurement
    try:
        result = run(config, progress)
        result.interrupted = progress.interrupted
        Path(out_path).write_text(result.to_json())
    except ClientError as exc:
        Path(out_path).write_text(json.dumps({"error": str(exc)}))


def _run_processes(config: ClientConfig, progress: Progress) -> RunResult:
    """Run `config.processes` client processes at once and merge their results exactly."""
    mp = multiprocessing.get_context("spawn")  # ZeroMQ contexts must not cross a fork
    with tempfile.TemporaryDirectory(prefix="infer-client-") as tmp:
        paths = [str(Path(tmp) / f"part{i}.json") for i in range(config.processes)]
        stop_all = mp.Event()
        procs = [
            mp.Process(target=_child, args=(config.part(i, config.processes), p, stop_all), name=f"client-{i}")
            for i, p in enumerate(paths)
        ]
        progress.pass_interrupt_to(procs, stop_all)
        progress.start_measuring(None)
        with sigint_deferred():  # a Ctrl-C waits until each process handles it itself
            for p in procs:
                p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # a second Ctrl-C: stop them now, results or not
            for p in procs:
                p.terminate()
            raise
        results = []
        for proc, path in zip(procs, paths):
            if not Path(path).exists():
                raise ClientError(f"client process {proc.name} exited with code {proc.exitcode} and no result")
            data = json.loads(Path(path).read_text())
            if "error" in data:
                raise ClientError(data["error"])
            results.append(RunResult.from_dict(data))
    return RunResult.merge(results)
