"""GPU figures from NVML (pynvml), with nvidia-smi as fallback: one sample at a time.

Each sample is a flat dict (docs/metrics.md defines every key, its NVML call and caveats):

    t_ns                 time.monotonic_ns() of the sampling process when the sample was taken
    util_pct             nvmlDeviceGetUtilizationRates().gpu
    mem_used_bytes       nvmlDeviceGetMemoryInfo().used (and mem_total_bytes)
    power_w              nvmlDeviceGetPowerUsage, mW -> W
    power_limit_w        nvmlDeviceGetEnforcedPowerLimit (the limit in force), mW -> W
    energy_mj            nvmlDeviceGetTotalEnergyConsumption: mJ since the driver loaded (Volta+)
    sm_clock_mhz         nvmlDeviceGetClockInfo(NVML_CLOCK_SM), and mem_clock_mhz (NVML_CLOCK_MEM)
    clocks_event_reasons nvmlDeviceGetCurrentClocksEventReasons (throttle reasons), a bit mask
    pcie_tx_kbs          nvmlDeviceGetPcieThroughput(TX_BYTES), and pcie_rx_kbs: KB/s over 20 ms
    unsupported          {figure: why} for the calls this GPU or driver does not answer

NVML's "GPU utilization" is the percentage of time, over its last sample period (1/6 s
to 1 s depending on the GPU), during which at least one kernel was running. It is not
SM occupancy: a GPU running one tiny kernel all the time reads 100%.

A call the GPU does not support is left out of every sample, with the reason in
`unsupported`, never reported as zero. PCIe throughput blocks about 20 ms per direction:
`BackgroundSampler` samples in a thread of its own for callers that must not wait (the
server's I/O thread). common/gpu_window.py turns a window's samples into figures.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("infer.gpu")

# NVML's enum values (nvml.h); fixed by the library's ABI, so not read from pynvml.
NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1
# Errors that mean "this GPU, driver or pynvml does not offer it": asked once, then left out.
PERMANENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound",
                    "NVMLError_InvalidArgument", "AttributeError")
SMI_UNSUPPORTED = "not read through nvidia-smi (pynvml, from the nvidia-ml-py package, is not importable)"


class GpuSampler:
    """Samples one GPU, chosen by UUID (preferred: immune to CUDA_VISIBLE_DEVICES) or NVML index."""

    def __init__(self, uuid: str | None = None, index: int = 0):
        self.uuid = uuid
        self.index = index
        self.source = "unavailable"
        self.reason = ""
        self.name = ""
        self.unsupported: dict[str, str] = {}  # figure -> why it is left out
        self.errors: dict[str, int] = {}  # figure -> samples it was missing from after a transient error
        self._nvml: Any = None
        self._handle: Any = None
        self._smi_id = uuid or str(index)
        self._lock = threading.Lock()  # one sample at a time: NVML handles are shared
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = (
                pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
            )
            self._nvml = pynvml
            self.name = _text(pynvml.nvmlDeviceGetName(self._handle))
            self.source = "nvml"
            return
        except Exception as exc:  # no driver, no GPU, no library: all mean "not here"
            self.reason = f"NVML: {exc}"
        if shutil.which("nvidia-smi") and self._smi_sample() is not None:
            self.source = "nvidia-smi"
            self.unsupported = {k: SMI_UNSUPPORTED for k in OPTIONAL_FIGURES if k not in SMI_FIGURES}
        else:
            self.reason += "; nvidia-smi not usable"

    @property
    def available(self) -> bool:
        return self.source != "unavailable"

    def sample(self) -> dict[str, Any] | None:
        """One sample (the module docstring lists its keys), or None if the GPU cannot be read now."""
        with self._lock:
            if self.source == "nvml":
                out = self._nvml_sample()
            elif self.source == "nvidia-smi":
                out = self._smi_sample()
            else:
                return None
        if out is not None:
            out["t_ns"] = time.monotonic_ns()
            if self.unsupported:
                out["unsupported"] = dict(self.unsupported)
        return out

    def _nvml_sample(self) -> dict[str, Any] | None:
        nv, h = self._nvml, self._handle
        try:
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out: dict[str, Any] = {"util_pct": float(util.gpu), "mem_used_bytes": float(mem.used),
                                   "mem_total_bytes": float(mem.total)}
        except Exception as exc:
            log.debug("NVML sample failed: %s", exc)
            return None
        for figure, read in _nvml_reads(nv, h).items():
            if figure in self.unsupported:
                continue
            try:
                out[figure] = read()
            except Exception as exc:
                kind = type(exc).__name__  # pynvml raises one NVMLError subclass per NVML return code
                if kind in PERMANENT_ERRORS:
                    self.unsupported[figure] = f"{kind}: {exc}"
                else:  # e.g. a timeout: this sample lacks the figure, the next one tries again
                    self.errors[figure] = self.errors.get(figure, 0) + 1
        return out

    def _smi_sample(self) -> dict[str, Any] | None:
        try:
            line = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used,power.draw,clocks.sm,name",
                    "--format=csv,noheader,nounits",
                    "-i",
                    self._smi_id,
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip().splitlines()[0]
            util, mem_mib, power, clock, name = (v.strip() for v in line.split(",", 4))
            self.name = name
            out: dict[str, Any] = {"util_pct": float(util), "mem_used_bytes": float(mem_mib) * 2**20}
            for key, value in (("power_w", power), ("sm_clock_mhz", clock)):
                try:
                    out[key] = float(value)
                except ValueError:  # "[N/A]"
                    pass
            return out
        except Exception as exc:
            log.debug("nvidia-smi sample failed: %s", exc)
            return None


def _nvml_reads(nv: Any, h: Any) -> dict[str, Callable[[], Any]]:
    """The optional figures, each one NVML call (a GPU may support any subset)."""
    return {
        "power_w": lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
        "power_limit_w": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "energy_mj": lambda: float(nv.nvmlDeviceGetTotalEnergyConsumption(h)),
        "sm_clock_mhz": lambda: float(nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM)),
        "mem_clock_mhz": lambda: float(nv.nvmlDeviceGetClockInfo(h, NVML_CLOCK_MEM)),
        "clocks_event_reasons": lambda: int(_clocks_event_reasons(nv, h)),
        "pcie_tx_kbs": lambda: float(nv.nvmlDeviceGetPcieThroughput(h, NVML_PCIE_UTIL_TX_BYTES)),
        "pcie_rx_kbs": lambda: float(nv.nvmlDeviceGetPcieThroughput(h, NVML_PCIE_UTIL_RX_BYTES)),
    }


OPTIONAL_FIGURES = tuple(_nvml_reads(None, None))
SMI_FIGURES = ("power_w", "sm_clock_mhz")


def _clocks_event_reasons(nv: Any, h: Any) -> int:
    """The throttle ("clocks event") reasons now; the older name on drivers and pynvml before 12.2."""
    if hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons"):
        return nv.nvmlDeviceGetCurrentClocksEventReasons(h)
    return nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)


class BackgroundSampler:
    """A GpuSampler read in a thread of its own: `latest()` returns the newest sample without waiting.

    For the server's I/O thread, which answers STATS at once whatever the load: NVML's PCIe
    counters block for 20 ms per direction. The thread samples every `interval_s` while someone
    asks, and stops after `idle_s` without a call (an idle server does not poll NVML). The call
    that finds no thread running samples once itself, so a first STATS always has a sample,
    and starts the thread.
    """

    def __init__(self, sampler: GpuSampler, interval_s: float = 0.1, idle_s: float = 30.0):
        self.sampler = sampler
        self.interval_s = interval_s
        self.idle_s = idle_s
        self._latest: dict[str, Any] | None = None
        self._asked = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._guard = threading.Lock()

    def latest(self) -> dict[str, Any] | None:
        self._asked = time.monotonic()
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._latest = self.sampler.sample() or self._latest
                self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
                self._thread.start()
        return self._latest

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            sample = self.sampler.sample()
            if sample is not None:
                self._latest = sample
            if time.monotonic() - self._asked > self.idle_s:
                return

    def close(self) -> None:
        self._stop.set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
