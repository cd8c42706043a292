"""What sweep.py writes about a sweep: markdown tables and plots.

Tables: latency in ms and throughput in samples/s, each cell the mean ± standard
deviation over a configuration's repeats with fixed decimals, and the host the
server ran on in its own column (a table file collects rows from many sweeps).

Plots (PLOT_DPI): throughput and latency against batch size with error bars
(± one standard deviation over the repeats), one colour per configuration in
every panel, and a percentile plot of each configuration's latency from the
merged histograms of all its repeats (x: the percentile on a log(1 / (1 - p))
axis, so the tail gets the room). Titles name the model, device, image size
and host. Built by `*_figure` functions returning the figure, so a test can
inspect what was drawn.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from client.compare import varying_keys
from client.metrics import LatencyStats
from client.results import RunResult
from common.fileio import write_atomic

PLOT_DPI = 130
METRICS = (  # (summary key, column header, scale to the column's unit, decimals)
    ("warmup_latency", "warm-up latency (ms)", 1e3, 3),
    ("average_latency", "average latency (ms)", 1e3, 3),
    ("p99_latency", "p99 latency (ms)", 1e3, 3),
    ("throughput", "throughput (samples/s)", 1.0, 1),
    ("gpu_util", "GPU utilization (%)", 1.0, 1),
)
PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99)


def run_summaries(record: dict) -> list[dict]:
    rows = []
    for r in record["runs"]:
        row = RunResult.from_dict(r["result"]).summary()
        row["spawn_to_ready_s"] = r["spawn_to_ready_s"]
        rows.append(row)
    return rows


def mean_std(values: list[float | None], scale: float = 1.0, decimals: int = 3) -> str:
    """'12.345 ± 0.067' over the known values, in the column's unit; 'n/a' when none is known."""
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.{decimals}f} ± {std:.{decimals}f}"


def record_host(record: dict, default: str = "") -> str:
    """The host the configuration's server ran on (its INFO), else the client's, else `default`."""
    for run in record.get("runs", []):
        result = run["result"]
        servers = result.get("servers") or [{}]
        return servers[0].get("hostname") or result.get("host") or default
    return default


def table_row(record: dict, extra: list[str]) -> list[str]:
    if record["status"] != "ok":
        return [*extra, *(["failed"] * len(METRICS)), "0", record.get("reason", "").replace("|", "/")]
    rows = run_summaries(record)
    cells = [mean_std([r[key] for r in rows], scale, decimals) for key, _, scale, decimals in METRICS]
    return [*extra, *cells, str(len(rows)), ""]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def append_output_table(path: Path, record: dict, stamp: str, host: str) -> None:
    """The seed's per-(batch, compile) file: one row appended per sweep (under a new header if the columns changed)."""
    cfg = record["config"]
    header = ["sweep", "host", "model", "concurrency", "workers", *(h for _, h, _, _ in METRICS), "repeats", "note",
              "configuration"]
    row = table_row(record, [stamp, record_host(record, host), cfg["model"], str(cfg["concurrency"]),
                             str(cfg["num_workers"])]) + [record.get("label", "")]
    table = markdown(header, [row])
    if path.exists():
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        if table.splitlines()[0] in text.splitlines():
            text += table.splitlines()[2] + "\n"
        else:  # written by an older version, with other columns: a table of its own
            text += "\n" + table
    else:
        title = f"# batch size {cfg['batch_size']}, compile {'on' if cfg['compile'] else 'off'}\n\n"
        text = title + table
    write_atomic(path, text)


SUMMARY_SETTINGS = ("batch_size", "compile", "concurrency", "num_workers")  # always shown: the seed's columns, every label


def varying_settings(records: list[dict]) -> list[str]:
    """The other settings whose value differs between the records' configurations: a column each."""
    return sorted(varying_keys([rec["config"] for rec in records]) - set(SUMMARY_SETTINGS))


def summary_table(records: list[dict], host: str) -> tuple[list[str], list[list[str]]]:
    varying = varying_settings(records)
    header = ["batch", "compile", "concurrency", "workers", *varying, "host", *(h for _, h, _, _ in METRICS),
              "repeats", "note"]
    rows = []
    for rec in records:
        c = rec["config"]
        extra = [str(c["batch_size"]), "on" if c["compile"] else "off", str(c["concurrency"]),
                 str(c["num_workers"]), *(str(c.get(name)) for name in varying), record_host(rec, host)]
        rows.append(table_row(rec, extra))
    return header, rows


def title_of(records: list[dict], host: str) -> str:
    """'resnet18 on AMD EPYC (cpu), 64x64 px, host vm': what every plot and the summary are about."""
    cfg = records[0]["config"] if records else {}
    device = cfg.get("device", "?")
    for rec in records:
        for run in rec.get("runs", []):
            info = (run["result"].get("servers") or [{}])[0]
            name = info.get("device_name")
            device = f"{name} ({info.get('device') or device})" if name else device
            host = info.get("hostname") or host
            break
        else:
            continue
        break
    size = cfg.get("image_size", "?")
    return f"{cfg.get('model', '?')} on {device}, {size}x{size} px, host {host}"


