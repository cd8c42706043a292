"""One client run: handshake, warm-up, the measured phase, and its result.

Threads (as in the seed's frontend, PyTorch's benchmarks/inference):
* the I/O (request-generator) thread, this one, running `client.loop.MeasureLoop`:
  owns every measurement socket, sends on the pacer's schedule and timestamps
  replies the moment they arrive;
* the metrics thread (`client.metrics.Recorder`): all bookkeeping per reply;
* the GPU-utilization thread (`client.monitor.ResourceMonitor`): GPU and CPU
  figures over the measurement window, on sockets of its own.
They hand each other events through queues; `RunResult.from_run` combines what
each recorded once they have stopped.

A start gate (`StartGate`, a fleet rank's link to rank 0: client/fleet_member.py)
holds the measured phase until the fleet's common start. `--processes N` runs N
such clients in spawned processes, coordinated as a fleet on this host
(client/coordinator.py) and merged exactly (client/fleet_merge.py).
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from client.config import ClientConfig
from client.coordinator import Coordinator
from client.fleet_member import Member
from client.fleet_merge import merge_fleet
from client.fleet_wire import FleetError
from client.inputs import InputSource, open_inputs
from client.interrupt import Interrupt, sigint_deferred
from client.loadgen import InputPool, check_server_input
from client.loop import MeasureLoop
from client.metrics import Recorder, Window, is_stable
from client.monitor import ResourceMonitor
from client.progress import Progress
from client.results import ColdStart, RunResult
from client.transport import HELLO_NOTICE_S, Backend, ClientError
from common.protocol import WIRE_DTYPES, InferHeader, InfoHeader, MsgType

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from client.verdict import TailSample

# profile_stop's reply waits for the trace to be written: a long window's trace takes a while.
PROFILE_STOP_TIMEOUT_S = 300.0
PROCESS_JOIN_TIMEOUT_S = 30.0


class StartGate(Protocol):
    """What holds a run's measured phase until a common start (a fleet rank's `Member`)."""

    def ready(self) -> None:
        """Warm-up is done: block until the start instant is known."""

    def wait(self) -> None:
        """Block until the start instant."""

    def started(self, first_send_ns: int) -> None:
        """The measured phase's first send, on the monotonic clock."""


def run(config: ClientConfig, progress: Progress | None = None, tail: TailSample | None = None,
        gate: StartGate | None = None) -> RunResult:
    """Run the benchmark described by `config` (in `config.processes` processes), reporting to `progress`.

    With `tail` (a peak-search probe), every request's times go to it, and the run
    ends as soon as its verdict is decided. With `gate` (a fleet rank), the measured
    phase waits for the fleet's common start.
    """
    progress = progress or Progress()
    if config.processes > 1:
        if tail is not None:
            raise ValueError("a tail verdict needs every request's times in one process")
        return _run_processes(config, progress)
    ctx = zmq.Context()
    backends = [Backend(ctx, e, i, config.curve) for i, e in enumerate(config.servers)]
    try:
        return _run(ctx, config, backends, progress, tail, gate)
    finally:
        for b in backends:
            b.close()
        ctx.term()


def _run(ctx: zmq.Context, config: ClientConfig, backends: list[Backend], progress: Progress,
         tail: TailSample | None = None, gate: StartGate | None = None) -> RunResult:
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
        loop, recorder, resources = _measure(ctx, config, backends, headers, pool, inputs, progress, tail, gate)
    finally:
        inputs.close()
    for entry, stats in zip(cold_start, resources.get("server_stats") or []):
        entry.add_stats(stats)
    return RunResult.from_run(config, infos, started_unix, loop, recorder, resources, cold_start)


def _measure(ctx: zmq.Context, config: ClientConfig, backends: list[Backend], headers: list[InfoHeader],
             pool: InputPool, inputs: InputSource, progress: Progress,
             tail: TailSample | None = None, gate: StartGate | None = None) -> tuple[MeasureLoop, Recorder, dict]:
    """The measured phase, with the metrics and GPU-utilization threads around it."""
    if gate is not None:
        gate.ready()  # every rank has warmed up; the set-up below fits before the start instant
    stop = progress.stop  # set by Ctrl-C (client/interrupt.py), once the windows are stable or the verdict decided
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
        if gate is not None:
            gate.wait()
        wall0, io_cpu0 = time.monotonic(), time.thread_time()
        loop.run()
        io_cpu, wall = time.thread_time() - io_cpu0, time.monotonic() - wall0
        if gate is not None:
            gate.started(loop.start_ns)
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


def run_member(config: ClientConfig, member: Member, progress: Progress) -> RunResult:
    """A fleet rank's own run, `member` (its link to rank 0) its start gate; a failure is passed on to rank 0."""
    member.joined()
    try:
        result = run(config, progress, gate=member)
    except BaseException as exc:
        member.fail(failure_reason(exc))
        raise
    result.interrupted = result.interrupted or progress.interrupted
    return result


def failure_reason(exc: BaseException) -> str:
    """One line for why a rank could not go on, for every rank to read."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C) before the start"
    if isinstance(exc, (ClientError, FleetError)):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return repr(exc)


def _child(config: ClientConfig, index: int, parts: int, endpoint: str, stop_all: Any) -> None:
    """Entry point of one client process of a --processes run: a member of its parent's coordinator."""
    interrupt = Interrupt.in_client_process(stop_all)  # silent; Ctrl-C ends its measurement
    member = Member(endpoint, index, parts, interrupt, timeout_s=config.fleet_timeout_s)
    try:
        member.deliver(run_member(config, member, Progress(interrupt=interrupt)).to_json())
    except (FleetError, ClientError, OSError):
        pass  # the coordinator has the reason: a failure is sent to it
    finally:
        member.close()


def _run_processes(config: ClientConfig, progress: Progress) -> RunResult:
    """`config.processes` client processes started together (a fleet on this host); results merged exactly."""
    n = config.processes
    mp = multiprocessing.get_context("spawn")  # ZeroMQ contexts must not cross a fork
    try:
        coordinator = Coordinator("tcp://127.0.0.1:*", n, timeout_s=config.fleet_timeout_s)
    except FleetError as exc:
        raise ClientError(str(exc)) from None
    stop_all = mp.Event()
    procs = [mp.Process(target=_child, args=(config.part(i, n), i, n, coordinator.endpoint, stop_all),
                        name=f"client-{i}") for i in range(n)]
    progress.interrupt.pass_to(procs, stop_all)
    progress.interrupt.on_interrupt(coordinator.stop_fleet)
    progress.start_measuring(None)
    coordinator.start()
    try:
        with sigint_deferred():  # a Ctrl-C waits until each process handles it itself
            for p in procs:
                p.start()
        outcome = coordinator.collect(lambda: _check_processes(procs, coordinator))
    except FleetError as exc:
        raise ClientError(str(exc).replace("rank ", "client process ")) from None
    finally:
        coordinator.close()
        for p in procs:
            p.join(PROCESS_JOIN_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
    return merge_fleet(outcome, config, "--processes", coordinator.endpoint)


def _check_processes(procs: list[BaseProcess], coordinator: Coordinator) -> None:
    """A process that exited before the start will never arrive: the fleet is off at once, not at the timeout."""
    for i, p in enumerate(procs):
        if p.exitcode not in (None, 0) and coordinator.phase != "run":
            coordinator.abort(f"rank {i} exited with code {p.exitcode} before the start")
