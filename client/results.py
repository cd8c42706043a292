"""`RunResult`: everything one client run measured, and what follows from it.

Like torch.utils.benchmark's Measurement, it is built from the run
(`from_run`), computes its own statistics (`summary()`), serialises losslessly
(`to_dict`/`from_dict`, histograms in HdrHistogram's encoded form) and merges
runs from several client processes or hosts (`merge`). How each field is
serialised and merged is declared once, on the field. The human-readable
report is client/report.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.fleet_result import FleetInfo, fleet_row, merge_fleet_infos
from client.gpu_report import gpu_columns
from client.metrics import LatencyStats, Window, is_stable
from client.provenance import git_commit, hostname, utc_timestamp
from client.result_parts import (
    BackendResult,
    ColdStart,
    Schedule,
    backend_skew,
    first_known,
    max_known,
    merge_backends,
    merge_backpressure,
    merge_configs,
    merge_counts,
    merge_cpu,
    merge_first,
    merge_gpu,
    merge_hist_maps,
    merge_hosts,
    merge_stable,
    merge_windows,
    merged_hist,
    plain_from_dict,
    plain_to_dict,
)
from client.validity import invalid_reasons
from common.fileio import append_csv_row, json_text, write_atomic
from common.protocol import BREAKDOWN, InfoHeader

if TYPE_CHECKING:
    from client.config import ClientConfig
    from client.loop import MeasureLoop
    from client.metrics import Recorder

__all__ = ["SEED_COLUMNS", "BackendResult", "ColdStart", "RunResult", "Schedule", "backend_skew", "write_atomic"]

# Columns of the CSV and of `summary()`, in order. The seed's names (README.md) come first, in its units
# (seconds, samples/s), so its tables and ours read alike.
SEED_COLUMNS = (
    "warmup_latency",
    "average_latency",
    "min_latency",
    "max_latency",
    "throughput",
    "gpu_util",
    "torch_load_time",
    "m_compile_time",
)


def _codec(encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
    return {"encode": encode, "decode": decode}


def _list_codec(cls: type) -> dict[str, Any]:
    to_dict = getattr(cls, "to_dict", plain_to_dict)
    from_dict = getattr(cls, "from_dict", None) or (lambda d: plain_from_dict(cls, d))
    return _codec(lambda xs: [to_dict(x) for x in xs], lambda xs: [from_dict(x) for x in xs])


_HIST = _codec(LatencyStats.to_dict, LatencyStats.from_dict)
_HIST_MAP = _codec(
    lambda m: {k: v.to_dict() for k, v in m.items()}, lambda m: {k: LatencyStats.from_dict(v) for k, v in m.items()}
)
_SCHEDULE = _codec(plain_to_dict, lambda d: plain_from_dict(Schedule, d))
_FLEET = _codec(lambda f: f.to_dict() if f is not None else None, FleetInfo.from_dict)


def _rule(merge: Callable[[list[Any]], Any], codec: dict[str, Any] | None = None, **kw: Any) -> Any:
    return field(metadata={"merge": merge, **(codec or {})}, **kw)


@dataclass
class RunResult:
    config: dict[str, Any] = _rule(merge_configs)
    servers: list[dict[str, Any]] = _rule(merge_first)  # each server's INFO
    batch_size: int = _rule(merge_first)
    started_unix: float = _rule(min)
    duration_s: float = _rule(max)  # first send to last reply
    # Merged throughput: the sum of the parts' when they ran on different hosts (each measured its own
    # window on its own clock, and those clocks cannot be compared); on one host, `merge` recomputes it
    # over the union of the parts' windows.
    throughput: float = _rule(sum)  # samples/s
    sent: int = _rule(sum)
    ok: int = _rule(sum)
    failed: dict[str, int] = _rule(merge_counts)  # error name -> replies
    lost: int = _rule(sum)  # in flight when their server was lost
    latency: LatencyStats = _rule(merged_hist, _HIST)  # from the scheduled send time
    rtt: LatencyStats = _rule(merged_hist, _HIST)  # from the actual send time
    schedule_lag: LatencyStats = _rule(merged_hist, _HIST)
    breakdown: dict[str, LatencyStats] = _rule(merge_hist_maps, _HIST_MAP)  # BREAKDOWN and "transport"
    backends: list[BackendResult] = _rule(merge_backends, _list_codec(BackendResult))
    warmup_latency: float | None = _rule(max_known)
    gpu: dict[str, Any] = _rule(merge_gpu)
    cpu: dict[str, Any] = _rule(merge_cpu)
    windows: list[Window] = _rule(lambda _: [], _list_codec(Window), default_factory=list)
    stable: bool | None = _rule(merge_stable, default=None)
    under_slo: int = _rule(sum, default=0)
    schedule: Schedule = _rule(merge_first, _SCHEDULE, default_factory=lambda: Schedule("closed"))
    cold_start: list[ColdStart] = _rule(merge_first, _list_codec(ColdStart), default_factory=list)
    complete: bool = _rule(all, default=True)
    parts: int = _rule(sum, default=1)  # client processes merged into this result
    interrupted: bool = _rule(any, default=False)  # Ctrl-C ended the measurement early: a partial result
    host: str | None = _rule(merge_hosts, default=None)  # the client's host (merged: every host, comma-separated)
    git_commit: str | None = _rule(first_known, default=None)  # of the client's checkout
    # The measured phase on the client host's wall clock (Unix s): first send, last reply.
    window_unix: list[float] | None = _rule(merge_windows, default=None)
    # Per server (as `servers`): how much its BACKPRESSURE_COUNTERS grew over the window; None for a
    # server that gave no STATS or restarted meanwhile. Empty when the file read has no such field.
    backpressure: list[dict[str, int] | None] = _rule(merge_backpressure, default_factory=list)
    # The torch.profiler traces the servers wrote of the window (--profile-dir), paths on their hosts.
    profile_trace: list[str] = _rule(lambda parts: [t for p in parts for t in p], default_factory=list)
    # A fleet's ranks (or --processes' processes): each one's share and figures, start skew, who went away.
    fleet: FleetInfo | None = _rule(merge_fleet_infos, _FLEET, default=None)

    # -- from a run ----------------------------------------------------------

    @classmethod
    def from_run(
        cls,
        config: ClientConfig,
        servers: list[dict[str, Any]],
        started_unix: float,
        loop: MeasureLoop,
        recorder: Recorder,
        resources: dict[str, Any],
        cold_start: list[ColdStart],
    ) -> RunResult:
        """Combine the I/O thread's sends and outages with the metrics thread's replies."""
        batch, start_ns = config.batch_size, loop.start_ns
        backends = [BackendResult.from_run(link, r, batch, start_ns) for link, r in zip(loop.links, recorder.backends)]
        end_ns = max((r.last_recv_ns for r in recorder.backends if r.last_recv_ns is not None), default=start_ns)
        duration_s = max(1e-9, (end_ns - start_ns) / 1e9)
        ok = sum(b.ok for b in backends)
        windows = list(recorder.windows)
        stable = is_stable(windows, config.stability_windows, config.stability_tolerance) if config.window_s else None
        # The wall-clock time of the first send, from the monotonic clock's offset now.
        start_unix = time.time() - (time.monotonic_ns() - start_ns) / 1e9
        return cls(
            config=config.to_dict(),
            servers=servers,
            batch_size=batch,
            started_unix=started_unix,
            duration_s=duration_s,
            throughput=ok * batch / duration_s if ok else 0.0,
            sent=loop.sent,
            ok=ok,
            failed=merge_counts(b.failed for b in backends),
            lost=loop.lost,
            latency=recorder.latency,
            rtt=recorder.rtt,
            schedule_lag=recorder.schedule_lag,
            breakdown=recorder.breakdown,
            backends=backends,
            warmup_latency=cold_start[0].warmup_latency if cold_start else None,
            gpu=resources.get("gpu", {}),
            cpu=resources.get("cpu", {}),
            windows=windows,
            stable=stable,
            under_slo=recorder.under_slo,
            schedule=Schedule.of_run(config.request_rate, loop),
            cold_start=cold_start,
            complete=loop.complete,
            host=hostname(),
            git_commit=git_commit(),
            window_unix=[start_unix, start_unix + (end_ns - start_ns) / 1e9],
            backpressure=list(resources.get("backpressure") or []),
            profile_trace=list(resources.get("profile_trace") or []),
        )

    # -- statistics ----------------------------------------------------------

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def invalid_reasons(self) -> list[str]:
        """Why the figures are not (only) the server's (client/validity.py); empty when valid."""
        return invalid_reasons(self)

    @property
    def valid(self) -> bool:
        return not self.invalid_reasons

    def summary(self) -> dict[str, Any]:
        """One flat row (the CSV's): the seed's metrics first, then percentiles, breakdown, config."""
        return summary_row(self)

    def format_text(self) -> str:
        """The human-readable report (client/report.py, which imports this module only for its types)."""
        from client.report import format_text

        return format_text(self)

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": self.summary()}
        for f in fields(self):
            encode = f.metadata.get("encode")
            value = getattr(self, f.name)
            out[f.name] = encode(value) if encode else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """Read `to_dict`'s form; a field the dict lacks takes its default (so files of an earlier format,
        such as tests/client/data/result_format_1.json, still load)."""
        kwargs = {}
        for f in fields(cls):
            if f.name in d:
                decode = f.metadata.get("decode")
                kwargs[f.name] = decode(d[f.name]) if decode else d[f.name]
        return cls(**kwargs)

    def to_json(self) -> str:
        return json_text(self.to_dict(), separators=(",", ":"))

    def write_json(self, path: Path) -> None:
        write_atomic(path, json_text(self.to_dict(), indent=1))

    @classmethod
    def read_json(cls, path: Path) -> RunResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def append_csv(self, path: Path) -> None:
        append_csv_row(path, self.summary())

    def write(self, csv_path: Path | None, json_path: Path | None) -> list[str]:
        """The JSON file written and the CSV row appended (each where a path is given); says what was
        written, for the user. OSError as the file system raised it."""
        if json_path is not None:
            self.write_json(json_path)
        if csv_path is not None:
            self.append_csv(csv_path)
        return ([f"a row appended to {csv_path.resolve()}"] if csv_path is not None else []) + (
            [f"the full result in {json_path.resolve()}"] if json_path is not None else [])

    # -- merging -------------------------------------------------------------

    @classmethod
    def merge(cls, results: list[RunResult]) -> RunResult:
        """Combine runs that happened at the same time (processes or hosts); histograms merge exactly."""
        if not results:
            raise ValueError("nothing to merge")
        merged = cls(**{f.name: f.metadata["merge"]([getattr(r, f.name) for r in results]) for f in fields(cls)})
        hosts = {r.host for r in results}
        if len(results) > 1 and len(hosts) == 1 and None not in hosts and merged.window_unix is not None:
            # One host, one clock: the samples answered over the union of the windows. Summing the
            # parts' rates would count a window twice when the parts ran one after the other.
            start, end = merged.window_unix
            merged.duration_s = max(1e-9, end - start)
            merged.throughput = merged.ok * merged.batch_size / merged.duration_s if merged.ok else 0.0
        return merged

    def windows_overlap(self, other: RunResult) -> bool | None:
        """Whether the two measured phases overlapped in time (None: a result that does not say when it ran)."""
        if self.window_unix is None or other.window_unix is None:
            return None
        return self.window_unix[0] < other.window_unix[1] and other.window_unix[0] < self.window_unix[1]


