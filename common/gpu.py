"""GPU figures from NVML (pynvml), with nvidia-smi as fallback.

NVML's "GPU utilization" is the percentage of time, over its last sample period
(1/6 s to 1 s depending on the GPU), during which at least one kernel was
running. It is not SM occupancy: a GPU running one tiny kernel all the time
reads 100%.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

log = logging.getLogger("infer.gpu")


class GpuSampler:
    """Samples one GPU, chosen by UUID (preferred: immune to CUDA_VISIBLE_DEVICES) or NVML index."""

    def __init__(self, uuid: str | None = None, index: int = 0):
        self.uuid = uuid
        self.index = index
        self.source = "unavailable"
        self.reason = ""
        self.name = ""
        self._nvml: Any = None
        self._handle: Any = None
        self._smi_id = uuid or str(index)
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
        else:
            self.reason += "; nvidia-smi not usable"

    @property
    def available(self) -> bool:
        return self.source != "unavailable"

    def sample(self) -> dict[str, float] | None:
        """{"util_pct", "mem_used_bytes", "power_w", "sm_clock_mhz"}, or None if unavailable."""
        if self.source == "nvml":
            nv, h = self._nvml, self._handle
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out = {"util_pct": float(util.gpu), "mem_used_bytes": float(mem.used)}
            except Exception as exc:
                log.debug("NVML sample failed: %s", exc)
                return None
            # Power and clocks are not supported on every GPU; leave them out then.
            try:
                out["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception:
                pass
            try:
                out["sm_clock_mhz"] = float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            except Exception:
                pass
            return out
        if self.source == "nvidia-smi":
            return self._smi_sample()
        return None

    def _smi_sample(self) -> dict[str, float] | None:
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
            out = {"util_pct": float(util), "mem_used_bytes": float(mem_mib) * 2**20}
            for key, value in (("power_w", power), ("sm_clock_mhz", clock)):
                try:
                    out[key] = float(value)
                except ValueError:  # "[N/A]"
                    pass
            return out
        except Exception as exc:
            log.debug("nvidia-smi sample failed: %s", exc)
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
