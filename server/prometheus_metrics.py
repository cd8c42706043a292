"""The Prometheus metrics of an infer-server: a STATS reply, the per-request histograms and INFO, as metric families.

Every metric the endpoint serves is named here (docs/server.md lists them, and a test
checks the list against it). Counters and gauges are a STATS reply read as it is, so
the endpoint shows nothing STATS would not. GPU figures are STATS's `gpu` map taken
generically: each numeric key becomes `infer_server_gpu_<key>` with its unit suffix
turned into a Prometheus base unit (`gpu_metric_name`), so a figure the sampler adds
later is served without a change here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from common.gpu import OPTIONAL_FIGURES
from common.protocol import StatsReplyHeader
from server.histograms import STAGES, HistogramSnapshot

PREFIX = "infer_server_"
Value = float | dict[tuple[str, ...], float]  # one value, or one per tuple of label values


@dataclass(frozen=True)
class Spec:
    """One metric read from a STATS reply: `name` without the `_total` Prometheus adds to counters."""

    name: str
    kind: str  # "counter" or "gauge"
    unit: str  # for the reader: docs/server.md shows it
    help: str
    read: Callable[[StatsReplyHeader], Value]
    labels: tuple[str, ...] = ()


def _count(name: str) -> Callable[[StatsReplyHeader], float]:
    return lambda s: getattr(s.counters, name)


def _backpressure(name: str) -> Callable[[StatsReplyHeader], float]:
    return lambda s: (s.backpressure or {}).get(name, 0)


def _errors_by_code(s: StatsReplyHeader) -> dict[tuple[str, ...], float]:
    return {(code.name.lower(),): n for code, n in s.counters.errors.items()}


def _dropped_by_cause(s: StatsReplyHeader) -> dict[tuple[str, ...], float]:
    c = s.counters
    return {("gone",): c.replies_dropped_gone, ("hwm",): c.replies_dropped_hwm, ("bytes",): c.replies_dropped_bytes}


STATS_METRICS: tuple[Spec, ...] = (
    Spec("messages_received", "counter", "messages",
         "Messages of any type that reached the I/O loop, scrapes' own STATS included.", _count("received")),
    Spec("infer_requests_received", "counter", "requests",
         "INFER requests whose prefix was valid.", _count("infer_received")),
    Spec("infer_requests_answered", "counter", "requests", "INFER requests answered with a RESULT.", _count("answered")),
    Spec("infer_requests_failed", "counter", "requests",
         "INFER requests answered with an ERROR (refused, or the model failed).", _count("infer_errors")),
    Spec("errors_sent", "counter", "replies", "ERROR replies to any request type, by error code.",
         _errors_by_code, ("code",)),
    Spec("replies_other", "counter", "replies",
         "INFO, STATS_REPLY, CONTROL_REPLY and shared-memory replies.", _count("replies_other")),
    Spec("replies_dropped", "counter", "replies",
         "Replies libzmq would not take, by cause: gone (peer disconnected), hwm (its queue at SNDHWM), "
         "bytes (its queued replies at --max-queued-reply-bytes).", _dropped_by_cause, ("cause",)),
    Spec("send_blocked_episodes", "counter", "episodes",
         "Episodes of a peer's queue refusing replies.", _count("send_blocked")),
    Spec("send_blocked_seconds", "counter", "seconds", "Total duration of those episodes.",
         lambda s: s.counters.send_blocked_ns / 1e9),
    Spec("connections_accepted", "counter", "connections", "Connections accepted.", _count("peers_connected")),
    Spec("connections_closed", "counter", "connections", "Connections closed, by either side.",
         _count("peers_disconnected")),
    Spec("handshakes_failed", "counter", "connections",
         "Connections whose ZMTP or CURVE handshake failed.", _count("handshakes_failed")),
    Spec("shm_infer_requests_received", "counter", "requests",
         "INFER requests accepted whose input was in shared memory.", _count("shm_infer_received")),
    Spec("shm_regions_registered", "counter", "regions", "Shared-memory regions registered.",
         _count("shm_registered")),
    Spec("shm_regions_unregistered", "counter", "regions", "Shared-memory regions unregistered.",
         _count("shm_unregistered")),
    Spec("shm_peers_released", "counter", "peers",
         "Clients whose regions were released because their process exited.", _count("shm_peers_released")),
    Spec("cpu_seconds", "counter", "seconds", "CPU time of the server process, by mode.",
         lambda s: {("user",): s.cpu_user_s, ("system",): s.cpu_system_s}, ("mode",)),
    Spec("inflight_requests", "gauge", "requests", "INFER requests accepted and not yet answered.",
         lambda s: s.inflight),
    Spec("inflight_peak_requests", "gauge", "requests", "The most requests in flight at once since the start.",
         lambda s: s.inflight_peak),
    Spec("inflight_bytes", "gauge", "bytes", "Input bytes of the requests in flight.", lambda s: s.inflight_bytes),
    Spec("workers_busy", "gauge", "threads", "Prediction threads running a job now.", lambda s: s.workers_busy),
    Spec("connections_open", "gauge", "connections", "Connections open now.", _backpressure("connections")),
    Spec("blocked_peers", "gauge", "peers", "Peers whose last reply was refused because their queue was full.",
         _backpressure("blocked_peers")),
    Spec("queued_reply_bytes", "gauge", "bytes", "Bytes of large replies handed to libzmq and not yet written out.",
         _backpressure("queued_reply_bytes")),
    Spec("queued_reply_peers", "gauge", "peers", "Peers those queued bytes belong to.",
         _backpressure("queued_reply_peers")),
    Spec("resident_memory_bytes", "gauge", "bytes", "Resident memory of the server process.", lambda s: s.rss_bytes),
    Spec("uptime_seconds", "gauge", "seconds", "Seconds since the server set up its loop (before warm-up).",
         lambda s: s.uptime_s),
    Spec("compiled_graphs", "gauge", "graphs", "Graphs torch.compile produced in this process.",
         lambda s: s.compiled_graphs),
)

SHM_METRICS: tuple[tuple[str, str, str, str], ...] = (  # (STATS shm key, metric name, unit, help); with /dev/shm
    ("regions", "shm_regions", "regions", "Shared-memory regions attached now."),
    ("peers", "shm_peers", "peers", "Clients with a region attached now."),
    ("mapped_bytes", "shm_mapped_bytes", "bytes", "Bytes of shared memory mapped now."),
    ("pinned_regions", "shm_pinned_regions", "regions", "Regions page-locked for the device."),
)

HISTOGRAMS: dict[str, tuple[str, str]] = {  # stage -> (metric name, help)
    "queue": ("request_queue_seconds", "Time a request waited between decoding and a prediction thread taking it."),
    "compute": ("request_compute_seconds", "The model's time for the forward pass that served a request."),
    "server": ("request_server_seconds", "A request's whole time in the server: the sum of every stage."),
}
assert tuple(HISTOGRAMS) == STAGES

INFO_METRIC = "infer_server"  # InfoMetricFamily adds `_info`: infer_server_info
SCRAPE_OK = "stats_available"

# STATS gpu keys end with a unit; Prometheus wants base units: (suffix, new suffix, factor).
_GPU_UNITS = (("_pct", "_ratio", 0.01), ("_mhz", "_hertz", 1e6), ("_w", "_watts", 1.0), ("_c", "_celsius", 1.0),
              ("_mj", "_joules", 1e-3), ("_kbs", "_kilobytes_per_second", 1.0),
              ("_ns", "_seconds", 1e-9), ("_ms", "_seconds", 1e-3), ("_s", "_seconds", 1.0))
# What common/gpu.py samples; `t_ns` is when a sample was taken, a timestamp rather than a figure.
GPU_SAMPLER_KEYS = ("util_pct", "mem_used_bytes", "mem_total_bytes", *OPTIONAL_FIGURES)
GPU_NOT_FIGURES = frozenset({"t_ns"})


def gpu_metric_name(key: str) -> tuple[str, float]:
    """(metric name, factor to its unit) for a key of STATS's `gpu` map: util_pct -> infer_server_gpu_util_ratio."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    for suffix, unit, factor in _GPU_UNITS:
        if name.endswith(suffix):
            return f"{PREFIX}gpu_{name[: -len(suffix)]}{unit}", factor
    return f"{PREFIX}gpu_{name}", 1.0