# -- the flat row: the CSV's columns and `summary()` ---------------------------------------------


def summary_row(r: RunResult) -> dict[str, Any]:
    """One flat row: the seed's metrics first (SEED_COLUMNS), then percentiles, breakdown, config, context,
    validity, and the GPU telemetry (client/gpu_report.py)."""
    reasons = r.invalid_reasons  # columns are only ever added at the end
    return {**_seed_row(r), **_latency_row(r), **_outcome_row(r), **_config_row(r), **_context_row(r),
            "valid": not reasons, "invalid_reasons": "; ".join(reasons), **gpu_columns(r), **fleet_row(r.fleet)}


def _seed_row(r: RunResult) -> dict[str, Any]:
    lat = r.latency
    servers = [InfoHeader.from_wire(s) for s in r.servers]
    return {
        "warmup_latency": r.warmup_latency,
        "average_latency": lat.mean_s,
        "min_latency": lat.min_ns / 1e9 if lat.count else None,
        "max_latency": lat.max_ns / 1e9 if lat.count else None,
        "throughput": r.throughput,
        "gpu_util": r.gpu.get("util_mean"),
        "torch_load_time": max((s.torch_load_time or 0.0 for s in servers), default=None),
        "m_compile_time": max((s.m_compile_time or 0.0 for s in servers), default=None),
    }


