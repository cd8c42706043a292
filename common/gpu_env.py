"""The environment a GPU run ran in, for every result: what changes a GPU's figures besides the code.

Read once per server (INFO's `gpu_environment`) through NVML: driver and the CUDA version it
supports, GPU name and UUID, power limit (in force, and the default), persistence mode, MIG
mode, ECC, application clocks (and the maximum clocks), the PCIe link; and the host's CPU
frequency governor where /sys says it. What NVML does not answer is under `unsupported`
with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.gpu import NVML_CLOCK_MEM, NVML_CLOCK_SM

CPUFREQ = Path("/sys/devices/system/cpu")


def environment(uuid: str | None = None, index: int = 0) -> dict[str, Any]:
    """The GPU's settings and versions, and the CPU governor; `error` instead when NVML cannot be read."""
    out: dict[str, Any] = {"cpu_governor": cpu_governor()}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:  # no pynvml, no driver, no such GPU
        return {**out, "error": f"NVML: {type(exc).__name__}: {exc}"}
    unsupported: dict[str, str] = {}
    for key, read in _reads(pynvml, handle).items():
        try:
            out[key] = read()
        except Exception as exc:
            unsupported[key] = f"{type(exc).__name__}: {exc}"
    out["unsupported"] = unsupported
    return out


def _reads(nv: Any, h: Any) -> dict[str, Callable[[], Any]]:
    return {
        "driver": lambda: _text(nv.nvmlSystemGetDriverVersion()),
        "cuda_driver": lambda: _cuda_version(nv.nvmlSystemGetCudaDriverVersion()),
        "name": lambda: _text(nv.nvmlDeviceGetName(h)),
        "uuid": lambda: _text(nv.nvmlDeviceGetUUID(h)),
        "power_limit_w": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
        "power_limit_default_w": lambda: nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0,
        "persistence_mode": lambda: bool(nv.nvmlDeviceGetPersistenceMode(h)),
        "mig_mode": lambda: _current_pending(nv.nvmlDeviceGetMigMode(h)),
        "ecc": lambda: _current_pending(nv.nvmlDeviceGetEccMode(h)),
        "app_clock_sm_mhz": lambda: nv.nvmlDeviceGetApplicationsClock(h, NVML_CLOCK_SM),
        "app_clock_mem_mhz": lambda: nv.nvmlDeviceGetApplicationsClock(h, NVML_CLOCK_MEM),
        "max_clock_sm_mhz": lambda: nv.nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_SM),
        "max_clock_mem_mhz": lambda: nv.nvmlDeviceGetMaxClockInfo(h, NVML_CLOCK_MEM),
        "pcie_link": lambda: f"gen {nv.nvmlDeviceGetCurrPcieLinkGeneration(h)} "
                             f"x{nv.nvmlDeviceGetCurrPcieLinkWidth(h)}",
    }


def cpu_governor(root: Path = CPUFREQ) -> str | None:
    """The CPU frequency governor(s) in use ('performance'; 'powersave,performance' when mixed), None if unreadable."""
    governors = set()
    for path in root.glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            governors.add(path.read_text().strip())
        except OSError:
            continue
    return ",".join(sorted(governors)) or None


def summary(env: dict[str, Any] | None) -> dict[str, Any]:
    """The environment as flat CSV columns (None where unknown)."""
    env = env or {}

    def on_off(value: Any) -> str | None:
        if isinstance(value, dict):  # {"current": .., "pending": ..}
            return on_off(value.get("current")) + ("" if value.get("pending") == value.get("current") else
                                                   f" (pending {on_off(value.get('pending'))})")
        return None if value is None else ("on" if value else "off")

    clocks = (f"{env['app_clock_sm_mhz']}/{env['app_clock_mem_mhz']}"
              if env.get("app_clock_sm_mhz") is not None and env.get("app_clock_mem_mhz") is not None else None)
    return {
        "gpu_name": env.get("name"),
        "gpu_uuid": env.get("uuid"),
        "gpu_driver": env.get("driver"),
        "gpu_cuda_driver": env.get("cuda_driver"),
        "gpu_power_limit_w": env.get("power_limit_w"),
        "gpu_persistence_mode": on_off(env.get("persistence_mode")),
        "gpu_mig_mode": on_off(env.get("mig_mode")),
        "gpu_ecc": on_off(env.get("ecc")),
        "gpu_app_clocks_mhz": clocks,  # SM/memory
        "cpu_governor": env.get("cpu_governor"),
    }


def _current_pending(value: Any) -> dict[str, bool]:
    current, pending = value
    return {"current": bool(current), "pending": bool(pending)}


def _cuda_version(value: int) -> str:
    """12040 -> '12.4' (NVML's CUDA_VERSION-style integer)."""
    return f"{value // 1000}.{value % 1000 // 10}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
