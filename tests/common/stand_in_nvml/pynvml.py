"""A stand-in for nvidia-ml-py's `pynvml`, so GPU telemetry is tested where no GPU is.

Put in place for a test only: in this process by `sys.modules["pynvml"] = module` (the tests'
`stand_in_nvml` fixture), or in a server process by putting this folder first on its
PYTHONPATH, with the scenario as JSON in the file named by $STAND_IN_NVML.

It answers the calls common/gpu.py and common/gpu_env.py make, with the same names, units
(mW, mJ, MHz, KB/s), return types and error classes as pynvml. `CONFIG` holds each figure:
a value, or a list of values returned one per call (the last one repeats, or the whole list
when the figure is named in `cycle`). The energy
counter is either such a list, or, with `energy_model` set, grows with time the way a
real board's does: `idle_w` always, plus `busy_w` per core-second of CPU the sampling
process spends (so a server's counter climbs faster while it serves). `not_supported`
names the functions that raise NVMLError_NotSupported; `CALLS` counts every call.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace
from typing import Any

NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1

CONFIG: dict[str, Any] = {
    "name": "Stand-in H200",
    "uuid": "GPU-00000000-stand-in",
    "driver": "570.00.00",
    "cuda_driver": 12080,
    "util": 50,
    "mem_used": 2 * 2**30,
    "mem_total": 141 * 2**30,
    "power_mw": 300_000,
    "power_limit_mw": 700_000,
    "power_default_limit_mw": 700_000,
    "energy_mj": 1_000_000,
    "energy_model": None,  # {"idle_w": .., "busy_w": ..}: the counter follows time and CPU instead
    "sm_mhz": 1980,
    "mem_mhz": 2619,
    "reasons": 0,
    "pcie_tx_kbs": 100_000,
    "pcie_rx_kbs": 3_000_000,
    "persistence": 1,
    "mig": [0, 0],
    "ecc": [1, 1],
    "app_sm_mhz": 1980,
    "app_mem_mhz": 2619,
    "max_sm_mhz": 1980,
    "max_mem_mhz": 3201,
    "pcie_gen": 5,
    "pcie_width": 16,
    "not_supported": [],
    "timeouts": [],  # functions whose next call raises NVMLError_Timeout (once each)
    "cycle": [],  # figures whose list of values repeats instead of stopping at its last value
}
CALLS: dict[str, int] = {}
_START = (time.monotonic(), time.process_time())


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own names
    pass


class NVMLError_Timeout(NVMLError):  # noqa: N801
    pass


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    pass


if os.environ.get("STAND_IN_NVML"):
    with open(os.environ["STAND_IN_NVML"]) as f:
        CONFIG.update(json.load(f))


def _value(key: str) -> Any:
    value = CONFIG[key]
    if isinstance(value, list) and key not in ("mig", "ecc", "not_supported", "timeouts"):
        if key in CONFIG["cycle"]:  # round and round, however many calls a test's timing allows
            value.append(value.pop(0))
            return value[-1]
        return value.pop(0) if len(value) > 1 else value[0]
    return value


def _call(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1
    if name in CONFIG["not_supported"]:
        raise NVMLError_NotSupported("Not Supported")
    if name in CONFIG["timeouts"]:
        CONFIG["timeouts"].remove(name)
        raise NVMLError_Timeout("Timeout")


def nvmlInit() -> None:
    _call("nvmlInit")


def nvmlShutdown() -> None:
    _call("nvmlShutdown")


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    _call("nvmlDeviceGetHandleByIndex")
    if index != 0:
        raise NVMLError_InvalidArgument("Invalid Argument")
    return SimpleNamespace(index=0)


def nvmlDeviceGetHandleByUUID(uuid: str | bytes) -> Any:
    _call("nvmlDeviceGetHandleByUUID")
    return SimpleNamespace(index=0)


def nvmlDeviceGetName(handle: Any) -> str:
    _call("nvmlDeviceGetName")
    return CONFIG["name"]


def nvmlDeviceGetUUID(handle: Any) -> str:
    _call("nvmlDeviceGetUUID")
    return CONFIG["uuid"]


def nvmlSystemGetDriverVersion() -> str:
    _call("nvmlSystemGetDriverVersion")
    return CONFIG["driver"]


def nvmlSystemGetCudaDriverVersion() -> int:
    _call("nvmlSystemGetCudaDriverVersion")
    return CONFIG["cuda_driver"]


def nvmlDeviceGetUtilizationRates(handle: Any) -> Any:
    _call("nvmlDeviceGetUtilizationRates")
    return SimpleNamespace(gpu=_value("util"), memory=0)


def nvmlDeviceGetMemoryInfo(handle: Any, version: Any = None) -> Any:
    _call("nvmlDeviceGetMemoryInfo")
    used, total = _value("mem_used"), CONFIG["mem_total"]
    return SimpleNamespace(used=used, total=total, free=total - used)


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    _call("nvmlDeviceGetPowerUsage")
    return _value("power_mw")


def nvmlDeviceGetEnforcedPowerLimit(handle: Any) -> int:
    _call("nvmlDeviceGetEnforcedPowerLimit")
    return _value("power_limit_mw")


def nvmlDeviceGetPowerManagementDefaultLimit(handle: Any) -> int:
    _call("nvmlDeviceGetPowerManagementDefaultLimit")
    return CONFIG["power_default_limit_mw"]


def nvmlDeviceGetTotalEnergyConsumption(handle: Any) -> int:
    _call("nvmlDeviceGetTotalEnergyConsumption")
    model = CONFIG["energy_model"]
    if model:
        wall, cpu = time.monotonic() - _START[0], time.process_time() - _START[1]
        return int(CONFIG["energy_mj"] + 1000 * (model["idle_w"] * wall + model["busy_w"] * cpu))
    return _value("energy_mj")


def nvmlDeviceGetClockInfo(handle: Any, clock: int) -> int:
    _call("nvmlDeviceGetClockInfo")
    return _value("sm_mhz" if clock == NVML_CLOCK_SM else "mem_mhz")


def nvmlDeviceGetCurrentClocksEventReasons(handle: Any) -> int:
    _call("nvmlDeviceGetCurrentClocksEventReasons")
    return _value("reasons")


def nvmlDeviceGetPcieThroughput(handle: Any, counter: int) -> int:
    _call("nvmlDeviceGetPcieThroughput")
    return _value("pcie_tx_kbs" if counter == NVML_PCIE_UTIL_TX_BYTES else "pcie_rx_kbs")


def nvmlDeviceGetPersistenceMode(handle: Any) -> int:
    _call("nvmlDeviceGetPersistenceMode")
    return CONFIG["persistence"]


def nvmlDeviceGetMigMode(handle: Any) -> list[int]:
    _call("nvmlDeviceGetMigMode")
    return list(CONFIG["mig"])


def nvmlDeviceGetEccMode(handle: Any) -> list[int]:
    _call("nvmlDeviceGetEccMode")
    return list(CONFIG["ecc"])


def nvmlDeviceGetApplicationsClock(handle: Any, clock: int) -> int:
    _call("nvmlDeviceGetApplicationsClock")
    return CONFIG["app_sm_mhz" if clock == NVML_CLOCK_SM else "app_mem_mhz"]


def nvmlDeviceGetMaxClockInfo(handle: Any, clock: int) -> int:
    _call("nvmlDeviceGetMaxClockInfo")
    return CONFIG["max_sm_mhz" if clock == NVML_CLOCK_SM else "max_mem_mhz"]


def nvmlDeviceGetCurrPcieLinkGeneration(handle: Any) -> int:
    _call("nvmlDeviceGetCurrPcieLinkGeneration")
    return CONFIG["pcie_gen"]


def nvmlDeviceGetCurrPcieLinkWidth(handle: Any) -> int:
    _call("nvmlDeviceGetCurrPcieLinkWidth")
    return CONFIG["pcie_width"]
