"""The GPU-utilization thread: GPU and CPU figures over the measurement window only.

GPU figures come from the GPU the server really runs on:
* `local`: this host's NVML (nvidia-smi as fallback), for a co-located server,
  the device found by the UUID the server reported;
* `server`: the server's STATS replies (its own NVML), for a server on another
  host, where the client's NVML would see the wrong GPU;
* `auto` (default): local when the server is on this host and NVML sees its
  GPU, else server.
Before the window opens, a GPU's idle power is measured over IDLE_BASELINE_S with
nothing sent (common/gpu_window.py): energy per request counts the power above it.
CPU: this client process, and each server process (from STATS), as a percentage
of one core over the window.

A server that announced it is going away (DEAD), or that the I/O thread
reported lost, is not asked for STATS again until the I/O thread reports it
back: each such request would wait out its whole timeout.
"""

from __future__ import annotations

import logging
import platform
import queue
import threading
import time
from typing import Any

import psutil
import zmq

from client.transport import Backend, ClientError, CurveKeys, ServerGone
from common.gpu import GpuSampler
from common.gpu_window import IDLE_BASELINE_S, merge_devices, summarise
from common.protocol import InfoHeader, ProtocolError, StatsReplyHeader, backpressure_window

log = logging.getLogger("infer.client.monitor")

STATS_TIMEOUT_S = 2.0


