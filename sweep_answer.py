"""The answer a sweep shows: the best configuration under the objective, the Pareto front, the curves.

Works on the records a sweep writes (one per configuration: its settings and
its repeats, each a fixed-load run or a peak search) and draws:
- `pareto.png` (`plot_pareto`): throughput against p99 latency, one point per configuration
  (mean, error bars one standard deviation over repeats), the non-dominated
  ones joined: no other configuration has both more throughput and a lower p99;
- `curves.png` (`plot_curves`): throughput and latency across the request-rate or concurrency
  axis (fixed-load sweeps), or across the probes of each peak search, one
  colour per configuration in every panel.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from client.compare import record_repeats, varying_keys

T = TypeVar("T")
SUMMARY_FIGURES = ("peak_rate", "throughput", "p99_latency", "gpu_util", "gpu_mem_peak_bytes")


@dataclass
class ConfigStats:
    """One configuration's figures over its repeats."""

    label: str
    settings: dict[str, Any]
    repeats: list[dict[str, Any]]
    probes: list[list[dict[str, Any]]] = field(default_factory=list)  # peak mode: each repeat's probes

    def values(self, figure: str) -> list[float]:
        return [r[figure] for r in self.repeats if isinstance(r.get(figure), (int, float))]

    def mean(self, figure: str) -> float | None:
        values = self.values(figure)
        return statistics.fmean(values) if values else None

    def std(self, figure: str) -> float:
        values = self.values(figure)
        return statistics.stdev(values) if len(values) > 1 else 0.0


def configuration_stats(records: list[dict[str, Any]]) -> list[ConfigStats]:
    """The completed configurations of a sweep, with their repeats' figures."""
    out = []
    for rec in records:
        if rec.get("status") != "ok" or not rec.get("runs"):
            continue
        probes = [run["peak"]["probes"] for run in rec["runs"] if "peak" in run]
        out.append(ConfigStats(rec.get("label") or rec["key"], dict(rec.get("config", {})), record_repeats(rec), probes))
    return out


def pareto_front(items: Sequence[T], throughput: Callable[[T], float | None],
                 latency: Callable[[T], float | None]) -> list[T]:
    """The items no other item dominates (at least the throughput and at most the latency, one strictly).

    Items missing either figure are left out; equal items do not dominate each other. Input order is kept.
    """
    known = [(item, throughput(item), latency(item)) for item in items]
    known = [(item, t, lat) for item, t, lat in known if t is not None and lat is not None]

    def dominated(t: float, lat: float) -> bool:
        return any(t2 >= t and l2 <= lat and (t2 > t or l2 < lat) for _, t2, l2 in known)

    return [item for item, t, lat in known if not dominated(t, lat)]


def best_under_slo(stats: list[ConfigStats], slo_ms: float | None, mode: str = "fixed") -> ConfigStats | None:
    """The configuration with the most samples/s whose mean p99 meets the objective (every one, without one).

    In a peak sweep each configuration's throughput is its peak rate in samples/s, which meets the
    objective (on the searched percentile) by construction; a configuration without a peak in every
    repeat is not a candidate.
    """
    candidates = []
    for s in stats:
        p99, throughput = s.mean("p99_latency"), s.mean("throughput")
        if throughput is None or len(s.values("throughput")) < len(s.repeats):
            continue
        if mode != "peak" and slo_ms is not None and (p99 is None or p99 * 1e3 > slo_ms):
            continue
        candidates.append((throughput, s))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _mean_std(s: ConfigStats, figure: str, scale: float = 1.0, fmt: str = ".4g", unit: str = "") -> str:
    mean = s.mean(figure)
    if mean is None:
        return "n/a"
    text = f"{mean * scale:{fmt}} ± {s.std(figure) * scale:.2g}" if len(s.values(figure)) > 1 else f"{mean * scale:{fmt}}"
    return text + unit


