"""Every figure a sweep draws; each written by `save`, coloured by `colours`.

Every figure tells every configuration apart: a line's label names the settings
that vary between the sweep's configurations (records.varying_label, the
summary's columns), its colour is its own, and the title says what they all
share (records.sweep_title), so two models are two labelled lines, never one
title. A point is the mean over the repeats; its error bar spans the 5th to
95th percentile of the repeats (records.mean_and_spread): as lopsided as the
repeats are, and never past what they measured (never below zero).

- throughput_latency.png: throughput and latency against batch size, one line
  per configuration apart from its batch size;
- latency_cdf.png: each configuration's latency by percentile (x: p50, p90,
  p99, ... on a log(1 / (1 - p)) axis, so the tail gets the room), from the
  merged histograms of its repeats; with `per_repeat` (`sweep.py
  --cdf-per-repeat`) each repeat's own curve too, thin, in the same colour;
- pareto.png: throughput against latency, one point per configuration, the
  Pareto front joined and ringed (answer.md's figures: report.Objective);
- curves.png: throughput and latency across the request-rate or concurrency
  axis (fixed-load sweeps), or across the probes of each peak search, sorted
  by rate, with the objective drawn and named.

The `*_figure` functions return the figure, so a test can inspect what was drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.latency import LatencyStats
from sweeps.records import Configuration, SweepRecord, mean_and_spread, sweep_title, varying_keys, varying_label
from sweeps.report import Objective, configuration_front

PLOT_DPI = 130
# The answer's figures: a lower resolution keeps pareto.png and curves.png small enough to commit as samples.
ANSWER_DPI = 100
PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)
BARS = "points: mean over repeats; bars: 5th-95th percentile of the repeats"


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


Spread = tuple[float, float, float]  # (mean, below, above): records.mean_and_spread


def _spread(value: float | Spread | None) -> Spread | None:
    return value if isinstance(value, tuple) or value is None else (float(value), 0.0, 0.0)


def errorbars(ax: Any, xs: Sequence[float | Spread | None], ys: Sequence[float | Spread | None], **style: Any) -> Any:
    """Points at the means with bars to the repeats' 5th and 95th percentiles: each x and y a plain value or a
    spread (records.mean_and_spread), bars drawn for the spreads; a point missing either is left out."""
    points = [(x, y) for x, y in zip(map(_spread, xs), map(_spread, ys)) if x is not None and y is not None]
    if not points:
        return None

    def bars(axis: int) -> list[list[float]] | None:
        if not any(isinstance(v, tuple) and (v[1] or v[2]) for v in (xs if axis == 0 else ys)):
            return None
        return [[p[axis][1] for p in points], [p[axis][2] for p in points]]

    return ax.errorbar([x[0] for x, _ in points], [y[0] for _, y in points], xerr=bars(0), yerr=bars(1), capsize=3,
                       **style)


def integer_ticks(ax: Any, axis: str = "x") -> None:
    """Ticks at whole numbers only (a concurrency of 1.5 does not exist)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def log_y(ax: Any) -> None:
    """A log latency axis labelled in plain milliseconds at 1, 2 and 5 of each decade (100, 200, 500), not
    2 x 10^2, and without crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


# -- throughput_latency.png and latency_cdf.png ---------------------------------------------


def lines_along(records: Sequence[SweepRecord], along: str) -> dict[str, list[SweepRecord]]:
    """Configurations that differ only in `along`: one line (one colour) each, labelled by the other settings
    that vary in the sweep ('' when nothing else does), each line's members in order of `along`."""
    varying = varying_keys([r.config for r in records]) - {along}
    lines: dict[str, list[SweepRecord]] = {}
    for r in records:
        lines.setdefault(varying_label(r.config, varying), []).append(r)
    for members in lines.values():
        members.sort(key=lambda r: r.config.get(along) or 0)
    return lines


def _spreads(record: SweepRecord, key: str, scale: float = 1.0) -> tuple[float, float, float] | None:
    return mean_and_spread([row[key] * scale if row[key] is not None else None for row in record.summaries()])


