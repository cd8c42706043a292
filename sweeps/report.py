"""What a sweep writes as text: the markdown tables and the answer (the best configuration, the Pareto front).

Tables: latency in ms and throughput in samples/s, each cell the mean ± standard
deviation over a configuration's repeats with fixed decimals (columns line up),
and the host the server ran on in its own column (a table file collects rows
from many sweeps).

The answer: the configuration with the most throughput whose p99 meets the
objective, then every configuration's figures as mean ± std to four
significant digits (prose, not columns), and which of them are on the Pareto
front: no other configuration has both more throughput and a lower p99.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.fileio import write_atomic
from sweeps.plan import SUMMARY_SETTINGS
from sweeps.records import Configuration, SweepRecord, mean_and_std, sweep_title, varying_keys

T = TypeVar("T")
METRICS = (  # (summary key, column header, scale to the column's unit, decimals)
    ("warmup_latency", "warm-up latency (ms)", 1e3, 3),
    ("average_latency", "average latency (ms)", 1e3, 3),
    ("p99_latency", "p99 latency (ms)", 1e3, 3),
    ("throughput", "throughput (samples/s)", 1.0, 1),
    ("gpu_util", "GPU utilization (%)", 1.0, 1),
)
# With a GPU that reports energy (docs/metrics.md, GPU telemetry): columns of their own.
ENERGY_METRICS = (
    ("samples_per_joule", "samples/J above idle", 1.0, 1),
    ("gpu_energy_power_w", "GPU power (W)", 1.0, 0),
)


def metrics_for(records: Sequence[SweepRecord]) -> tuple[tuple[str, str, float, int], ...]:
    """METRICS, and ENERGY_METRICS when any of the records' runs reported the GPU's energy."""
    energy = any(r.get("gpu_energy_power_w") is not None for rec in records if rec.ok for r in rec.summaries())
    return METRICS + ENERGY_METRICS if energy else METRICS


def mean_std(values: list[float | None], scale: float = 1.0, decimals: int = 3) -> str:
    """'12.345 ± 0.067' over the known values, in the column's unit; 'n/a' when none is known."""
    known = mean_and_std([v * scale if v is not None else None for v in values])
    if known is None:
        return "n/a"
    return f"{known[0]:.{decimals}f} ± {known[1]:.{decimals}f}"


def table_row(record: SweepRecord, extra: list[str], metrics: Sequence[tuple] = METRICS) -> list[str]:
    if not record.ok:
        return [*extra, *(["failed"] * len(metrics)), "0", record.reason.replace("|", "/")]
    rows = record.summaries()
    cells = [mean_std([r.get(key) for r in rows], scale, decimals) for key, _, scale, decimals in metrics]
    throttled = sum(1 for r in rows if r.get("gpu_throttled"))
    note = f"GPU throttled in {throttled} of {len(rows)} repeats" if throttled else ""
    return [*extra, *cells, str(len(rows)), note]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def append_output_table(path: Path, record: SweepRecord, stamp: str, host: str) -> None:
    """The file of one (batch, compile) pair, as the seed names it: one row appended per sweep (under a new
    header when the file's last table has other columns)."""
    cfg = record.config
    metrics = metrics_for([record])
    header = ["sweep", "host", "model", "concurrency", "workers", *(h for _, h, _, _ in metrics), "repeats", "note",
              "configuration"]
    row = table_row(record, [stamp, record.host(host), cfg["model"], str(cfg["concurrency"]),
                             str(cfg["num_workers"])], metrics) + [record.label]
    table = markdown(header, [row])
    if path.exists():
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        if table.splitlines()[0] in text.splitlines():
            text += table.splitlines()[2] + "\n"
        else:  # a table with other columns: this row starts a table of its own
            text += "\n" + table
    else:
        title = f"# batch size {cfg['batch_size']}, compile {'on' if cfg['compile'] else 'off'}\n\n"
        text = title + table
    write_atomic(path, text)


def varying_settings(records: Sequence[SweepRecord]) -> list[str]:
    """The other settings whose value differs between the records' configurations: a column each."""
    return sorted(varying_keys([rec.config for rec in records]) - set(SUMMARY_SETTINGS))


def summary_table(records: Sequence[SweepRecord], host: str) -> tuple[list[str], list[list[str]]]:
    varying = varying_settings(records)
    metrics = metrics_for(records)
    header = ["batch", "compile", "concurrency", "workers", *varying, "host", *(h for _, h, _, _ in metrics),
              "repeats", "note"]
    rows = []
    for rec in records:
        c = rec.config
        extra = [str(c["batch_size"]), "on" if c["compile"] else "off", str(c["concurrency"]),
                 str(c["num_workers"]), *(str(c.get(name)) for name in varying), rec.host(host)]
        rows.append(table_row(rec, extra, metrics))
    return header, rows


