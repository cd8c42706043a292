"""A measurement window's GPU figures, from its samples (common/gpu.py), and what follows with the served rate.

Energy comes from NVML's total-energy counter (mJ since the driver loaded, Volta and newer),
read at every sample: the energy over the samples' span is the counter's growth, and its mean
power is that energy over the span. The counter updates every 20-100 ms, so a span of T
seconds is uncertain by up to ~0.1 s of power (2% of a 5 s window). A counter that goes back
(driver reload, GPU reset) drops that interval from both energy and time; a 64-bit wrap is
unwrapped. Without the counter, power samples are averaged instead (`power_basis`).

The idle baseline is the GPU's power with nothing to do, measured by the client for
IDLE_BASELINE_S just before the window (the same counter over that second): energy per
request, per sample and samples per joule count the power above it, the energy the work cost.
Figures the GPU does not report are None, with the reason under `unsupported`; never zero.
"""

from __future__ import annotations

from typing import Any

IDLE_BASELINE_S = 1.0
COUNTER_WRAP = 2**64
# Clocks-event (throttle) reasons (nvml.h nvmlClocksEventReason*). These lower clocks below
# what the work asks for; the others (GpuIdle, ApplicationsClocksSetting, SyncBoost,
# DisplayClockSetting) do not count as throttling.
THROTTLE_REASONS = {
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
}
THROTTLE_MASK = sum(THROTTLE_REASONS)
MIB = 1024.0  # NVML's PCIe "KB/s" -> MiB/s


def reason_names(mask: int) -> list[str]:
    """The throttle reasons set in a clocks-event mask, by NVML's names."""
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


def energy_span(samples: list[dict[str, Any]]) -> tuple[float | None, float | None, int]:
    """(joules, seconds, counter resets) over consecutive samples that carry the energy counter."""
    points = [(s["t_ns"], s["energy_mj"]) for s in samples if s.get("energy_mj") is not None and "t_ns" in s]
    joules = seconds = 0.0
    resets = 0
    for (t0, e0), (t1, e1) in zip(points, points[1:]):
        if t1 <= t0:
            continue
        delta = e1 - e0
        if delta < 0:
            if e0 > COUNTER_WRAP / 2:  # an unsigned 64-bit counter wrapped
                delta += COUNTER_WRAP
            else:  # reset (driver reload, GPU reset): this interval's energy is unknown
                resets += 1
                continue
        joules += delta / 1e3
        seconds += (t1 - t0) / 1e9
    if seconds <= 0:
        return None, None, resets
    return joules, seconds, resets