def throughput_latency_figure(records: Sequence[SweepRecord], title: str) -> Any:
    """Throughput and latency (mean, p99) against batch size, one colour per configuration apart from batch."""
    lines = lines_along(records, "batch_size")
    fig, (ax_tp, ax_lat) = pyplot().subplots(1, 2, figsize=(12, 5))
    for (label, recs), colour in zip(lines.items(), colours(len(lines))):
        xs = [r.config["batch_size"] for r in recs]
        errorbars(ax_tp, xs, [_spreads(r, "throughput") for r in recs], marker="o", color=colour,
                  label=label or None)
        for metric, style, name in (("average_latency", "-", "mean"), ("p99_latency", "--", "p99")):
            errorbars(ax_lat, xs, [_spreads(r, metric, 1e3) for r in recs], marker="o" if style == "-" else "x",
                      ls=style, color=colour, label=f"{name}, {label}" if label else name)
    ax_tp.set(xlabel="batch size", ylabel="throughput (samples/s)", title="Throughput vs batch size", xscale="log")
    ax_lat.set(xlabel="batch size", ylabel="latency (ms)", title="Latency vs batch size (mean, p99)", xscale="log")
    batches = sorted({r.config["batch_size"] for r in records})
    for ax in (ax_tp, ax_lat):
        # Label the batch sizes themselves: log-scale minor labels (2x10^0...) read badly.
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}\n{BARS}", fontsize=10)
    return fig


def cdf_steps(hist: LatencyStats, right: float) -> tuple[list[float], list[float]]:
    """A histogram's latency (ms) by percentile as steps: x = 1 / (1 - p), each value drawn from the
    fraction below it onwards, and the largest to `right` (every percentile past the last step is the max)."""
    xs, ys, below = [], [], 0.0
    for value, fraction in hist.cdf():
        xs.append(1.0 / (1.0 - below))
        ys.append(value * 1e3)
        below = fraction
    if xs:
        xs.append(right)
        ys.append(ys[-1])
    return xs, ys