def _numbers(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numeric leaves of a map, nested keys joined by `_` (text, lists and booleans are not figures)."""
    for key, value in d.items():
        if isinstance(value, Mapping):
            yield from _numbers(value, f"{prefix}{key}_")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


def stats_families(stats: StatsReplyHeader) -> Iterator[Metric]:
    """The counters and gauges of one STATS reply."""
    yield GaugeMetricFamily(PREFIX + SCRAPE_OK, "1: the I/O loop answered this scrape's STATS in time.", value=1)
    for spec in STATS_METRICS:
        family_cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        value = spec.read(stats)
        if not spec.labels:
            yield family_cls(PREFIX + spec.name, spec.help, value=value)
            continue
        family = family_cls(PREFIX + spec.name, spec.help, labels=spec.labels)
        for label_values, v in value.items():
            family.add_metric(label_values, v)
        yield family
    if stats.shm is not None:
        for key, name, _unit, help_text in SHM_METRICS:
            yield GaugeMetricFamily(PREFIX + name, help_text, value=stats.shm.get(key, 0))
    for key, value in _numbers(stats.gpu or {}):
        if key in GPU_NOT_FIGURES:
            continue
        name, factor = gpu_metric_name(key)
        yield GaugeMetricFamily(name, f"STATS gpu.{key} ({stats.gpu_source}), in base units.", value=value * factor)


def unavailable_family() -> Metric:
    return GaugeMetricFamily(PREFIX + SCRAPE_OK, "1: the I/O loop answered this scrape's STATS in time.", value=0)


def histogram_families(snapshots: Mapping[str, HistogramSnapshot]) -> Iterator[Metric]:
    for stage, (name, help_text) in HISTOGRAMS.items():
        snap = snapshots[stage]
        yield HistogramMetricFamily(PREFIX + name, help_text, buckets=snap.cumulative(), sum_value=snap.sum_s)


def info_labels(info: Mapping[str, Any]) -> dict[str, str]:
    """The info metric's labels from an INFO reply body (server.describe())."""
    labels = {
        "model": info.get("model"), "device": info.get("device"), "device_name": info.get("device_name"),
        "precision": info.get("precision"),
        "compile_mode": info.get("compile_mode") if info.get("compile") else "none",
        "num_workers": info.get("num_workers"), "max_batch_size": info.get("max_batch_size"),
        # Not `instance`: Prometheus gives every sample its target's `instance` label.
        "version": info.get("server_version"), "server_instance": info.get("instance"),
    }
    return {k: "" if v is None else str(v) for k, v in labels.items()}


def info_family(labels: Mapping[str, str]) -> Metric:
    return InfoMetricFamily(INFO_METRIC, "What this server runs: model, device, precision, compile mode, workers.",
                            value=dict(labels))


def workers_family(workers: int) -> Metric:
    return GaugeMetricFamily(PREFIX + "workers", "Prediction threads (0: the I/O thread runs the model).",
                             value=workers)


def exported_names() -> set[str]:
    """Every sample name the endpoint can serve, GPU figures as common/gpu.py samples them today."""
    names = {PREFIX + SCRAPE_OK, PREFIX + "workers", INFO_METRIC + "_info"}
    for spec in STATS_METRICS:
        names.add(PREFIX + spec.name + ("_total" if spec.kind == "counter" else ""))
    names |= {PREFIX + name for _key, name, _unit, _help in SHM_METRICS}
    for name, _help in HISTOGRAMS.values():
        names |= {PREFIX + name + suffix for suffix in ("_bucket", "_sum", "_count")}
    names |= {gpu_metric_name(key)[0] for key in GPU_SAMPLER_KEYS}
    return names