def completed_keys(results_dir: Path) -> dict[str, dict]:
    """Configurations completed by earlier sweeps (for --resume), newest record winning."""
    done: dict[str, dict] = {}
    for path in sorted(results_dir.glob("sweep-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for rec in data.get("configurations", []):
            if rec.get("status") == "ok":
                done[rec["key"]] = rec
    return done


# -- plots -------------------------------------------------------------------------------------


def _groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """Configurations that differ only by batch size: one line (one colour) each."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["config"]
        groups.setdefault((c["compile"], c["concurrency"], c["num_workers"]), []).append(r)
    return dict(sorted(groups.items()))


def _group_label(key: tuple) -> str:
    compile_, concurrency, workers = key
    return f"compile {'on' if compile_ else 'off'}, c{concurrency}, w{workers}"


def _colours(groups: dict[tuple, list[dict]]) -> dict[tuple, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {key: cmap(i % 10) for i, key in enumerate(groups)}


def _mean_and_err(rows: list[dict], key: str, scale: float = 1.0) -> tuple[float, float]:
    vals = [r[key] * scale for r in rows if r[key] is not None]
    if not vals:
        return float("nan"), 0.0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def throughput_latency_figure(records: list[dict], title: str) -> Any:
    """Throughput and latency against batch size, ± one standard deviation over the repeats."""
    import matplotlib.pyplot as plt

    groups = _groups(records)
    colours = _colours(groups)
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: r["config"]["batch_size"])
        xs = [r["config"]["batch_size"] for r in recs]
        summaries = [run_summaries(r) for r in recs]
        colour, label = colours[key], _group_label(key)
        tp = [_mean_and_err(s, "throughput") for s in summaries]
        ax_tp.errorbar(xs, [m for m, _ in tp], yerr=[e for _, e in tp], marker="o", capsize=3, color=colour,
                       label=label)
        for metric, style, name in (("average_latency", "-", "mean"), ("p99_latency", "--", "p99")):
            lat = [_mean_and_err(s, metric, 1e3) for s in summaries]
            ax_lat.errorbar(xs, [m for m, _ in lat], yerr=[e for _, e in lat], marker="o" if style == "-" else "x",
                            ls=style, capsize=3, color=colour, label=f"{name}, {label}")
    ax_tp.set(xlabel="batch size", ylabel="throughput (samples/s)", title="Throughput vs batch size", xscale="log")
    ax_lat.set(xlabel="batch size", ylabel="latency (ms)", title="Latency vs batch size (mean, p99)", xscale="log")
    batches = sorted({r["config"]["batch_size"] for r in records})
    for ax in (ax_tp, ax_lat):
        # Label the batch sizes themselves: log-scale minor labels (2x10^0...) read badly.
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}; error bars: ± 1 std over repeats", fontsize=10)
    fig.tight_layout()
    return fig


def merged_latency(record: dict) -> LatencyStats:
    """The latency histogram of all of a configuration's repeats, merged exactly."""
    merged = LatencyStats()
    for run in record["runs"]:
        merged.merge(RunResult.from_dict(run["result"]).latency)
    return merged


def percentile_figure(records: list[dict], title: str) -> Any:
    """Latency against percentile, x = 1 / (1 - p) on a log axis, from each configuration's merged repeats."""
    import matplotlib.pyplot as plt

    groups = _groups(records)
    colours = _colours(groups)
    styles = ("-", "--", "-.", ":")
    batches = sorted({r["config"]["batch_size"] for r in records})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = 2.0
    for key, recs in groups.items():
        for rec in sorted(recs, key=lambda r: r["config"]["batch_size"]):
            hist = merged_latency(rec)
            points = [(value, fraction) for value, fraction in hist.cdf() if fraction < 1.0]
            if not points:
                continue
            xs = [1.0 / (1.0 - f) for _, f in points]
            top = max(top, xs[-1])
            batch = rec["config"]["batch_size"]
            ax.plot(xs, [v * 1e3 for v, _ in points], color=colours[key], ls=styles[batches.index(batch) % 4],
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


def plot(records: list[dict], results_dir: Path, host: str) -> list[Path]:
    """Write the plots of the configurations that ran; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok" and r["runs"]]
    if not ok:
        return []
    title = title_of(ok, host)
    written = []
    for name, build in (("throughput_latency.png", throughput_latency_figure), ("latency_cdf.png", percentile_figure)):
        fig = build(ok, title)
        written.append(_save(fig, results_dir / name))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=PLOT_DPI)
    tmp.replace(path)
    return path
