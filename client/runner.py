"""One client run: handshake, warm-up, the measured phase, and its result.

Threads (as in the seed's frontend):
* the I/O (request-generator) thread, this one: owns every measurement socket,
  sends on the pacer's schedule and timestamps replies the moment they arrive;
* the metrics thread (`Recorder`): all bookkeeping per reply;
* the GPU-utilization thread (`ResourceMonitor`): GPU and CPU figures over the
  measurement window, on sockets of its own.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from client.config import ClientConfig
from client.loadgen import InputPool, Pacer
from client.metrics import Completion, Recorder, is_stable
from client.monitor import ResourceMonitor
from client.results import RunResult
from client.transport import Backend, ClientError
from common import codec
from common.protocol import MsgType, ProtocolError
from common.wire import NOBLOCK, recv_frames, send_frames

log = logging.getLogger("infer.client")

POLL_CAP_MS = 100  # longest the I/O loop waits before re-checking timeouts and stop flags
SPIN_NS = 1_000_000  # below this, wait for a scheduled send by polling without sleeping
PROBE_INTERVAL_NS = 200_000_000  # HELLO probes to a lost server, with --reconnect-timeout


def run(config: ClientConfig) -> RunResult:
    """Run the benchmark described by `config` (in `config.processes` processes)."""
    if config.processes > 1:
        return _run_processes(config)
    ctx = zmq.Context()
    backends = [Backend(ctx, e, i, config.curve) for i, e in enumerate(config.servers)]
    try:
        return _run(ctx, config, backends)
    finally:
        for b in backends:
            b.close()
        ctx.term()


def _run(ctx: zmq.Context, config: ClientConfig, backends: list[Backend]) -> RunResult:
    started_unix = time.time()
    infos = [b.hello(config.timeout_s) for b in backends]
    pool = InputPool(config.batch_size, config.image_size, config.wire_dtype, config.seed)
    warmups = [_warm_up(b, pool, config) for b in backends]
    cold_start = [
        {
            "endpoint": b.endpoint,
            "startup_s": info.get("startup_s"),
            "torch_load_time": info.get("torch_load_time"),
            "m_compile_time": info.get("m_compile_time"),
            "warmup_latency": w,
        }
        for b, info, w in zip(backends, infos, warmups)
    ]
    stop = threading.Event()

    def on_window(windows: list) -> None:
        stable = is_stable(windows, config.stability_windows, config.stability_tolerance)
        if config.run_until_stable and (stable or len(windows) >= config.max_windows):
            stop.set()

    recorder = Recorder(
        config.batch_size,
        list(config.servers),
        slo_ns=int(config.slo_ms * 1e6) if config.slo_ms is not None else None,
        window_ns=int(config.window_s * 1e9) if config.window_s else None,
        trace_file=config.trace_file,
        on_window=on_window,
    )
    monitor = ResourceMonitor(ctx, list(config.servers), infos, config.gpu_source, config.gpu_interval_s, config.curve)
    monitor.start_window()  # GPU/CPU figures cover the measured phase only
    recorder.start()
    loop = MeasureLoop(config, backends, pool, recorder, stop)
    try:
        loop.run()
    finally:
        resources = monitor.stop_window()
        recorder.stop()
    # Server-side cold-start details known only after the first requests ran.
    for entry, stats in zip(cold_start, resources.get("server_stats") or []):
        if stats:
            entry["first_call_s"] = stats.get("first_call_s")
            entry["compiled_graphs"] = stats.get("compiled_graphs")
    return _result(config, infos, started_unix, loop, recorder, resources, warmups, cold_start)


def _warm_up(backend: Backend, pool: InputPool, config: ClientConfig) -> float | None:
    """`config.warmup` sequential requests; returns the first one's latency (s).

    With compile on and no server-side warm-up, the first request of a shape
    includes compilation: this is the seed's cold-start "warm-up latency".
    """
    first = None
    for _ in range(config.warmup):
        start = time.monotonic_ns()
        backend.request(
            MsgType.INFER, {"ts": [start, start]}, timeout_s=config.warmup_timeout_s, tensors=(pool.next(),)
        )
        if first is None:
            first = (time.monotonic_ns() - start) / 1e9
    return first


class MeasureLoop:
    """The I/O thread's measured phase: send on schedule, receive, detect lost servers."""

    def __init__(
        self,
        config: ClientConfig,
        backends: list[Backend],
        pool: InputPool,
        recorder: Recorder,
        stop: threading.Event,
    ):
        self.config = config
        self.backends = backends
        self.recorder = recorder
        self.stop = stop
        self.pacer = Pacer(config.concurrency, config.request_rate, config.arrival, config.burstiness, config.seed)
        control = codec.control_frame(MsgType.INFER)
        # Inputs are encoded once: per send only the small header is packed. Each
        # batch becomes one zmq.Frame, sent again and again: a send then shares the
        # frame's buffer by reference count, where a zero-copy send of the raw
        # buffer would register it with pyzmq's garbage-collector thread and wake
        # that thread when libzmq lets go (~20 us per 750 KB request on our VMs).
        self._inputs = []
        for t in pool.batches:
            desc, buf = codec.tensor_to_buffer(t)
            self._inputs.append((control, {**desc, "frame": 0}, zmq.Frame(buf)))
        self._next_input = 0
        self.pending: dict[int, int] = {}  # request id -> backend index
        self._received: list[Completion] = []  # replies not yet handed to the metrics thread
        self.sent = 0
        self.lost = 0
        self.start_ns = 0
        self.last_send_ns = 0
        self.last_scheduled_ns = 0
        self._rr = 0

    def run(self) -> None:
        cfg = self.config
        poller = zmq.Poller()
        for b in self.backends:
            poller.register(b.sock, zmq.POLLIN)
        self.start_ns = now = time.monotonic_ns()
        self.recorder.start_ns = now
        self.pacer.start(now)
        send_deadline = now + int(cfg.duration_s * 1e9) if cfg.duration_s else None
        sending = True
        while True:
            now = time.monotonic_ns()
            if sending and (
                self.stop.is_set()
                or (cfg.num_iters is not None and self.sent >= cfg.num_iters)
                or (send_deadline is not None and now >= send_deadline)
            ):
                sending = False
            no_backend = False
            while sending:
                scheduled = self.pacer.next_due_ns(now, len(self.pending))
                if scheduled is None:
                    break
                backend = self._choose()
                if backend is None:
                    # Every server is down: wait for one that is being probed, else stop.
                    no_backend = True
                    sending = any(b.down_since_ns is not None for b in self.backends)
                    break
                self._send(backend, scheduled)
                self.pacer.sent()
                now = time.monotonic_ns()
                if cfg.num_iters is not None and self.sent >= cfg.num_iters:
                    sending = False
            self._hand_over()
            if not sending and self.recorder.send_end_ns is None:
                self.recorder.send_end_ns = now
            if not sending and not self.pending:
                break
            wait_ns = self.pacer.wait_ns(now) if sending and not no_backend else None
            if wait_ns is None:
                timeout_ms = POLL_CAP_MS
            elif wait_ns < SPIN_NS:
                timeout_ms = 0
            else:
                timeout_ms = min(POLL_CAP_MS, (wait_ns - SPIN_NS) // 1_000_000 + 1)
            for sock, _ in poller.poll(timeout_ms):
                self._receive(self.backends[self._index_of(sock)], poller)
            self._check_timeouts(poller)
            self._probe_lost(poller)

    def _index_of(self, sock: zmq.Socket) -> int:
        for b in self.backends:
            if b.sock is sock:
                return b.index
        raise KeyError(sock)

    def _choose(self) -> Backend | None:
        """The live backend with the fewest requests in flight (round-robin among ties)."""
        live = [b for b in self.backends if b.alive]
        if not live:
            return None
        self._rr += 1
        fewest = min(b.inflight for b in live)
        ties = [b for b in live if b.inflight == fewest]
        return ties[self._rr % len(ties)]

    def _send(self, backend: Backend, scheduled_ns: int) -> None:
        control, desc, buf = self._inputs[self._next_input]
        self._next_input = (self._next_input + 1) % len(self._inputs)
        request_id = self.sent
        sent_ns = time.monotonic_ns()
        header = codec.pack({"id": request_id, "ts": [scheduled_ns, sent_ns], "tensors": [desc]})
        send_frames(backend.sock, [control, header, buf])
        if backend.inflight == 0:
            backend.last_progress_ns = sent_ns
        backend.inflight += 1
        self.pending[request_id] = backend.index
        self.recorder.backends[backend.index].sent += 1
        self.sent += 1
        self.last_send_ns = sent_ns
        self.last_scheduled_ns = scheduled_ns

    def _receive(self, backend: Backend, poller: zmq.Poller) -> None:
        while True:
            try:
                frames = recv_frames(backend.sock, NOBLOCK)
            except zmq.Again:
                return
            recv_ns = time.monotonic_ns()
            control = frames[0].bytes
            if not backend.alive:
                self._maybe_recovered(backend, control, frames, recv_ns)
                continue
            if len(control) == 2 and control[1] == MsgType.DEAD:
                self._lose(backend, poller, "server announced it is shutting down (DEAD)")
                return
            try:
                msg_type = MsgType(control[1]) if len(control) == 2 else None
                header = codec.unpack_header(frames[1].buffer) if len(frames) > 1 else {}
            except (ValueError, ProtocolError) as exc:
                log.warning("malformed reply from %s ignored: %s", backend.endpoint, exc)
                continue
            if self.pending.pop(header.get("id"), None) is None:
                continue  # a reply to an earlier (warm-up or lost) request
            backend.inflight -= 1
            backend.last_progress_ns = recv_ns
            self._received.append(Completion(backend.index, msg_type, header, recv_ns))

    def _hand_over(self) -> None:
        """Pass this turn's replies to the metrics thread, once the sends they freed are out.

        Handing them over after sending lets the metrics thread's bookkeeping run
        while the next requests are in flight instead of delaying them.
        """
        if self._received:
            self.recorder.inbox.put(self._received)
            self._received = []

    def _check_timeouts(self, poller: zmq.Poller) -> None:
        now = time.monotonic_ns()
        limit = int(self.config.timeout_s * 1e9)
        for b in self.backends:
            if b.alive and b.inflight and now - b.last_progress_ns > limit:
                self._lose(b, poller, f"no reply for {self.config.timeout_s:g} s")

    def _lose(self, backend: Backend, poller: zmq.Poller, reason: str) -> None:
        backend.alive = False
        if self.config.reconnect_timeout_s:
            # Keep listening: ZeroMQ reconnects by itself if a server comes back on
            # the endpoint, and _probe_lost asks it whether it has.
            # The outage is counted from the server's last sign of life.
            backend.down_since_ns = backend.last_progress_ns
            backend.last_probe_ns = time.monotonic_ns()
        else:
            poller.unregister(backend.sock)
        lost_ids = [rid for rid, idx in self.pending.items() if idx == backend.index]
        for rid in lost_ids:
            del self.pending[rid]
        counts = self.recorder.backends[backend.index]
        counts.lost += len(lost_ids)
        counts.lost_at_s = (time.monotonic_ns() - self.start_ns) / 1e9
        counts.lost_reason = reason
        self.lost += len(lost_ids)
        backend.inflight = 0
        log.warning("lost server %s after %.3f s: %s (%d requests lost)",
                    backend.endpoint, counts.lost_at_s, reason, len(lost_ids))

    def _probe_lost(self, poller: zmq.Poller) -> None:
        """HELLO a lost server now and then, until it answers or --reconnect-timeout passes."""
        now = time.monotonic_ns()
        for b in self.backends:
            if b.down_since_ns is None:
                continue
            if now - b.down_since_ns > self.config.reconnect_timeout_s * 1e9:
                b.down_since_ns = None  # gave up: lost for the rest of the run
                poller.unregister(b.sock)
            elif now - b.last_probe_ns >= PROBE_INTERVAL_NS:
                b.send(MsgType.HELLO, {"id": "probe"})
                b.last_probe_ns = now

    def _maybe_recovered(self, backend: Backend, control: bytes, frames: list, recv_ns: int) -> None:
        """While a server is lost, only an INFO answering a probe brings it back."""
        if backend.down_since_ns is None or control != codec.control_frame(MsgType.INFO):
            return  # stale replies to requests already counted lost, or DEAD frames
        try:
            if codec.unpack_header(frames[1].buffer).get("id") != "probe":
                return
        except (IndexError, ProtocolError):
            return
        counts = self.recorder.backends[backend.index]
        counts.recovery_s = (recv_ns - backend.down_since_ns) / 1e9
        counts.recoveries += 1
        backend.alive = True
        backend.down_since_ns = None
        log.warning("server %s is back after %.3f s", backend.endpoint, counts.recovery_s)


def _result(
    config: ClientConfig,
    infos: list[dict[str, Any]],
    started_unix: float,
    loop: MeasureLoop,
    rec: Recorder,
    resources: dict[str, Any],
    warmups: list[float | None],
    cold_start: list[dict[str, Any]],
) -> RunResult:
    batch = config.batch_size
    ok = sum(b.ok for b in rec.backends)
    failed: dict[str, int] = {}
    backends = []
    last_recv = [b.last_recv_ns for b in rec.backends if b.last_recv_ns is not None]
    end_ns = max(last_recv) if last_recv else loop.start_ns
    duration_s = max(1e-9, (end_ns - loop.start_ns) / 1e9)
    for b in rec.backends:
        for k, v in b.failed.items():
            failed[k] = failed.get(k, 0) + v
        b_end = b.last_recv_ns or loop.start_ns
        backends.append(
            {
                "endpoint": b.endpoint,
                "sent": b.sent,
                "ok": b.ok,
                "failed": dict(b.failed),
                "lost": b.lost,
                "lost_at_s": b.lost_at_s,
                "recovery_s": b.recovery_s,
                "recoveries": b.recoveries,
                "lost_reason": b.lost_reason,
                "throughput": b.ok * batch / max(1e-9, (b_end - loop.start_ns) / 1e9) if b.ok else 0.0,
                "latency": b.latency,
            }
        )
    schedule: dict[str, Any] = {"mode": "open" if config.request_rate else "closed"}
    if config.request_rate:
        send_span = max(1e-9, (loop.last_send_ns - loop.start_ns) / 1e9)
        behind_s = (loop.last_send_ns - loop.last_scheduled_ns) / 1e9
        schedule.update(
            offered_rate=config.request_rate,
            send_rate=(loop.sent - 1) / send_span if loop.sent > 1 else None,
            behind_at_end_s=behind_s,
            # Sends ending more than 5% of the run (and 10 ms) behind the schedule
            # mean the offered load was not offered: say so rather than report it.
            client_behind=behind_s > max(0.01, 0.05 * send_span),
        )
    windows = [{"throughput": w.throughput, "p50_s": w.p50_s, "count": w.count} for w in rec.windows]
    stable = is_stable(rec.windows, config.stability_windows, config.stability_tolerance) if config.window_s else None
    return RunResult(
        config=config.to_dict(),
        servers=infos,
        batch_size=batch,
        started_unix=started_unix,
        duration_s=duration_s,
        throughput=ok * batch / duration_s if ok else 0.0,
        sent=loop.sent,
        ok=ok,
        failed=failed,
        lost=loop.lost,
        latency=rec.latency,
        rtt=rec.rtt,
        schedule_lag=rec.schedule_lag,
        breakdown=rec.breakdown,
        backends=backends,
        warmup_latency=warmups[0] if warmups else None,
        gpu=resources.get("gpu", {}),
        cpu=resources.get("cpu", {}),
        windows=windows,
        stable=stable,
        under_slo=rec.under_slo,
        schedule=schedule,
        cold_start=cold_start,
        complete=loop.lost == 0 and all(b.alive for b in loop.backends),
    )


def _child(config: ClientConfig, out_path: str) -> None:
    """Entry point of one client process of a --processes run."""
    try:
        result = run(config)
        Path(out_path).write_text(result.to_json())
    except ClientError as exc:
        Path(out_path).write_text(json.dumps({"error": str(exc)}))


def _run_processes(config: ClientConfig) -> RunResult:
    """Run `config.processes` client processes at once and merge their results exactly."""
    mp = multiprocessing.get_context("spawn")  # ZeroMQ contexts must not cross a fork
    with tempfile.TemporaryDirectory(prefix="infer-client-") as tmp:
        paths = [str(Path(tmp) / f"part{i}.json") for i in range(config.processes)]
        procs = [
            mp.Process(target=_child, args=(config.part(i, config.processes), p), name=f"client-{i}")
            for i, p in enumerate(paths)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        results = []
        for proc, path in zip(procs, paths):
            if not Path(path).exists():
                raise ClientError(f"client process {proc.name} exited with code {proc.exitcode} and no result")
            data = json.loads(Path(path).read_text())
            if "error" in data:
                raise ClientError(data["error"])
            results.append(RunResult.from_dict(data))
    return RunResult.merge(results)