def percentile_figure(records: Sequence[SweepRecord], title: str, per_repeat: bool = False) -> Any:
    """Latency against named percentiles (p50, p90, p99, ...) on a log(1 / (1 - p)) axis, one colour per
    configuration: its repeats' histograms merged, and with `per_repeat` each repeat's own, thin."""
    varying = varying_keys([r.config for r in records])
    merged = [(r, r.merged_latency()) for r in records]
    # The axis reaches p99 at least, and a decade past the last step of the most sampled curve.
    deepest = max((1.0 / (1.0 - f) for _, h in merged for _, f in h.cdf() if f < 1.0), default=1.0)
    right = 10.0 ** math.ceil(math.log10(max(100.0, deepest * 1.5)))
    fig, ax = pyplot().subplots(figsize=(10, 5.5))
    palette = colours(len(merged))
    for (rec, hist), colour in zip(merged, palette):
        xs, ys = cdf_steps(hist, right)
        if xs:
            label = varying_label(rec.config, varying) or rec.label
            ax.plot(xs, ys, color=colour, lw=2, drawstyle="steps-post", zorder=3,
                    label=f"{label} ({hist.count} requests, {len(rec.runs)} repeats)")
    for (rec, _), colour in zip(merged, palette):  # behind every merged curve
        for run in rec.runs if per_repeat else ():
            ax.plot(*cdf_steps(run.run().latency, right), color=colour, lw=0.8, alpha=0.5, drawstyle="steps-post",
                    zorder=2)
    ticks = [p for p in PERCENTILE_TICKS if 1.0 / (1.0 - p / 100) <= right * 1.001]
    ax.set_xscale("log")
    ax.set_xlim(1.0, right)
    ax.set_xticks([1.0 / (1.0 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks])
    ax.minorticks_off()
    pooled = "thick: all repeats merged; thin: each repeat" if per_repeat else "all repeats merged"
    ax.set(xlabel="percentile (p50: half the requests took at most this long)", ylabel="latency (ms)",
           title=f"Latency by percentile ({pooled})\n{title}")
    ax.title.set_fontsize(10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot(records: Sequence[SweepRecord], results_dir: Path, host: str, per_repeat: bool = False) -> list[Path]:
    """Write the plots of the configurations that ran; returns the files written."""
    ok = [r for r in records if r.ok and r.runs]
    if not ok:
        return []
    title = sweep_title(ok, host)
    return [save(throughput_latency_figure(ok, title), results_dir / "throughput_latency.png"),
            save(percentile_figure(ok, title, per_repeat), results_dir / "latency_cdf.png")]


# -- across configurations: pareto.png and curves.png --------------------------------------


def _labels(stats: Sequence[Configuration]) -> list[str]:
    varying = varying_keys([s.settings for s in stats])
    return [varying_label(s.settings, varying) or s.label for s in stats]


def _legend(ax: Any, entries: int) -> None:
    """A legend that stays readable: inside while short, beside the axes when long."""
    if entries > 6:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=9)


def pareto_figure(stats: list[Configuration], objective: Objective, title: str = "") -> Any:
    """The objective's throughput against its latency, one point per configuration, the front joined."""
    shown = [s for s in stats if s.mean(objective.throughput) is not None and s.mean(objective.latency) is not None]
    if not shown:
        return None
    fig, ax = pyplot().subplots(figsize=(10, 6.5))
    for s, label, colour in zip(shown, _labels(shown), colours(len(shown))):
        errorbars(ax, [s.spread(objective.latency, 1e3)], [s.spread(objective.throughput)], fmt="o", ms=8,
                  color=colour, label=label)
    front = sorted(configuration_front(shown, objective), key=lambda s: s.mean(objective.latency))
    # Ringed as well as joined, so the legend shows the front even when one configuration is all of it.
    ax.plot([s.mean(objective.latency) * 1e3 for s in front], [s.mean(objective.throughput) for s in front],
            "k--", lw=1.2, marker="o", ms=16, mfc="none", mew=1.5, label="Pareto front")
    if objective.slo_ms is not None:
        ax.axvline(objective.slo_ms, color="red", lw=1.2, ls=":", label=f"objective {objective.text()}")
    ax.set(xlabel=objective.latency_label, ylabel=objective.throughput_label)
    ax.set_title(f"{objective.throughput_label} against {objective.latency_label}, one point per configuration"
                 f"\n{title}{'; ' if title else ''}{BARS}", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(shown) + 1 + (objective.slo_ms is not None))
    return fig


def plot_pareto(stats: list[Configuration], path: Path, objective: Objective, title: str = "") -> Path | None:
    fig = pareto_figure(stats, objective, title)
    return save(fig, path, ANSWER_DPI) if fig is not None else None


def curve_groups(stats: list[Configuration], axis: str) -> dict[str, list[Configuration]]:
    """Configurations that differ only in `axis`, by a label of their other varying settings."""
    varying = varying_keys([s.settings for s in stats]) - {axis}
    groups: dict[str, list[Configuration]] = {}
    for s in stats:
        groups.setdefault(varying_label(s.settings, varying) or "all", []).append(s)
    for members in groups.values():
        members.sort(key=lambda s: s.settings.get(axis) or 0)
    return groups


def curves_figure(stats: list[Configuration], axis: str | None, objective: Objective, title: str = "") -> Any:
    """Throughput and latency across the rate or concurrency axis, or across each peak search's probes."""
    peak = any(s.probes for s in stats)
    if not stats or (axis is None and not peak):
        return None
    fig, (ax_tp, ax_lat, ax_tl) = pyplot().subplots(1, 3, figsize=(16, 5.5))
    if peak:
        _peak_curves(stats, (ax_tp, ax_lat, ax_tl))
        xlabel, latency = "offered rate (requests/s)", f"{objective.name} latency"
        ax_tp.set_title("Measured throughput at each probe")
        ax_lat.set_title(f"{latency} at each probe (★ the peak)")
    else:
        assert axis is not None
        _axis_curves(curve_groups(stats, axis), axis, (ax_tp, ax_lat, ax_tl))
        xlabel, latency = axis.replace("_", " "), "p99 latency"
        ax_tp.set_title(f"Throughput across {xlabel}")
        ax_lat.set_title(f"{latency} across {xlabel}")
        if all(isinstance(v, int) for s in stats for v in [s.settings.get(axis)]):
            integer_ticks(ax_tp)
            integer_ticks(ax_lat)
    if objective.slo_ms is not None:
        for ax in (ax_lat, ax_tl):
            ax.axhline(objective.slo_ms, color="red", lw=1.2, ls=":", label=f"objective {objective.text()}")
    ax_tp.set(xlabel=xlabel, ylabel="throughput, measured (samples/s)")
    ax_lat.set(xlabel=xlabel, ylabel=f"{latency} (ms)")
    ax_tl.set(xlabel="throughput, measured (samples/s)", ylabel=f"{latency} (ms)", title=f"{latency} vs throughput")
    if peak:  # probes past the knee reach many times the objective: a log axis keeps the objective readable
        log_y(ax_lat)
        log_y(ax_tl)
    for ax in (ax_tp, ax_lat, ax_tl):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.suptitle(f"{title}{'; ' if title else ''}{BARS}", fontsize=10)
    return fig


def plot_curves(stats: list[Configuration], axis: str | None, path: Path, objective: Objective,
                title: str = "") -> Path | None:
    fig = curves_figure(stats, axis, objective, title)
    return save(fig, path, ANSWER_DPI) if fig is not None else None


def _axis_curves(groups: dict[str, list[Configuration]], axis: str, axes: tuple[Any, Any, Any]) -> None:
    ax_tp, ax_lat, ax_tl = axes
    for (label, members), colour in zip(groups.items(), colours(len(groups))):
        xs = [m.settings.get(axis) for m in members]
        tp = [m.spread("throughput") for m in members]
        lat = [m.spread("p99_latency", 1e3) for m in members]
        style = {"color": colour, "marker": "o"}
        errorbars(ax_tp, xs, tp, label=label, **style)
        errorbars(ax_lat, xs, lat, **style)
        errorbars(ax_tl, tp, lat, **style)


def _peak_curves(stats: list[Configuration], axes: tuple[Any, Any, Any]) -> None:
    """Each search's probes sorted by rate, and the peak with its bars over repeats, one colour per configuration."""
    ax_tp, ax_lat, ax_tl = axes
    for s, label, colour in zip(stats, _labels(stats), colours(len(stats))):
        for i, probes in enumerate(s.probes):
            ordered = sorted(probes, key=lambda p: p["rate"])
            rates = [p["rate"] for p in ordered]
            tp = [p["throughput"] for p in ordered]
            lat = [p["latency_s"] * 1e3 if p.get("latency_s") is not None else math.nan for p in ordered]
            ax_tp.plot(rates, tp, "o:", color=colour, alpha=0.7, label=label if i == 0 else None)
            ax_lat.plot(rates, lat, "o:", color=colour, alpha=0.7)
            ax_tl.plot(tp, lat, "o", color=colour, alpha=0.7)  # no line: probes past the knee deliver less
        errorbars(ax_lat, [s.spread("peak_rate")], [s.spread("peak_latency", 1e3)], fmt="*", ms=14, color=colour)
    batches = {s.settings.get("batch_size", 1) for s in stats}
    rates = [p["rate"] for s in stats for probes in s.probes for p in probes]
    if len(batches) == 1 and rates:  # what every probe would measure if its run answered exactly what it offered
        (batch,) = batches
        top = max(rates) * 1.05
        ax_tp.plot([0, top], [0, top * batch], color="grey", lw=0.8, ls="--",
                   label="offered" if batch == 1 else f"offered x batch {batch}")
