"""A result's GPU telemetry as CSV columns and report lines (docs/metrics.md defines each figure).

The figures come from the resource monitor's window (client/monitor.py, common/gpu_window.py)
and the servers' INFO (`gpu_environment`, common/gpu_env.py); energy per request and per
sample, and samples per joule, follow from the served rate (common/gpu_window.efficiency).
A figure the GPU does not report is empty in the CSV and named in the report, never 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.gpu_env import summary as environment_columns
from common.gpu_window import efficiency

if TYPE_CHECKING:
    from client.results import RunResult

MAX_THROTTLED_SHOWN = 5


def gpu_environment(r: RunResult) -> dict[str, Any] | None:
    """The first server's GPU environment as its INFO reported it (None for a CPU server)."""
    for info in r.servers:
        env = info.get("gpu_environment")
        if env:
            return env
    return None


def gpu_columns(r: RunResult) -> dict[str, Any]:
    """The telemetry's CSV columns, after every other column (they came later)."""
    gpu = r.gpu or {}
    windows = gpu.get("throttled_windows") or []
    return {
        "gpu_power_max_w": gpu.get("power_max_w"),
        "gpu_power_limit_w": gpu.get("power_limit_w"),
        "gpu_energy_power_w": gpu.get("energy_power_w"),
        "gpu_idle_power_w": gpu.get("idle_power_w"),
        "gpu_energy_j": gpu.get("energy_j"),
        "gpu_energy_span_s": gpu.get("energy_span_s"),
        **efficiency(gpu, r.throughput, r.batch_size),
        "gpu_sm_clock_mean_mhz": gpu.get("sm_clock_mean_mhz"),
        "gpu_sm_clock_min_mhz": gpu.get("sm_clock_min_mhz"),
        "gpu_mem_clock_mean_mhz": gpu.get("mem_clock_mean_mhz"),
        "gpu_throttled": gpu.get("throttled"),
        "gpu_throttle_reasons": ",".join(gpu.get("throttle_reasons") or []) or None,
        "gpu_throttled_windows": len(windows) if gpu.get("throttled") is not None else None,
        "gpu_pcie_tx_mean_mibs": gpu.get("pcie_tx_mean_mibs"),
        "gpu_pcie_rx_mean_mibs": gpu.get("pcie_rx_mean_mibs"),
        "gpu_mem_used_mean_bytes": gpu.get("mem_used_mean_bytes"),
        "gpu_unsupported": ";".join(sorted(gpu.get("unsupported") or {})) or None,
        **environment_columns(gpu_environment(r)),
    }


def gpu_lines(r: RunResult) -> list[str]:
    """Power and energy, clocks and PCIe, throttling, what was not reported, and the environment."""
    gpu = r.gpu or {}
    if gpu.get("util_mean") is None:
        return []
    lines = [_power_line(r, gpu), _clocks_line(gpu), _throttle_line(gpu)]
    unsupported = gpu.get("unsupported") or {}
    if unsupported:
        lines.append("GPU figures not reported: " + "; ".join(f"{k} ({v})" for k, v in sorted(unsupported.items())))
    env = gpu_environment(r)
    if env:
        lines.append(_environment_line(env))
    return [line for line in lines if line]


def _power_line(r: RunResult, gpu: dict[str, Any]) -> str:
    eff = efficiency(gpu, r.throughput, r.batch_size)
    parts = [f"GPU power: {_w(gpu.get('energy_power_w'))} mean over the window ({gpu.get('power_basis') or 'unknown'}),"
             f" max {_w(gpu.get('power_max_w'))}, limit {_w(gpu.get('power_limit_w'))};"
             f" idle {_w(gpu.get('idle_power_w'))} (before the window)"]
    if gpu.get("energy_j") is not None:
        parts.append(f"energy {gpu['energy_j']:.1f} J over {gpu['energy_span_s']:.2f} s of samples")
    if eff["samples_per_joule"] is not None:
        parts.append(f"above idle: {eff['energy_per_request_j'] * 1e3:.2f} mJ/request,"
                     f" {eff['energy_per_sample_j'] * 1e3:.3f} mJ/sample, {eff['samples_per_joule']:.1f} samples/J")
    elif eff["samples_per_joule_gross"] is not None:
        parts.append("above idle: n/a (no idle baseline, or no power above it)")
    if eff["samples_per_joule_gross"] is not None:
        parts.append(f"{eff['samples_per_joule_gross']:.1f} samples/J counting idle")
    return "; ".join(parts)


def _clocks_line(gpu: dict[str, Any]) -> str:
    return (f"GPU clocks: SM {_mhz(gpu.get('sm_clock_mean_mhz'))} mean (min {_mhz(gpu.get('sm_clock_min_mhz'))}),"
            f" memory {_mhz(gpu.get('mem_clock_mean_mhz'))}; PCIe TX {_mibs(gpu.get('pcie_tx_mean_mibs'))},"
            f" RX {_mibs(gpu.get('pcie_rx_mean_mibs'))} (means); memory used {_mib(gpu.get('mem_used_mean_bytes'))}"
            f" mean, {_mib(gpu.get('mem_peak_bytes'))} peak")


def _throttle_line(gpu: dict[str, Any]) -> str:
    if gpu.get("throttled") is None:
        return "GPU throttling: not reported"
    windows = gpu.get("throttled_windows") or []
    if not windows:
        return "GPU throttling: none seen (clocks-event reasons at every sample)"
    shown = ", ".join(_window(w) for w in windows[:MAX_THROTTLED_SHOWN])
    more = f" and {len(windows) - MAX_THROTTLED_SHOWN} more" if len(windows) > MAX_THROTTLED_SHOWN else ""
    return (f"GPU THROTTLED ({', '.join(gpu.get('throttle_reasons') or [])}) in {len(windows)} window(s) of the"
            f" measurement: {shown}{more} (s from the window's first sample)")


def _window(w: dict[str, Any]) -> str:
    span = f"{w['start_s']:.2f}" if w["start_s"] == w["end_s"] else f"{w['start_s']:.2f}-{w['end_s']:.2f}"
    return f"{span} {'+'.join(w['reasons'])}" + (f" on {w['endpoint']}" if w.get("endpoint") else "")


def _environment_line(env: dict[str, Any]) -> str:
    c = environment_columns(env)
    n = {k: "n/a" if v is None else v for k, v in c.items()}
    return (f"GPU environment: {n['gpu_name']} {n['gpu_uuid']}, driver {n['gpu_driver']} (CUDA {n['gpu_cuda_driver']}),"
            f" power limit {_w(c['gpu_power_limit_w'])}, persistence {n['gpu_persistence_mode']},"
            f" MIG {n['gpu_mig_mode']}, ECC {n['gpu_ecc']}, application clocks {n['gpu_app_clocks_mhz']} MHz"
            f" (SM/memory), CPU governor {n['cpu_governor']}")


def _w(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} W"


def _mhz(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} MHz"


def _mibs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} MiB/s"


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:.0f} MiB"
