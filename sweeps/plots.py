"""Every figure a sweep draws; each written by `save`, coloured by `colours`.

- throughput_latency.png: throughput and latency against batch size with error
  bars (± one standard deviation over the repeats), one colour per
  configuration in every panel;
- latency_cdf.png: each configuration's latency by percentile, from the merged
  histograms of all its repeats (x: the percentile on a log(1 / (1 - p)) axis,
  so the tail gets the room);
- pareto.png: throughput against p99 latency, one point per configuration
  (mean, error bars one standard deviation over repeats), the Pareto front joined;
- curves.png: throughput and latency across the request-rate or concurrency
  axis (fixed-load sweeps), or across the probes of each peak search.

Titles name the model, device, image size and host. The first two are built by
`*_figure` functions returning the figure, so a test can inspect what was drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sweeps.records import Configuration, SweepRecord, mean_and_std, sweep_title, varying_keys
from sweeps.report import configuration_front

PLOT_DPI = 130
# The answer's figures: a lower resolution keeps pareto.png and curves.png small enough to commit as samples.
ANSWER_DPI = 80
PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(count: int) -> list[Any]:
    """One distinct colour per line or configuration (tab10, then tab20, then a sampled colormap)."""
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["viridis"](i / max(1, count - 1)) for i in range(count)]


def save(fig: Any, path: Path, dpi: int = PLOT_DPI) -> Path:
    """Lay out, write atomically and close the figure (closed even when writing fails)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
        return path
    finally:
        pyplot().close(fig)


# -- against batch size: throughput_latency.png and latency_cdf.png --------------------------


def _groups(records: Sequence[SweepRecord]) -> dict[tuple, list[SweepRecord]]:
    """Configurations that differ only by batch size: one line (one colour) each."""
    groups: dict[tuple, list[SweepRecord]] = {}
    for r in records:
        c = r.config
        groups.setdefault((c["compile"], c["concurrency"], c["num_workers"]), []).append(r)
    return dict(sorted(groups.items()))


def _group_label(key: tuple) -> str:
    compile_, concurrency, workers = key
    return f"compile {'on' if compile_ else 'off'}, c{concurrency}, w{workers}"


def _mean_and_err(rows: list[dict], key: str, scale: float = 1.0) -> tuple[float, float]:
    known = mean_and_std([r[key] * scale if r[key] is not None else None for r in rows])
    return known if known is not None else (float("nan"), 0.0)


def throughput_latency_figure(records: Sequence[SweepRecord], title: str) -> Any:
    """Throughput and latency against batch size, ± one standard deviation over the repeats."""
    groups = _groups(records)
    fig, (ax_tp, ax_lat) = pyplot().subplots(1, 2, figsize=(11, 4.5))
    for (key, recs), colour in zip(groups.items(), colours(len(groups))):
        recs = sorted(recs, key=lambda r: r.config["batch_size"])
        xs = [r.config["batch_size"] for r in recs]
        summaries = [r.summaries() for r in recs]
        label = _group_label(key)
        tp = [_mean_and_err(s, "throughput") for s in summaries]
        ax_tp.errorbar(xs, [m for m, _ in tp], yerr=[e for _, e in tp], marker="o", capsize=3, color=colour,
                       label=label)
        for metric, style, name in (("average_latency", "-", "mean"), ("p99_latency", "--", "p99")):
            lat = [_mean_and_err(s, metric, 1e3) for s in summaries]
            ax_lat.errorbar(xs, [m for m, _ in lat], yerr=[e for _, e in lat], marker="o" if style == "-" else "x",
                            ls=style, capsize=3, color=colour, label=f"{name}, {label}")
    ax_tp.set(xlabel="batch size", ylabel="throughput (samples/s)", title="Throughput vs batch size", xscale="log")
    ax_lat.set(xlabel="batch size", ylabel="latency (ms)", title="Latency vs batch size (mean, p99)", xscale="log")
    batches = sorted({r.config["batch_size"] for r in records})
    for ax in (ax_tp, ax_lat):
        # Label the batch sizes themselves: log-scale minor labels (2x10^0...) read badly.
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}; error bars: ± 1 std over repeats", fontsize=10)
    fig.tight_layout()
    return fig