def summary_markdown(records: Sequence[SweepRecord], stamp: str, env: dict[str, Any]) -> str:
    """summary.md: a title naming what ran where, then the summary table."""
    header, rows = summary_table(records, env["host"])
    return (f"# Sweep {stamp}: {sweep_title(records, env['host'])}\n\n"
            f"{env['device']} on {env['host']} ({env['cpu']}), git {env['git_commit']}; latency in ms, each cell"
            " the mean ± standard deviation over the repeats\n\n" + markdown(header, rows))


# -- the answer ----------------------------------------------------------------------------


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


def configuration_front(stats: Sequence[Configuration]) -> list[Configuration]:
    """The configurations on the Pareto front of mean throughput against mean p99."""
    return pareto_front(stats, lambda s: s.mean("throughput"), lambda s: s.mean("p99_latency"))


def energy_front(stats: Sequence[Configuration]) -> list[Configuration]:
    """The configurations on the Pareto front of mean samples per joule (above idle) against mean p99:
    none serves more samples per joule at a p99 as low."""
    return pareto_front(stats, lambda s: s.mean("samples_per_joule"), lambda s: s.mean("p99_latency"))


def best_under_slo(stats: list[Configuration], slo_ms: float | None, mode: str = "fixed") -> Configuration | None:
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


def _figure(s: Configuration, figure: str, scale: float = 1.0, unit: str = "") -> str:
    """'82 ± 2.8' (the std only over several repeats), 'n/a' when no repeat has the figure."""
    mean = s.mean(figure)
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.4g} ± {s.std(figure) * scale:.2g}" if len(s.values(figure)) > 1 else f"{mean * scale:.4g}"
    return text + unit


def answer_markdown(stats: list[Configuration], slo_ms: float | None, mode: str, percentile: float = 99.0) -> str:
    """The summary's answer: the best configuration under the objective, then every configuration's figures."""
    best = best_under_slo(stats, slo_ms, mode)
    objective = f"p{percentile:g} <= {slo_ms:g} ms" if slo_ms is not None else "no latency objective given"
    lines = [f"## The answer ({objective})", ""]
    if best is None:
        lines.append("No configuration met the objective in every repeat.")
    else:
        rate = f"peak {_figure(best, 'peak_rate')} requests/s, " if mode == "peak" else ""
        lines.append(
            f"Best: **{best.label}**: {rate}{_figure(best, 'throughput')} samples/s, p99 "
            f"{_figure(best, 'p99_latency', 1e3)} ms, GPU utilisation {_figure(best, 'gpu_util', unit=' %')}, "
            f"GPU memory {_figure(best, 'gpu_mem_peak_bytes', 1e-6, unit=' MB')} (mean ± std over {len(best.repeats)} "
            "repeats). GPU utilisation is NVML's: the share of time a kernel was running, not SM occupancy."
        )
    lines += _energy_lines(stats, {id(s) for s in energy_front(stats)})
    header, rows = answer_table(stats, mode)
    return "\n".join(lines) + "\n\n" + markdown(header, [[c.replace("|", "/") for c in r] for r in rows])


def answer_table(stats: list[Configuration], mode: str) -> tuple[list[str], list[list[str]]]:
    """The answer's table (header, rows): every configuration's figures as mean ± std, and its Pareto membership;
    with the GPU's energy, samples per joule, throttled repeats and the samples/J front too."""
    front = {id(s) for s in configuration_front(stats)}
    energy = {id(s) for s in energy_front(stats)}
    header = ["configuration", *(["peak (requests/s)"] if mode == "peak" else []), "throughput (samples/s)",
              "p99 (ms)", "GPU util (%)", "GPU memory (MB)", *(ENERGY_HEADER if energy else []), "repeats", "Pareto"]
    rows = []
    for s in stats:
        rows.append([s.label, *([_figure(s, "peak_rate")] if mode == "peak" else []), _figure(s, "throughput"),
                     _figure(s, "p99_latency", 1e3), _figure(s, "gpu_util"), _figure(s, "gpu_mem_peak_bytes", 1e-6),
                     *(_energy_cells(s, energy) if energy else []), str(len(s.repeats)),
                     "yes" if id(s) in front else ""])
    return header, rows


ENERGY_HEADER = ["samples/J above idle", "GPU throttled (repeats)", "Pareto (samples/J)"]


def _energy_cells(s: Configuration, front: set[int]) -> list[str]:
    throttled = s.values("gpu_throttled")
    return [_figure(s, "samples_per_joule"), f"{sum(throttled):g} of {len(throttled)}" if throttled else "n/a",
            "yes" if id(s) in front else ""]


def _energy_lines(stats: list[Configuration], front: set[int]) -> list[str]:
    """Samples per joule as a second Pareto axis, when the GPU reported energy."""
    if not front:
        return []
    best = max((s for s in stats if id(s) in front), key=lambda s: s.mean("samples_per_joule") or 0.0)
    return ["", f"Most samples per joule above the GPU's idle power: **{best.label}**, "
                f"{_figure(best, 'samples_per_joule')} samples/J at p99 {_figure(best, 'p99_latency', 1e3)} ms. "
                "'Pareto (samples/J)': no other configuration serves more samples per joule at a p99 as low "
                "(docs/metrics.md defines the energy figures)."]
