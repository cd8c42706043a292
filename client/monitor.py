"""The GPU-utilization thread: GPU and CPU figures over the measurement window only.

GPU figures come from the GPU the server really runs on:
* `local`: this host's NVML (nvidia-smi as fallback), for a co-located server,
  the device found by the UUID the server reported;
* `server`: the server's STATS replies (its own NVML), for a server on another
  host, where the client's NVML would see the wrong GPU;
* `auto` (default): local when the server is on this host and NVML sees its
  GPU, else server.
CPU: this client process, and each server process (from STATS), as a percentage
of one core over the window.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from typing import Any

import psutil
import zmq

from client.transport import Backend, ClientError, CurveKeys
from common.gpu import GpuSampler

log = logging.getLogger("infer.client.monitor")


class ResourceMonitor(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        infos: list[dict[str, Any]],
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
        self._started = threading.Event()
        self.samples: list[list[dict[str, float]]] = [[] for _ in infos]
        self.result: dict[str, Any] = {}

    def start_window(self) -> None:
        self.start()
        self._started.wait(10.0)

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
            self._started.set()

    def _stats(self, backend: Backend) -> dict[str, Any] | None:
        try:
            return backend.stats(timeout_s=2.0)
        except ClientError:
            return None

    def _run(self, backends: list[Backend]) -> None:
        me = psutil.Process()
        samplers: list[GpuSampler | None] = []
        for info in self.infos:
            sampler = None
            co_located = info.get("hostname") == platform.node()
            if self.source != "off" and info.get("gpu_uuid") and self.source in ("auto", "local") and co_located:
                candidate = GpuSampler(uuid=info["gpu_uuid"])
                if candidate.available:
                    sampler = candidate
            samplers.append(sampler)
        first_stats = [self._stats(b) for b in backends]
        cpu0, wall0 = me.cpu_times(), time.monotonic()
        self._started.set()
        while not self._stop_event.wait(self.interval_s):
            self._sample(backends, samplers)
        wall = time.monotonic() - wall0
        cpu1 = me.cpu_times()
        last_stats = [self._stats(b) for b in backends]
        server_pct = []
        for a, b in zip(first_stats, last_stats):
            if a and b:
                busy = (b["cpu_user_s"] + b["cpu_system_s"]) - (a["cpu_user_s"] + a["cpu_system_s"])
                server_pct.append(100.0 * busy / max(1e-9, (b["mono_ns"] - a["mono_ns"]) / 1e9))
            else:
                server_pct.append(None)
        client_pct = 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(1e-9, wall)
        self.result = {
            "gpu": self._summarise_gpu(samplers, last_stats),
            "cpu": {
                "client_pct": client_pct,
                "server_pct": server_pct if len(server_pct) > 1 else (server_pct[0] if server_pct else None),
                "server_rss_bytes": [s.get("rss_bytes") if s else None for s in last_stats],
            },
            "server_stats": last_stats,
        }

    def _sample(self, backends: list[Backend], samplers: list[GpuSampler | None]) -> None:
        for i, (backend, sampler, info) in enumerate(zip(backends, samplers, self.infos)):
            if self.source == "off" or not str(info.get("device", "")).startswith("cuda"):
                continue
            if sampler is not None:
                sample = sampler.sample()
            elif self.source in ("auto", "server"):
                stats = self._stats(backend)
                sample = stats.get("gpu") if stats else None
            else:
                sample = None
            if sample:
                self.samples[i].append(sample)

    def _summarise_gpu(self, samplers: list[GpuSampler | None], stats: list[dict | None]) -> dict[str, Any]:
        devices = []
        for i, samples in enumerate(self.samples):
            if not samples:
                continue
            devices.append(
                {
                    "endpoint": self.endpoints[i],
                    "name": self.infos[i].get("device_name"),
                    "source": "local-" + samplers[i].source if samplers[i] else "server",
                    "samples": len(samples),
                    "util_mean": _mean(s["util_pct"] for s in samples),
                    "util_max": max(s["util_pct"] for s in samples),
                    "mem_peak_bytes": max(s["mem_used_bytes"] for s in samples),
                    "power_mean_w": _mean(s["power_w"] for s in samples if "power_w" in s),
                    "sm_clock_mean_mhz": _mean(s["sm_clock_mhz"] for s in samples if "sm_clock_mhz" in s),
                }
            )
        if not devices:
            reasons = {s.get("gpu_reason") for s in stats if s} - {None, ""}
            if self.source == "off":
                reasons = {"disabled (--gpu-source off)"}
            return {"util_mean": None, "reason": "; ".join(sorted(reasons)) or "no GPU samples", "devices": []}
        return {
            "source": devices[0]["source"],
            "util_mean": _mean(d["util_mean"] for d in devices),
            "mem_peak_bytes": max(d["mem_peak_bytes"] for d in devices),
            "power_mean_w": _mean(d["power_mean_w"] for d in devices if d["power_mean_w"] is not None),
            "devices": devices,
        }


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
