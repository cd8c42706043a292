"""A sweep's records, and the readers of sweeps and result files that the report and infer-compare share.

A sweep writes one `SweepRecord` per configuration (its settings, its status
and its repeats) into sweep-<stamp>.json. A `Repeat` is a run at fixed load, or
a peak search (client/peak.py's PeakResult as a dict) with the run at its peak
as its `result`, so every table reads `result` alike. `to_dict` writes the JSON
form and `from_dict` reads it back, as RunResult does.

A `Configuration` is what the answer, the plots and infer-compare work on: a
configuration's label, settings and the figures of each repeat (FIGURES).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.latency import LatencyStats
from client.results import RunResult
from sweeps.axes import show_value

# (figure, unit, scale, which way is better): a repeat's figures, as infer-compare compares them.
# In a peak search "peak_rate" and "peak_samples_per_s" are offered (the rate the search found), "throughput"
# is measured (samples/s answered at that rate), "peak_latency" the searched percentile there.
FIGURES: tuple[tuple[str, str, float, str | None], ...] = (
    ("peak_rate", "req/s", 1.0, "higher"),
    ("peak_samples_per_s", "samples/s", 1.0, "higher"),
    ("throughput", "samples/s", 1.0, "higher"),
    ("peak_latency", "ms", 1e3, "lower"),
    ("average_latency", "ms", 1e3, "lower"),
    ("p50_latency", "ms", 1e3, "lower"),
    ("p99_latency", "ms", 1e3, "lower"),
    ("gpu_util", "%", 1.0, None),  # busier is neither better nor worse by itself
    ("gpu_mem_peak_bytes", "MB", 1e-6, "lower"),
    # GPU energy above the idle baseline (docs/metrics.md, GPU telemetry); absent without a GPU.
    ("samples_per_joule", "samples/J", 1.0, "higher"),
    ("gpu_energy_power_w", "W", 1.0, None),
    ("gpu_throttled", "share of repeats", 1.0, "lower"),  # True counts 1: the mean is the share throttled
)


SPREAD_PERCENTILES = (5.0, 95.0)  # the interval a plot's error bar spans: of the repeats, never below the data


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The mean and sample standard deviation (0 for one value) of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    if not all(map(math.isfinite, known)):  # e.g. a confidence bound a repeat could not show (inf): no spread
        return statistics.fmean(known), math.nan
    return statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else 0.0


def mean_and_spread(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """The mean of the known values and how far its error bar reaches below and above it: to the 5th and
    95th percentiles of the values (linear interpolation), so a bar never leaves the range the repeats
    span (latencies never below zero) and is as lopsided as they are. None when no value is known."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    mean = statistics.fmean(known)
    low, high = (_percentile(known, q) for q in SPREAD_PERCENTILES)
    return mean, max(0.0, mean - low), max(0.0, high - mean)  # a bar never crosses its point