class ResourceMonitor(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        infos: list[InfoHeader],
        source: str = "auto",
        interval_s: float = 0.1,
        curve: CurveKeys | None = None,
    ):
        super().__init__(name="gpu-monitor", daemon=True)
        self.ctx = ctx
        self.endpoints = endpoints
        self.infos = infos
        self.source = source
        self.interval_s = interval_s
        self.curve = curve
        self._stop_event = threading.Event()
        self._window_open = threading.Event()
        self.samples: list[list[dict[str, float]]] = [[] for _ in infos]
        self.result: dict[str, Any] = {}
        self._link_events: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._gone: set[int] = set()  # servers not to ask (this thread's own)

    def link_changed(self, index: int, alive: bool) -> None:
        """From the I/O thread: server `index` was lost (False) or is answering again (True)."""
        self._link_events.put((index, alive))

    def start_window(self) -> None:
        self.start()
        self._window_open.wait(10.0)

    def stop_window(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(15.0)
        return self.result

    def run(self) -> None:
        backends = [Backend(self.ctx, e, i, self.curve) for i, e in enumerate(self.endpoints)]
        try:
            self._run(backends)
        except Exception as exc:  # never take the measurement down with us
            log.warning("resource monitor failed: %s", exc)
            self.result = {"gpu": {"reason": f"monitor failed: {exc}"}, "cpu": {}}
        finally:
            for b in backends:
                b.close()
            self._window_open.set()

    def _stats(self, backend: Backend) -> StatsReplyHeader | None:
        while True:
            try:
                index, alive = self._link_events.get_nowait()
            except queue.Empty:
                break
            (self._gone.discard if alive else self._gone.add)(index)
        if backend.index in self._gone:
            return None
        try:
            return StatsReplyHeader.from_wire(backend.stats(timeout_s=STATS_TIMEOUT_S))
        except ServerGone:
            self._gone.add(backend.index)
            return None
        except (ClientError, ProtocolError):
            return None

    def _run(self, backends: list[Backend]) -> None:
        me = psutil.Process()
        samplers = [self._local_sampler(info) for info in self.infos]
        idle = self._idle_baseline(backends, samplers)
        first_stats = [self._stats(b) for b in backends]
        cpu0, wall0 = me.cpu_times(), time.monotonic()
        self._window_open.set()
        while not self._stop_event.wait(self.interval_s):
            self._sample(backends, samplers)
        wall = time.monotonic() - wall0
        cpu1 = me.cpu_times()
        last_stats = [self._stats(b) for b in backends]
        server_pct = [_cpu_pct(a, b) for a, b in zip(first_stats, last_stats)]
        client_pct = 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(1e-9, wall)
        self.result = {
            "gpu": self._summarise_gpu(samplers, last_stats, idle),
            "cpu": {
                "client_pct": client_pct,
                "server_pct": server_pct if len(server_pct) > 1 else (server_pct[0] if server_pct else None),
                "server_rss_bytes": [s.rss_bytes if s else None for s in last_stats],
            },
            "server_stats": last_stats,
            # Each server's ZeroMQ backpressure over the window (None: no STATS, or it restarted).
            "backpressure": [backpressure_window(a, b) for a, b in zip(first_stats, last_stats)],
        }

    def _local_sampler(self, info: InfoHeader) -> GpuSampler | None:
        """This host's NVML for the server's GPU, when the server runs here and NVML sees that GPU."""
        co_located = info.hostname == platform.node()
        if self.source in ("auto", "local") and info.gpu_uuid and co_located:
            sampler = GpuSampler(uuid=info.gpu_uuid)
            if sampler.available:
                return sampler
        return None

    def _watches_gpu(self, info: InfoHeader) -> bool:
        """Whether the server reports a GPU: a CUDA device, or a GPU its INFO describes (server/status.py)."""
        return self.source != "off" and (str(info.device or "").startswith("cuda") or bool(info.gpu_environment))

    def _gpu_sample(self, backend: Backend, sampler: GpuSampler | None) -> dict[str, Any] | None:
        if sampler is not None:
            return sampler.sample()
        if self.source in ("auto", "server"):
            stats = self._stats(backend)
            return stats.gpu if stats else None
        return None

    def _idle_baseline(self, backends: list[Backend], samplers: list[GpuSampler | None]) -> list[list[dict]]:
        """Per server, two samples IDLE_BASELINE_S apart with nothing sent: the GPU's idle power
        (common/gpu_window.py). Taken before the window opens, so it costs the run that second."""
        watched = [i for i, info in enumerate(self.infos) if self._watches_gpu(info)]
        first = {i: self._gpu_sample(backends[i], samplers[i]) for i in watched}
        if not any(first.values()) or self._stop_event.wait(IDLE_BASELINE_S):
            return [[] for _ in self.infos]
        second = {i: self._gpu_sample(backends[i], samplers[i]) for i in watched}
        return [[s for s in (first.get(i), second.get(i)) if s] for i in range(len(self.infos))]

    def _sample(self, backends: list[Backend], samplers: list[GpuSampler | None]) -> None:
        for i, (backend, sampler, info) in enumerate(zip(backends, samplers, self.infos)):
            if not self._watches_gpu(info):
                continue
            sample = self._gpu_sample(backend, sampler)
            # A server's sample is its newest: two STATS can return the same one.
            if sample and not (self.samples[i] and self.samples[i][-1].get("t_ns") == sample.get("t_ns")):
                self.samples[i].append(sample)

    def _summarise_gpu(
        self, samplers: list[GpuSampler | None], stats: list[StatsReplyHeader | None], idle: list[list[dict]]
    ) -> dict[str, Any]:
        devices = []
        for i, samples in enumerate(self.samples):
            if not samples:
                continue
            devices.append(
                {
                    "endpoint": self.endpoints[i],
                    "name": self.infos[i].device_name,
                    "source": "local-" + samplers[i].source if samplers[i] else "server",
                    **summarise(samples, idle[i]),
                }
            )
        if not devices:
            reasons = {s.gpu_reason for s in stats if s} - {None, ""}
            if self.source == "off":
                reasons = {"disabled (--gpu-source off)"}
            return {"util_mean": None, "reason": "; ".join(sorted(reasons)) or "no GPU samples", "devices": []}
        return {
            "source": devices[0]["source"],
            "util_mean": _mean(d["util_mean"] for d in devices),
            "mem_peak_bytes": max(d["mem_peak_bytes"] for d in devices),
            "power_mean_w": _mean(d["power_mean_w"] for d in devices if d["power_mean_w"] is not None),
            **merge_devices(devices),
            "devices": devices,
        }


def _cpu_pct(first: StatsReplyHeader | None, last: StatsReplyHeader | None) -> float | None:
    """A server process's CPU time over the window, as a percentage of one core."""
    if first is None or last is None:
        return None
    busy = (last.cpu_user_s + last.cpu_system_s) - (first.cpu_user_s + first.cpu_system_s)
    return 100.0 * busy / max(1e-9, (last.mono_ns - first.mono_ns) / 1e9)


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