def _latency_row(r: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for p in ("p50", "p90", "p95", "p99", "p99_9"):
        row[f"{p}_latency"] = r.latency.percentile_s(float(p[1:].replace("_", ".")))
    row["stdev_latency"] = r.latency.stdev_s
    row["p50_rtt"] = r.rtt.percentile_s(50)
    lag = r.schedule_lag
    row["p50_schedule_lag"] = lag.percentile_s(50)
    row["p99_schedule_lag"] = lag.percentile_s(99)
    row["max_schedule_lag"] = lag.max_ns / 1e9 if lag.count else None
    for name in BREAKDOWN:
        row[f"server_{name}_mean"] = r.breakdown[name].mean_s
    row["transport_mean"] = r.breakdown["transport"].mean_s
    return row


def _outcome_row(r: RunResult) -> dict[str, Any]:
    slo = r.config.get("slo_ms")
    return {
        "requests_ok": r.ok,
        "requests_failed": r.failed_total,
        "requests_lost": r.lost,
        "backends": len(r.backends),
        "backend_skew": backend_skew(r.backends),
        "slo_ms": slo,
        "goodput_fraction": r.under_slo / r.sent if slo is not None and r.sent else None,
        "goodput": r.under_slo * r.batch_size / r.duration_s if slo is not None and r.duration_s else None,
        "gpu_mem_peak_bytes": r.gpu.get("mem_peak_bytes"),
        "gpu_power_mean_w": r.gpu.get("power_mean_w"),
        "client_cpu_pct": r.cpu.get("client_pct"),
        "server_cpu_pct": r.cpu.get("server_pct"),
        "stable": r.stable,
        "duration_s": r.duration_s,
    }


def _config_row(r: RunResult) -> dict[str, Any]:
    cfg = r.config
    first = InfoHeader.from_wire(r.servers[0] if r.servers else {})
    return {
        "batch_size": r.batch_size,
        "image_size": cfg.get("image_size"),
        "wire_dtype": cfg.get("wire_dtype"),
        "compile": first.compile,
        "device": first.device,
        "num_workers": first.num_workers,
        "model": first.model,
        "concurrency": cfg.get("concurrency"),
        "request_rate": cfg.get("request_rate"),
        "endpoint": " ".join(cfg.get("servers", [])),
        "processes": r.parts,
    }


def _context_row(r: RunResult) -> dict[str, Any]:
    """When, where and how the run happened: the client's load and the server's whole configuration."""
    cfg = r.config
    first = InfoHeader.from_wire(r.servers[0] if r.servers else {})
    open_loop = bool(cfg.get("request_rate"))
    return {
        "timestamp_utc": utc_timestamp(r.window_unix[0] if r.window_unix else r.started_unix),
        "host": r.host,
        "git_commit": r.git_commit,
        "label": cfg.get("label"),
        "interrupted": r.interrupted,
        "transport": cfg.get("transport"),
        "load": r.schedule.mode,
        "arrival": cfg.get("arrival") if open_loop else None,
        "burstiness": cfg.get("burstiness") if open_loop else None,
        "seed": cfg.get("seed"),
        "num_iters": cfg.get("num_iters"),
        "duration_limit_s": cfg.get("duration_s"),
        "precision": first.precision,
        "channels_last": first.channels_last,
        "compile_mode": first.compile_mode,
        "max_batch_size": first.max_batch_size,
        "batch_timeout_us": first.batch_timeout_us,
        "server_threads": first.torch_threads,
        "server_max_inflight": first.max_inflight,
        "server_host": first.hostname,
        "server_version": first.server_version,
        "server_config": json.dumps(first.config, sort_keys=True, separators=(",", ":")) if first.config else None,
        "profile_trace": " ".join(r.profile_trace) or None,
    }
