"""What a sweep writes as text: the markdown tables and the answer (the best configuration, the Pareto front).

Tables: latency in ms and throughput in samples/s, each cell the mean ± standard
deviation over a configuration's repeats with fixed decimals (columns line up),
and the host the server ran on in its own column (a table file collects rows
from many sweeps).

The answer: the configuration with the most throughput whose latency meets the
objective (`Objective`: at fixed load the measured samples/s under p99; in a
peak sweep the offered peak, with what the run at the peak measured beside it),
then every configuration's figures as mean ± std to four significant digits,
and which of them are on the Pareto front: no other configuration has both
more throughput and a lower latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    if not record.ok:  # failed, or interrupted: its finished repeats stay in the sweep's JSON
        return [*extra, *([record.status] * len(metrics)), str(len(record.runs)), record.reason.replace("|", "/")]
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


OFFERED_HEADER = "peak offered (requests/s)"
MEASURED_HEADER = "throughput at the peak, measured (samples/s)"


def summary_table(records: Sequence[SweepRecord], host: str) -> tuple[list[str], list[list[str]]]:
    """The summary's columns and rows. In a peak sweep each row is the run at the peak, so its throughput
    is what that run measured; the rate the search offered there is a column of its own beside it."""
    varying = varying_settings(records)
    metrics = metrics_for(records)
    peak = any(run.peak is not None for rec in records for run in rec.runs)
    header = ["batch", "compile", "concurrency", "workers", *varying, "host", *(h for _, h, _, _ in metrics),
              "repeats", "note"]
    rows = []
    for rec in records:
        c = rec.config
        extra = [str(c["batch_size"]), "on" if c["compile"] else "off", str(c["concurrency"]),
                 str(c["num_workers"]), *(str(c.get(name)) for name in varying), rec.host(host)]
        rows.append(table_row(rec, extra, metrics))
    if peak:
        at = header.index("throughput (samples/s)")
        header[at:at + 1] = [OFFERED_HEADER, MEASURED_HEADER]
        for rec, row in zip(records, rows):
            offered = mean_std([(r.peak or {}).get("peak_rate") for r in rec.runs], 1.0, 1) if rec.ok else rec.status
            row.insert(at, offered)
    return header, rows


def summary_markdown(records: Sequence[SweepRecord], stamp: str, env: dict[str, Any],
                     interrupted: str | None = None) -> str:
    """summary.md: a title naming what ran where (and, for a sweep cut short, that it was), then the table."""
    header, rows = summary_table(records, env["host"])
    cut = f" (INTERRUPTED: {interrupted})" if interrupted else ""
    peak = (" In a peak sweep each row is the run at the peak: the offered rate is the search's answer, the"
            " throughput what that run answered.") if OFFERED_HEADER in header else ""
    return (f"# Sweep {stamp}{cut}: {sweep_title(records, env['host'])}\n\n"
            f"{env['device']} on {env['host']} ({env['cpu']}), git {env['git_commit']}; latency in ms, each cell"
            f" the mean ± standard deviation over the repeats.{peak}\n\n" + markdown(header, rows))


# -- the answer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """What the answer ranks by. At fixed load: the most measured samples/s whose mean p99 meets slo_ms. In
    a peak sweep: the highest offered peak (samples/s), each meeting the searched percentile by construction."""

    mode: str = "fixed"
    slo_ms: float | None = None
    percentile: float = 99.0  # the searched one in a peak sweep; p99 at fixed load
    confidence: float | None = None  # of a peak search's verdicts

    @property
    def peak(self) -> bool:
        return self.mode == "peak"

    @property
    def throughput(self) -> str:
        """The figure ranked and plotted as throughput."""
        return "peak_samples_per_s" if self.peak else "throughput"

    @property
    def latency(self) -> str:
        """The figure held under the objective, plotted as latency."""
        return "peak_latency" if self.peak else "p99_latency"

    @property
    def name(self) -> str:
        return f"p{self.percentile:g}"

    @property
    def throughput_label(self) -> str:
        return "peak offered (samples/s)" if self.peak else "throughput (samples/s)"

    @property
    def latency_label(self) -> str:
        return f"{self.name} latency at the peak (ms)" if self.peak else "p99 latency (ms)"

    def text(self) -> str:
        if self.slo_ms is None:
            return "no latency objective given"
        sure = f" at confidence {self.confidence:g}" if self.peak and self.confidence is not None else ""
        return f"{self.name} <= {self.slo_ms:g} ms{sure}"

    @classmethod
    def of(cls, stats: Sequence[Configuration], mode: str | None = None, slo_ms: float | None = None) -> Objective:
        """The objective a sweep's configurations were searched under: the mode (peak when they hold searches),
        and the percentile and confidence their searches recorded."""
        mode = mode or ("peak" if any(s.probes for s in stats) else "fixed")
        recorded = [r for s in stats for r in s.repeats if r.get("percentile") is not None]
        if mode != "peak" or not recorded:
            return cls(mode, slo_ms)
        return cls(mode, slo_ms, float(recorded[0]["percentile"]), recorded[0].get("confidence"))


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


def configuration_front(stats: Sequence[Configuration], objective: Objective | None = None) -> list[Configuration]:
    """The configurations on the Pareto front of the objective's mean throughput against its mean latency (the
    offered peak against the searched percentile in a peak sweep)."""
    objective = objective or Objective.of(stats)
    return pareto_front(stats, lambda s: s.mean(objective.throughput), lambda s: s.mean(objective.latency))


def energy_front(stats: Sequence[Configuration]) -> list[Configuration]:
    """The configurations on the Pareto front of mean samples per joule (above idle) against mean p99:
    none serves more samples per joule at a p99 as low."""
    return pareto_front(stats, lambda s: s.mean("samples_per_joule"), lambda s: s.mean("p99_latency"))


def best_under_slo(stats: list[Configuration], slo_ms: float | None, mode: str = "fixed") -> Configuration | None:
    """The configuration with the most samples/s whose mean latency meets the objective (every one, without one).

    In a peak sweep each configuration's offered peak meets the objective (on the searched percentile) by
    construction; a configuration without a peak in every repeat is not a candidate.
    """
    objective = Objective(mode, slo_ms)
    candidates = []
    for s in stats:
        latency, throughput = s.mean(objective.latency), s.mean(objective.throughput)
        if throughput is None or len(s.values(objective.throughput)) < len(s.repeats):
            continue
        if not objective.peak and objective.slo_ms is not None and (latency is None or latency * 1e3 > objective.slo_ms):
            continue
        candidates.append((throughput, s))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def significant(value: float, digits: int) -> str:
    """`value` to `digits` significant digits as %g would, but never in exponent form: 12350 and 470, not
    1.235e+04 and 4.7e+02."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    text = f"{round(value, digits - 1 - magnitude):.{max(0, digits - 1 - magnitude)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _figure(s: Configuration, figure: str, scale: float = 1.0, unit: str = "") -> str:
    """'82 ± 2.8' (the std only over several repeats), 'n/a' when no repeat has the figure."""
    mean = s.mean(figure)
    if mean is None:
        return "n/a"
    text = significant(mean * scale, 4)
    if len(s.values(figure)) > 1 and math.isfinite(s.std(figure)):
        text += f" ± {significant(s.std(figure) * scale, 2)}"
    return text + unit


def _confirmed(s: Configuration) -> str:
    """'2 of 3': the repeats whose confirmation run at the peak passed; 'n/a' without confirmation runs."""
    known = [r.get("peak_confirmed") for r in s.repeats if r.get("peak_confirmed") is not None]
    return f"{sum(map(bool, known))} of {len(s.repeats)}" if known else "n/a"


def _gpu(s: Configuration) -> str:
    return (f"GPU utilisation {_figure(s, 'gpu_util', unit=' %')}, GPU memory "
            f"{_figure(s, 'gpu_mem_peak_bytes', 1e-6, unit=' MB')}")


def best_line(best: Configuration, objective: Objective) -> str:
    """The answer's first sentence: the best configuration and its figures, each named for what it is."""
    n = f"mean ± std over {len(best.repeats)} repeats"
    if not objective.peak:
        return (f"Best: **{best.label}**: {_figure(best, 'throughput')} samples/s, p99 "
                f"{_figure(best, 'p99_latency', 1e3)} ms, {_gpu(best)} ({n}).")
    p = objective.name
    sure = f" at confidence {objective.confidence:g}" if objective.confidence is not None else ""
    # Searches recorded before the confirmation run have no bound and no confirmation: left unsaid.
    bound = (f" (at most {_figure(best, 'peak_latency_high', 1e3)} ms{sure})"
             if best.mean("peak_latency_high") is not None else "")
    p99 = f", p99 {_figure(best, 'p99_latency', 1e3)} ms" if p != "p99" else ""
    confirmed = f"; confirmed in {_confirmed(best)} repeats" if _confirmed(best) != "n/a" else ""
    return (f"Best: **{best.label}**: a peak of {_figure(best, 'peak_rate')} requests/s offered "
            f"({_figure(best, 'peak_samples_per_s')} samples/s). A run at that rate measured "
            f"{_figure(best, 'throughput')} samples/s answered, {p} {_figure(best, 'peak_latency', 1e3)} ms"
            f"{bound}{p99}, {_gpu(best)}{confirmed} ({n}).")


PEAK_NOTE = (
    "Offered: the request rate the search found (Poisson arrivals, requests/s scheduled), and times the batch size"
    " in samples/s; configurations are ranked by it. Measured: samples/s answered by the run at the peak (its"
    " confirmation run, on a schedule of its own), as summary.md's throughput; over a finite run it differs from"
    " the offered rate by the arrivals' randomness and the requests still queued at its end. {p} bound: the upper"
    " end of {p}'s confidence interval{sure} from that run's requests. Confirmed: the repeats whose confirmation"
    " run met the objective too."
)


def answer_markdown(stats: list[Configuration], objective: Objective, interrupted: str | None = None) -> str:
    """The summary's answer: the best configuration under the objective, then every configuration's figures."""
    best = best_under_slo(stats, objective.slo_ms, objective.mode)
    lines = [f"## The answer ({objective.text()})", ""]
    if interrupted:
        lines += [f"**Interrupted** ({interrupted}): only the configurations that finished are here.", ""]
    lines.append(best_line(best, objective) if best is not None else
                 "No configuration met the objective in every repeat.")
    if any(s.mean("gpu_util") is not None for s in stats):
        lines[-1] += " GPU utilisation is NVML's: the share of time a kernel was running, not SM occupancy."
    lines += _energy_lines(stats, {id(s) for s in energy_front(stats)})
    header, rows = answer_table(stats, objective.mode, objective)
    note = ""
    if objective.peak:
        sure = f" (confidence {objective.confidence:g})" if objective.confidence is not None else ""
        note = "\n" + PEAK_NOTE.format(p=objective.name, sure=sure) + "\n"
    return "\n".join(lines) + "\n\n" + markdown(header, [[c.replace("|", "/") for c in r] for r in rows]) + note


def answer_table(stats: list[Configuration], mode: str,
                 objective: Objective | None = None) -> tuple[list[str], list[list[str]]]:
    """The answer's table (header, rows): every configuration's figures as mean ± std, each named for what it is
    (in a peak sweep the offered peak and what the run at it measured), and its Pareto membership; with the
    GPU's energy, samples per joule, throttled repeats and the samples/J front too."""
    objective = objective or Objective.of(stats, mode)
    front = {id(s) for s in configuration_front(stats, objective)}
    energy = {id(s) for s in energy_front(stats)}
    p = objective.name
    if objective.peak:
        batched = any(s.settings.get("batch_size", 1) != 1 for s in stats)
        columns = [("peak offered (requests/s)", "peak_rate", 1.0),
                   *([("peak offered (samples/s)", "peak_samples_per_s", 1.0)] if batched else []),
                   ("measured at the peak (samples/s)", "throughput", 1.0), (f"{p} at the peak (ms)", "peak_latency", 1e3),
                   (f"{p} bound (ms)", "peak_latency_high", 1e3),
                   *([("p99 at the peak (ms)", "p99_latency", 1e3)] if p != "p99" else [])]
    else:
        columns = [("throughput (samples/s)", "throughput", 1.0), ("p99 (ms)", "p99_latency", 1e3)]
    header = ["configuration", *(h for h, _, _ in columns), *(["confirmed"] if objective.peak else []),
              "GPU util (%)", "GPU memory (MB)", *(ENERGY_HEADER if energy else []), "repeats", "Pareto"]
    rows = []
    for s in stats:
        rows.append([s.label, *(_figure(s, figure, scale) for _, figure, scale in columns),
                     *([_confirmed(s)] if objective.peak else []), _figure(s, "gpu_util"),
                     _figure(s, "gpu_mem_peak_bytes", 1e-6), *(_energy_cells(s, energy) if energy else []),
                     str(len(s.repeats)), "yes" if id(s) in front else ""])
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
