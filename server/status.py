"""What the server says about itself: the bodies of INFO (HELLO) and STATS_REPLY (STATS).

Both are answered by the I/O thread at once, whatever the load, so both only
read state the I/O thread owns or that is safe to read from it.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import TYPE_CHECKING, Any

import psutil
import torch

from common import __version__
from common.gpu import BackgroundSampler, GpuSampler
from common.protocol import PROTOCOL_VERSION, InfoHeader, StatsReplyHeader

if TYPE_CHECKING:
    from server.loop import Server

TELEMETRY_ENV = "INFER_SERVER_GPU_TELEMETRY"


def describe(server: Server) -> InfoHeader:
    """INFO without the request id: the start-up facts in `server.info`, then the live settings."""
    info = InfoHeader.from_fields(None, server.info)
    config, limits = server.config, server.limits
    info.protocol_version = PROTOCOL_VERSION
    info.server_version = __version__
    info.instance = server.instance
    info.state = "draining" if server.stopping else "ready"
    info.endpoints = server.endpoints
    info.hostname = platform.node()
    info.pid = os.getpid()
    info.num_workers = config.num_workers
    info.compile = config.compile
    info.compile_mode = config.compile_mode
    info.precision = config.precision
    info.channels_last = config.channels_last
    info.max_batch_size = config.max_batch_size
    info.batch_timeout_us = config.batch_timeout_us
    info.max_inflight = config.max_inflight
    info.max_frame_bytes = limits.max_frame_bytes
    info.max_frames = limits.max_frames
    info.config = config.to_json()  # every setting by option name, so a result records what it ran with
    info.torch_version = torch.__version__
    info.cuda_version = torch.version.cuda
    info.shm = server.shm.info() if server.shm is not None else None
    watched = watched_gpu(server)
    info.gpu_environment = _gpu_environment(*watched) if watched is not None else None
    return info


def watched_gpu(server: Server) -> tuple[str | None, int] | None:
    """(UUID, NVML index) of the GPU whose figures INFO and STATS report, None for none.

    The model's CUDA device; or, for a server whose model runs on the CPU as far as infer-server
    knows (a user model driving a GPU runtime of its own), the GPU named by the environment
    variable TELEMETRY_ENV: a UUID or an NVML index. Tests name a stand-in GPU this way.
    """
    device = server.runner.device
    if device.type == "cuda":
        return server.info.get("gpu_uuid"), device.index or 0
    named = os.environ.get(TELEMETRY_ENV, "").strip()
    if not named:
        return None
    return (None, int(named)) if named.isdigit() else (named, 0)


@functools.lru_cache(maxsize=4)
def _gpu_environment(uuid: str | None, index: int) -> dict[str, Any]:
    from common.gpu_env import environment

    return environment(uuid, index)


class ProcessStats:
    """The STATS reply: the loop's counters, this process's CPU and memory, the device's GPU figures."""

    def __init__(self, gpu_uuid: str | None) -> None:
        self._process = psutil.Process()
        self._gpu_uuid = gpu_uuid
        # NVML is opened on the first STATS that needs it, and read in a thread of its own
        # (common/gpu.py: PCIe counters block for 20 ms), so only that first STATS waits on it.
        self._gpu: GpuSampler | None = None
        self._sampler: BackgroundSampler | None = None
        self._started_mono = time.monotonic()

    def reply(self, server: Server, request_id: Any) -> StatsReplyHeader:
        cpu = self._process.cpu_times()
        runner = server.runner
        gpu, gpu_source, gpu_reason = None, "unavailable", "server device is cpu"
        watched = watched_gpu(server)
        if watched is not None:
            if self._gpu is None:
                self._gpu = GpuSampler(uuid=watched[0], index=watched[1])
                self._sampler = BackgroundSampler(self._gpu)
            assert self._sampler is not None
            gpu = self._sampler.latest() if self._gpu.available else None
            gpu_source, gpu_reason = self._gpu.source, self._gpu.reason
        return StatsReplyHeader(
            id=request_id,
            counters=server.counters,
            inflight=server.inflight,
            inflight_peak=server.inflight_peak,
            inflight_bytes=server.inflight_bytes,
            workers_busy=server.pool.busy,
            cpu_user_s=cpu.user,
            cpu_system_s=cpu.system,
            rss_bytes=self._process.memory_info().rss,
            uptime_s=time.monotonic() - self._started_mono,
            mono_ns=time.monotonic_ns(),
            gpu=gpu,
            gpu_source=gpu_source,
            gpu_reason=gpu_reason,
            first_call_s=dict(runner.gate.first_call_s),
            compiled_graphs=runner.compiled_graphs() if server.config.compile else 0,
            shm=server.shm.usage() if server.shm is not None else None,
            backpressure=server.sender.gauges().to_wire(),
            last_reload=server.info.get("last_reload"),
        )