def mean_power(samples: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """Mean power over the samples' span: from the energy counter, else from power samples."""
    joules, seconds, _ = energy_span(samples)
    if joules is not None and seconds:
        return joules / seconds, "energy counter"
    power = [s["power_w"] for s in samples if s.get("power_w") is not None]
    return (_mean(power), "power samples") if power else (None, None)


def summarise(samples: list[dict[str, Any]], idle: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The window's figures from its samples; `idle`: samples taken just before it, with the GPU idle."""
    unsupported: dict[str, str] = {}
    for s in samples:
        unsupported.update(s.get("unsupported") or {})
    joules, span, resets = energy_span(samples)
    power_w, basis = mean_power(samples)
    idle_w, idle_basis = mean_power(idle or [])
    out: dict[str, Any] = {
        "samples": len(samples),
        "util_mean": _mean(_values(samples, "util_pct")),
        "util_max": _max(_values(samples, "util_pct")),
        "mem_peak_bytes": _max(_values(samples, "mem_used_bytes")),
        "mem_used_mean_bytes": _mean(_values(samples, "mem_used_bytes")),
        "mem_total_bytes": _max(_values(samples, "mem_total_bytes")),
        "power_mean_w": _mean(_values(samples, "power_w")),
        "power_max_w": _max(_values(samples, "power_w")),
        "power_limit_w": _last(_values(samples, "power_limit_w")),
        "sm_clock_mean_mhz": _mean(_values(samples, "sm_clock_mhz")),
        "sm_clock_min_mhz": _min(_values(samples, "sm_clock_mhz")),
        "mem_clock_mean_mhz": _mean(_values(samples, "mem_clock_mhz")),
        "mem_clock_min_mhz": _min(_values(samples, "mem_clock_mhz")),
        "energy_j": joules,
        "energy_span_s": span,
        "energy_counter_resets": resets,
        "energy_power_w": power_w,  # mean power over the window: what the per-request figures use
        "power_basis": basis,
        "idle_power_w": idle_w,
        "idle_basis": idle_basis,
        "pcie_tx_mean_mibs": _scaled(_mean(_values(samples, "pcie_tx_kbs"))),
        "pcie_tx_max_mibs": _scaled(_max(_values(samples, "pcie_tx_kbs"))),
        "pcie_rx_mean_mibs": _scaled(_mean(_values(samples, "pcie_rx_kbs"))),
        "pcie_rx_max_mibs": _scaled(_max(_values(samples, "pcie_rx_kbs"))),
        **throttling(samples),
        "unsupported": unsupported,
    }
    if idle is not None and idle_w is None:
        unsupported.setdefault("idle_power_w", "no energy counter or power samples before the window")
    return out


def throttling(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether, when and why the clocks were held down in the window: None when the GPU does not say.

    `throttled_windows`: each run of consecutive samples with a throttle reason, as seconds from
    the window's first sample (the reasons are read at each sample, so a window spans the samples
    that saw it).
    """
    timed = [(s["t_ns"], s["clocks_event_reasons"]) for s in samples
             if s.get("clocks_event_reasons") is not None and "t_ns" in s]
    if not timed:
        return {"throttled": None, "throttle_reasons": [], "throttled_samples": 0, "throttled_windows": []}
    t0 = samples[0].get("t_ns", timed[0][0])
    windows: list[dict[str, Any]] = []
    open_window: dict[str, Any] | None = None
    for t, mask in timed:
        names = reason_names(int(mask))
        if not names:
            open_window = None
            continue
        at = round((t - t0) / 1e9, 3)
        if open_window is None:
            open_window = {"start_s": at, "end_s": at, "reasons": names}
            windows.append(open_window)
        else:
            open_window["end_s"] = at
            open_window["reasons"] = sorted(set(open_window["reasons"]) | set(names))
    reasons = sorted({r for w in windows for r in w["reasons"]})
    throttled_samples = sum(1 for _, m in timed if int(m) & THROTTLE_MASK)
    return {"throttled": bool(windows), "throttle_reasons": reasons, "throttled_samples": throttled_samples,
            "throttled_windows": windows}


def efficiency(gpu: dict[str, Any], throughput: float | None, batch: int | None) -> dict[str, Any]:
    """Energy per request and per sample, and samples per joule, above the idle baseline (None when unknown).

    From mean powers, not window energies: samples/J = (samples/s) / (W above idle), so the
    figures hold whatever the exact bounds of the sampled span and the measured phase.
    `samples_per_joule_gross` counts the whole board power instead.
    """
    power, idle = gpu.get("energy_power_w"), gpu.get("idle_power_w")
    out: dict[str, Any] = {"energy_per_request_j": None, "energy_per_sample_j": None, "samples_per_joule": None,
                           "samples_per_joule_gross": None}
    if power is None or not throughput:
        return out
    out["samples_per_joule_gross"] = throughput / power if power > 0 else None
    net = power - idle if idle is not None else None
    if net is not None and net > 0:
        out["energy_per_sample_j"] = net / throughput
        out["energy_per_request_j"] = net / throughput * (batch or 1)
        out["samples_per_joule"] = throughput / net
    return out


def merge_devices(devices: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several GPUs serving one run together: powers add, throttling is any of them."""
    def total(key: str) -> float | None:
        values = [d.get(key) for d in devices]
        return None if not values or any(v is None for v in values) else sum(values)

    # Which server's GPU each window was on, when there are several.
    windows = [{**w, "endpoint": d.get("endpoint")} if len(devices) > 1 else dict(w)
               for d in devices for w in d.get("throttled_windows") or []]
    known = [d.get("throttled") for d in devices if d.get("throttled") is not None]
    return {
        "energy_j": total("energy_j"),
        "energy_span_s": _max([d["energy_span_s"] for d in devices if d.get("energy_span_s") is not None]),
        "energy_counter_resets": sum(d.get("energy_counter_resets") or 0 for d in devices),
        "energy_power_w": total("energy_power_w"),
        "idle_power_w": total("idle_power_w"),
        "power_basis": ",".join(sorted({d["power_basis"] for d in devices if d.get("power_basis")})) or None,
        "idle_basis": ",".join(sorted({d["idle_basis"] for d in devices if d.get("idle_basis")})) or None,
        "power_max_w": _max([d["power_max_w"] for d in devices if d.get("power_max_w") is not None]),
        "power_limit_w": total("power_limit_w"),
        "sm_clock_mean_mhz": _mean([d["sm_clock_mean_mhz"] for d in devices if d.get("sm_clock_mean_mhz")]),
        "sm_clock_min_mhz": _min([d["sm_clock_min_mhz"] for d in devices if d.get("sm_clock_min_mhz")]),
        "mem_clock_mean_mhz": _mean([d["mem_clock_mean_mhz"] for d in devices if d.get("mem_clock_mean_mhz")]),
        "pcie_tx_mean_mibs": total("pcie_tx_mean_mibs"),
        "pcie_rx_mean_mibs": total("pcie_rx_mean_mibs"),
        "mem_used_mean_bytes": total("mem_used_mean_bytes"),
        "throttled": any(known) if known else None,
        "throttle_reasons": sorted({r for d in devices for r in d.get("throttle_reasons") or []}),
        "throttled_windows": windows,
        "unsupported": {k: v for d in devices for k, v in (d.get("unsupported") or {}).items()},
    }


def _values(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for s in samples if s.get(key) is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


def _min(values: list[float]) -> float | None:
    return min(values) if values else None


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def _scaled(kbs: float | None) -> float | None:
    return None if kbs is None else kbs / MIB