def percentile_figure(records: Sequence[SweepRecord], title: str) -> Any:
    """Latency against percentile, x = 1 / (1 - p) on a log axis, from each configuration's merged repeats."""
    groups = _groups(records)
    styles = ("-", "--", "-.", ":")
    batches = sorted({r.config["batch_size"] for r in records})
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    top = 2.0
    for (key, recs), colour in zip(groups.items(), colours(len(groups))):
        for rec in sorted(recs, key=lambda r: r.config["batch_size"]):
            hist = rec.merged_latency()
            points = [(value, fraction) for value, fraction in hist.cdf() if fraction < 1.0]
            if not points:
                continue
            xs = [1.0 / (1.0 - f) for _, f in points]
            top = max(top, xs[-1])
            batch = rec.config["batch_size"]
            ax.plot(xs, [v * 1e3 for v, _ in points], color=colour, ls=styles[batches.index(batch) % 4],
                    drawstyle="steps-post", label=f"b{batch}, {_group_label(key)} ({hist.count} requests)")
    ticks = [p for p in PERCENTILE_TICKS if 1.0 / (1.0 - p / 100) <= top * 1.01]
    ax.set_xscale("log")
    ax.set_xticks([1.0 / (1.0 - p / 100) for p in ticks], [f"{p:g}" for p in ticks])
    ax.minorticks_off()
    ax.set(xlabel="percentile (%)", ylabel="latency (ms)", title=f"Latency by percentile, all repeats\n{title}")
    ax.title.set_fontsize(10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(records: Sequence[SweepRecord], results_dir: Path, host: str) -> list[Path]:
    """Write the plots of the configurations that ran; returns the files written."""
    ok = [r for r in records if r.ok and r.runs]
    if not ok:
        return []
    title = sweep_title(ok, host)
    return [save(build(ok, title), results_dir / name) for name, build in
            (("throughput_latency.png", throughput_latency_figure), ("latency_cdf.png", percentile_figure))]


# -- across configurations: pareto.png and curves.png --------------------------------------


def plot_pareto(stats: list[Configuration], path: Path, slo_ms: float | None = None) -> Path | None:
    """Throughput against p99 across configurations, the Pareto front joined."""
    shown = [s for s in stats if s.mean("throughput") is not None and s.mean("p99_latency") is not None]
    if not shown:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for s, colour in zip(shown, colours(len(shown))):
        ax.errorbar(s.mean("p99_latency") * 1e3, s.mean("throughput"), xerr=s.std("p99_latency") * 1e3,
                    yerr=s.std("throughput"), fmt="o", color=colour, capsize=3, label=s.label)
    front = sorted(configuration_front(shown), key=lambda s: s.mean("p99_latency"))
    ax.plot([s.mean("p99_latency") * 1e3 for s in front], [s.mean("throughput") for s in front], "k--", lw=1,
            label="Pareto front")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="red", lw=1, ls=":", label=f"objective {slo_ms:g} ms")
    ax.set(xlabel="p99 latency (ms)", ylabel="throughput (samples/s)", title="Throughput vs p99 per configuration")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path, ANSWER_DPI)


def curve_groups(stats: list[Configuration], axis: str) -> dict[str, list[Configuration]]:
    """Configurations that differ only in `axis`, by a label of their other varying settings."""
    varying = varying_keys([s.settings for s in stats]) - {axis}
    groups: dict[str, list[Configuration]] = {}
    for s in stats:
        label = " ".join(f"{n}={s.settings.get(n)}" for n in sorted(varying)) or "all"
        groups.setdefault(label, []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: s.settings.get(axis) or 0)
    return groups


def plot_curves(stats: list[Configuration], axis: str | None, path: Path, slo_ms: float | None = None) -> Path | None:
    """Throughput and latency across the rate or concurrency axis, or across each peak search's probes."""
    peak = any(s.probes for s in stats)
    if not stats or (axis is None and not peak):
        return None
    fig, (ax_tp, ax_lat, ax_tl) = pyplot().subplots(1, 3, figsize=(14, 4))
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
    return save(fig, path, ANSWER_DPI)


def _axis_curves(groups: dict[str, list[Configuration]], axis: str, axes: tuple[Any, Any, Any]) -> None:
    ax_tp, ax_lat, ax_tl = axes
    for (label, members), colour in zip(groups.items(), colours(len(groups))):
        xs = [m.settings.get(axis) for m in members]
        tp = [m.mean("throughput") for m in members]
        lat = [(m.mean("p99_latency") or 0.0) * 1e3 for m in members]
        tp_err = [m.std("throughput") for m in members]
        lat_err = [m.std("p99_latency") * 1e3 for m in members]
        style = {"color": colour, "capsize": 3, "marker": "o"}
        ax_tp.errorbar(xs, tp, yerr=tp_err, label=label, **style)
        ax_lat.errorbar(xs, lat, yerr=lat_err, **style)
        ax_tl.errorbar(tp, lat, xerr=tp_err, yerr=lat_err, **style)


def _peak_curves(stats: list[Configuration], axes: tuple[Any, Any, Any]) -> None:
    """Each search's probes as points, and the peak with error bars over repeats, one colour per configuration."""
    ax_tp, ax_lat, ax_tl = axes
    for s, colour in zip(stats, colours(len(stats))):
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