def _percentile(ordered: Sequence[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass
class Repeat:
    """One repeat of a configuration, against a fresh (or freshly reloaded) server."""

    repeat: int
    spawn_to_ready_s: float | None
    result: dict[str, Any]  # RunResult.to_dict(): the run, or in peak mode the run at the peak
    peak: dict[str, Any] | None = None  # peak mode: PeakResult.to_dict(), the search

    def to_dict(self) -> dict[str, Any]:
        peak = {"peak": self.peak} if self.peak is not None else {}
        return {"repeat": self.repeat, "spawn_to_ready_s": self.spawn_to_ready_s, **peak, "result": self.result}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Repeat:
        return cls(d.get("repeat", 0), d.get("spawn_to_ready_s"), d.get("result") or {}, d.get("peak"))

    def run(self) -> RunResult:
        return RunResult.from_dict(self.result)

    def figures(self) -> dict[str, Any]:
        """FIGURES of this repeat: at the peak in peak mode."""
        return peak_figures(self.peak) if self.peak is not None else run_figures(self.result)


@dataclass
class SweepRecord:
    """One configuration of a sweep: its settings, its status (and why it failed) and its repeats."""

    key: str  # identifies the configuration across sweeps (--resume)
    label: str
    config: dict[str, Any]
    runs: list[Repeat] = field(default_factory=list)
    status: str = "ok"  # or "failed"
    reason: str = ""  # why it failed
    resumed: bool = False  # taken from an earlier sweep by --resume
    no_peak: dict[str, Any] | None = None  # a peak search that found nothing: its probes, for the reason

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = {"key": self.key, "label": self.label, "config": self.config, "runs": [r.to_dict() for r in self.runs],
             "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        if self.resumed:
            d["resumed"] = True
        if self.no_peak is not None:
            d["no_peak"] = self.no_peak
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepRecord:
        return cls(d.get("key", ""), d.get("label", ""), dict(d.get("config") or {}),
                   [Repeat.from_dict(r) for r in d.get("runs", [])], d.get("status", "ok"), d.get("reason", ""),
                   bool(d.get("resumed", False)), d.get("no_peak"))

    def summaries(self) -> list[dict[str, Any]]:
        """Each repeat's RunResult summary, with its spawn-to-ready seconds."""
        return [{**r.run().summary(), "spawn_to_ready_s": r.spawn_to_ready_s} for r in self.runs]

    def merged_latency(self) -> LatencyStats:
        """The latency histogram of all the repeats, merged exactly."""
        merged = LatencyStats()
        for run in self.runs:
            merged.merge(run.run().latency)
        return merged

    def server_info(self) -> dict[str, Any]:
        """The first repeat's server INFO (hostname, device, device_name); empty without a repeat."""
        return (self.runs[0].result.get("servers") or [{}])[0] if self.runs else {}

    def host(self, default: str = "") -> str:
        """The host the configuration's server ran on (its INFO), else the client's, else `default`."""
        if not self.runs:
            return default
        return self.server_info().get("hostname") or self.runs[0].result.get("host") or default


# -- a repeat's figures ------------------------------------------------------------------


def peak_figures(peak: Mapping[str, Any]) -> dict[str, Any]:
    """FIGURES of a peak search (client/peak.py's PeakResult.to_dict()) at its peak: the rate offered
    there, and what the run at the peak (its confirmation, where there is one) measured. Also the
    searched percentile's upper confidence bound, whether the confirmation passed, and the confidence."""
    at = peak.get("at_peak") or {}
    return {
        "peak_rate": peak.get("peak_rate"),
        "peak_samples_per_s": peak.get("peak_samples_per_s"),
        # Files from before the confirmation run recorded only the offered rate: measured is then unknown.
        "throughput": peak.get("peak_throughput", at.get("throughput")),
        "peak_latency": peak.get("peak_latency"),
        "average_latency": at.get("average_latency"),
        "p50_latency": peak.get("peak_p50_latency"),
        "p99_latency": peak.get("peak_p99_latency"),
        "gpu_util": peak.get("peak_gpu_util"),
        "gpu_mem_peak_bytes": peak.get("peak_gpu_mem_peak_bytes"),
        **{name: at.get(name) for name in ("samples_per_joule", "gpu_energy_power_w", "gpu_throttled")},
        # A peak whose percentile no bound was shown for (its confirmation undecided) is unbounded: JSON's
        # null for it reads back as inf, so that a repeat without a bound is not left out of the mean.
        "peak_latency_high": _unbounded_as_inf(peak),
        "peak_confirmed": peak.get("peak_confirmed"),
        "confidence": peak.get("confidence"),
        "percentile": peak.get("percentile"),
    }


def _unbounded_as_inf(peak: Mapping[str, Any]) -> float | None:
    """Files from before the verdict had no bound at all (no key): unknown, not unbounded."""
    if "peak_latency_high" not in peak:
        return None
    high = peak["peak_latency_high"]
    return math.inf if high is None and peak.get("peak_rate") is not None else high


def run_figures(result: Mapping[str, Any]) -> dict[str, Any]:
    """FIGURES of a run (RunResult.to_dict()), from its summary."""
    summary = result.get("summary")
    if summary is None:
        summary = RunResult.from_dict(dict(result)).summary()
    return {name: summary.get(name) for name, *_ in FIGURES}


def is_peak_result(data: Mapping[str, Any]) -> bool:
    """A result file of `infer-client --find-peak` (a search), not of one run."""
    return "probes" in data


@dataclass
class Configuration:
    """One configuration and the figures of each of its repeats (and, in peak mode, each search's probes)."""

    label: str
    settings: dict[str, Any]
    repeats: list[dict[str, Any]] = field(default_factory=list)
    probes: list[list[dict[str, Any]]] = field(default_factory=list)

    def values(self, figure: str) -> list[float]:
        return [r[figure] for r in self.repeats if isinstance(r.get(figure), (int, float))]

    def mean(self, figure: str) -> float | None:
        known = mean_and_std(self.values(figure))
        return known[0] if known else None

    def std(self, figure: str) -> float:
        known = mean_and_std(self.values(figure))
        return known[1] if known else 0.0

    def spread(self, figure: str, scale: float = 1.0) -> tuple[float, float, float] | None:
        """(mean, below, above) of the figure over the repeats, scaled: a plot's point and error bar."""
        return mean_and_spread([v * scale for v in self.values(figure)])


def configurations(records: Sequence[SweepRecord]) -> list[Configuration]:
    """The completed configurations of a sweep, with their repeats' figures."""
    return [Configuration(rec.label or rec.key, dict(rec.config), [r.figures() for r in rec.runs],
                          [r.peak["probes"] for r in rec.runs if r.peak is not None])
            for rec in records if rec.ok and rec.runs]


def varying_keys(settings: Sequence[Mapping[str, Any]]) -> set[str]:
    """The names whose value differs between the given settings (a missing name counts as null)."""
    names = {n for s in settings for n in s}
    return {n for n in names if len({json.dumps(s.get(n), sort_keys=True, default=str) for s in settings}) > 1}


def varying_label(settings: Mapping[str, Any], varying: set[str] | Sequence[str]) -> str:
    """'model=resnet18 max_batch_size=8': the settings among `varying`, in the settings' own order
    (a sweep record's: batch, compile, concurrency, workers, ..., then the axes); '' when none varies."""
    names = [n for n in settings if n in varying] + sorted(n for n in varying if n not in settings)
    return " ".join(f"{n}={show_value(settings.get(n))}" for n in names)


def common_value(configs: Sequence[Mapping[str, Any]], name: str) -> Any:
    """The value every configuration has for `name`; None when they differ or none has it."""
    values = {json.dumps(c.get(name), sort_keys=True, default=str) for c in configs}
    return configs[0].get(name) if configs and len(values) == 1 else None


def sweep_title(records: Sequence[SweepRecord], host: str) -> str:
    """'resnet18 on AMD EPYC (cpu), 64x64 px, batch 8, host vm': what every configuration shares, so a
    setting that varies (two models, two image sizes) is named by each line's label, never by the title."""
    configs = [rec.config for rec in records]
    model, size, batch = (common_value(configs, n) for n in ("model", "image_size", "batch_size"))
    device = common_value(configs, "device")
    ran = next((rec for rec in records if rec.runs), None)
    if ran is not None:
        info = ran.server_info()
        name = info.get("device_name")
        if device is not None and name:
            device = f"{name} ({info.get('device') or device})"
        host = info.get("hostname") or host
    parts = [f"{model} on {device}" if model is not None and device is not None else model or device,
             f"{size}x{size} px" if size is not None else None, f"batch {batch}" if batch is not None else None,
             f"host {host}"]
    return ", ".join(str(p) for p in parts if p is not None)


# -- reading sweeps and result files -----------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A sweep or result file as a dict; ValueError naming the file if it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a sweep or a result file")
    return data


def sweep_records(data: Mapping[str, Any]) -> list[SweepRecord]:
    """The records of a sweep file's dict."""
    return [SweepRecord.from_dict(rec) for rec in data.get("configurations", [])]


def completed_records(results_dir: Path) -> dict[str, SweepRecord]:
    """Configurations completed by the sweeps in `results_dir` (for --resume), by key, the newest winning."""
    done: dict[str, SweepRecord] = {}
    for path in sorted(results_dir.glob("sweep-*.json")):
        try:
            records = sweep_records(read_json(path))
        except ValueError:
            continue
        done.update((rec.key, rec) for rec in records if rec.ok)
    return done


def result_settings(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result file's configuration: the client's settings and the server's, as the run recorded them."""
    if is_peak_result(result):
        result = {"config": {}, "summary": result.get("at_peak") or {}}
    settings = {k: v for k, v in (result.get("config") or {}).items() if k not in ("servers", "merged_from")}
    server = (result.get("summary") or {}).get("server_config")
    if server:
        settings.update({k: v for k, v in json.loads(server).items() if k not in ("bind", "ready_file")})
    return settings


def load_side(path: Path) -> list[Configuration]:
    """The configurations of one side: a sweep, a result file, or a folder of either. ValueError if unreadable."""
    if path.is_dir():
        sweeps = sorted(path.glob("sweep-*.json"))
        if sweeps:
            return _sweep(sweeps[-1])
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"{path}: no sweep-*.json and no result files (*.json)")
        return _results(files)
    data = read_json(path)
    return _sweep(path, data) if "configurations" in data else _results([path])


def _sweep(path: Path, data: dict[str, Any] | None = None) -> list[Configuration]:
    found = configurations(sweep_records(data if data is not None else read_json(path)))
    if not found:
        raise ValueError(f"{path}: no configuration completed")
    return found


def _results(paths: list[Path]) -> list[Configuration]:
    """Result files, grouped into configurations by their settings (each file a repeat)."""
    groups: dict[str, Configuration] = {}
    for path in paths:
        data = read_json(path)
        if not is_peak_result(data) and "latency" not in data:
            raise ValueError(f"{path}: not a result of infer-client --json-file")
        settings = result_settings(data)
        key = json.dumps(settings, sort_keys=True, default=str)
        figures = peak_figures(data) if is_peak_result(data) else run_figures(data)
        groups.setdefault(key, Configuration(path.stem, settings)).repeats.append(figures)
    return list(groups.values())