def answer_markdown(stats: list[ConfigStats], slo_ms: float | None, mode: str, percentile: float = 99.0) -> str:
    """The summary's answer: the best configuration under the objective, then every configuration's figures."""
    best = best_under_slo(stats, slo_ms, mode)
    front = {id(s) for s in pareto_front(stats, lambda s: s.mean("throughput"), lambda s: s.mean("p99_latency"))}
    objective = f"p{percentile:g} <= {slo_ms:g} ms" if slo_ms is not None else "no latency objective given"
    lines = [f"## The answer ({objective})", ""]
    if best is None:
        lines.append("No configuration met the objective in every repeat.")
    else:
        rate = f"peak {_mean_std(best, 'peak_rate')} requests/s, " if mode == "peak" else ""
        lines.append(
            f"Best: **{best.label}**: {rate}{_mean_std(best, 'throughput')} samples/s, p99 "
            f"{_mean_std(best, 'p99_latency', 1e3)} ms, GPU utilisation {_mean_std(best, 'gpu_util', unit=' %')}, "
            f"GPU memory {_mean_std(best, 'gpu_mem_peak_bytes', 1e-6, unit=' MB')} (mean ± std over {len(best.repeats)} "
            "repeats). GPU utilisation is NVML's: the share of time a kernel was running, not SM occupancy."
        )
    header = ["configuration", *(["peak (requests/s)"] if mode == "peak" else []), "throughput (samples/s)",
              "p99 (ms)", "GPU util (%)", "GPU memory (MB)", "repeats", "Pareto"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in stats:
        cells = [s.label, *([_mean_std(s, "peak_rate")] if mode == "peak" else []), _mean_std(s, "throughput"),
                 _mean_std(s, "p99_latency", 1e3), _mean_std(s, "gpu_util"), _mean_std(s, "gpu_mem_peak_bytes", 1e-6),
                 str(len(s.repeats)), "yes" if id(s) in front else ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# -- plots ------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(count: int) -> list[Any]:
    """One distinct colour per configuration (tab10, then tab20, then a sampled colormap)."""
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["viridis"](i / max(1, count - 1)) for i in range(count)]


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write atomically and close the figure (closed even when writing fails)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=80)
        tmp.replace(path)
        return path
    finally:
        _pyplot().close(fig)


def plot_pareto(stats: list[ConfigStats], path: Path, slo_ms: float | None = None) -> Path | None:
    """Throughput against p99 across configurations, the Pareto front joined."""
    shown = [s for s in stats if s.mean("throughput") is not None and s.mean("p99_latency") is not None]
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, colour in zip(shown, _colours(len(shown))):
        ax.errorbar(s.mean("p99_latency") * 1e3, s.mean("throughput"), xerr=s.std("p99_latency") * 1e3,
                    yerr=s.std("throughput"), fmt="o", color=colour, capsize=3, label=s.label)
    front = sorted(pareto_front(shown, lambda s: s.mean("throughput"), lambda s: s.mean("p99_latency")),
                   key=lambda s: s.mean("p99_latency"))
    ax.plot([s.mean("p99_latency") * 1e3 for s in front], [s.mean("throughput") for s in front], "k--", lw=1,
            label="Pareto front")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="red", lw=1, ls=":", label=f"objective {slo_ms:g} ms")
    ax.set(xlabel="p99 latency (ms)", ylabel="throughput (samples/s)", title="Throughput vs p99 per configuration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def curve_groups(stats: list[ConfigStats], axis: str) -> dict[str, list[ConfigStats]]:
    """Configurations that differ only in `axis`, by a label of their other varying settings."""
    varying = varying_keys([s.settings for s in stats]) - {axis}
    groups: dict[str, list[ConfigStats]] = {}
    for s in stats:
        label = " ".join(f"{n}={s.settings.get(n)}" for n in sorted(varying)) or "all"
        groups.setdefault(label, []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: s.settings.get(axis) or 0)
    return groups


def plot_curves(stats: list[ConfigStats], axis: str | None, path: Path, slo_ms: float | None = None) -> Path | None:
    """Throughput and latency across the rate or concurrency axis, or across each peak search's probes."""
    peak = any(s.probes for s in stats)
    if not stats or (axis is None and not peak):
        return None
    plt = _pyplot()
    fig, (ax_tp, ax_lat, ax_tl) = plt.subplots(1, 3, figsize=(14, 4))
    if peak:
        _peak_curves(stats, (ax_tp, ax_lat, ax_tl))
        xlabel = "offered rate (requests/s)"
    else:
        _axis_curves(curve_groups(stats, axis), axis, (ax_tp, ax_lat, ax_tl))
        xlabel = axis.replace("_", " ")
    if slo_ms is not None:
        ax_lat.axhline(slo_ms, color="red", lw=1, ls=":")
        ax_tl.axhline(slo_ms, color="red", lw=1, ls=":")
    ax_tp.set(xlabel=xlabel, ylabel="throughput (samples/s)", title="Throughput")
    ax_lat.set(xlabel=xlabel, ylabel="latency (ms)", title="p99 latency" if not peak else "searched percentile's latency")
    if peak:  # probes past the knee reach many times the objective: a log axis keeps the objective readable
        ax_lat.set_yscale("log")
        ax_tl.set_yscale("log")
    ax_tl.set(xlabel="throughput (samples/s)", ylabel="latency (ms)", title="Latency vs throughput")
    for ax in (ax_tp, ax_lat, ax_tl):
        ax.grid(True, alpha=0.3)
    ax_tp.legend(fontsize=7)
    return _save(fig, path)


def _axis_curves(groups: dict[str, list[ConfigStats]], axis: str, axes: tuple[Any, Any, Any]) -> None:
    ax_tp, ax_lat, ax_tl = axes
    for (label, members), colour in zip(groups.items(), _colours(len(groups))):
        xs = [m.settings.get(axis) for m in members]
        tp = [m.mean("throughput") for m in members]
        lat = [(m.mean("p99_latency") or 0.0) * 1e3 for m in members]
        tp_err = [m.std("throughput") for m in members]
        lat_err = [m.std("p99_latency") * 1e3 for m in members]
        style = {"color": colour, "capsize": 3, "marker": "o"}
        ax_tp.errorbar(xs, tp, yerr=tp_err, label=label, **style)
        ax_lat.errorbar(xs, lat, yerr=lat_err, **style)
        ax_tl.errorbar(tp, lat, xerr=tp_err, yerr=lat_err, **style)


def _peak_curves(stats: list[ConfigStats], axes: tuple[Any, Any, Any]) -> None:
    """Each search's probes as points, and the peak with error bars over repeats, one colour per configuration."""
    ax_tp, ax_lat, ax_tl = axes
    for s, colour in zip(stats, _colours(len(stats))):
        for i, probes in enumerate(s.probes):
            ordered = sorted(probes, key=lambda p: p["rate"])
            rates = [p["rate"] for p in ordered]
            tp = [p["throughput"] for p in ordered]
            lat = [(p["latency_s"] or 0.0) * 1e3 for p in ordered]
            ax_tp.plot(rates, tp, "o:", color=colour, alpha=0.6, label=s.label if i == 0 else None)
            ax_lat.plot(rates, lat, "o:", color=colour, alpha=0.6)
            ax_tl.plot(tp, lat, "o", color=colour, alpha=0.6)  # no line: probes past the knee deliver less
        if s.mean("peak_rate") is not None:
            ax_lat.errorbar(s.mean("peak_rate"), (s.mean("p99_latency") or 0.0) * 1e3, xerr=s.std("peak_rate"),
                            yerr=s.std("p99_latency") * 1e3, fmt="*", ms=12, color=colour, capsize=3)
