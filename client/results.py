"""`RunResult`: everything one client run measured, and what follows from it.

Like torch.utils.benchmark's Measurement, it computes its own statistics
(`summary()`), serialises losslessly (`to_dict`/`from_dict`, histograms in
HdrHistogram's encoded form), writes CSV rows, and merges runs from several
client processes or hosts (`merge`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.metrics import BREAKDOWN, LatencyStats

# Columns of the CSV and of `summary()`, in order. The seed's names come first,
# in its units (seconds, samples/s).
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


@dataclass
class RunResult:
    config: dict[str, Any]
    servers: list[dict[str, Any]]
    batch_size: int
    started_unix: float
    duration_s: float
    throughput: float
    sent: int
    ok: int
    failed: dict[str, int]
    lost: int
    latency: LatencyStats
    rtt: LatencyStats
    schedule_lag: LatencyStats
    breakdown: dict[str, LatencyStats]
    backends: list[dict[str, Any]]
    warmup_latency: float | None
    gpu: dict[str, Any]
    cpu: dict[str, Any]
    windows: list[dict[str, Any]] = field(default_factory=list)
    stable: bool | None = None
    under_slo: int = 0
    schedule: dict[str, Any] = field(default_factory=dict)
    cold_start: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True
    parts: int = 1

    # -- statistics --------------------------------------------------------

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> dict[str, Any]:
        """One flat row: the seed's metrics first, then percentiles, breakdown, config."""
        cfg = self.config
        first = self.servers[0] if self.servers else {}
        lat = self.latency
        row: dict[str, Any] = {
            "warmup_latency": self.warmup_latency,
            "average_latency": lat.mean_s,
            "min_latency": lat.min_ns / 1e9 if lat.count else None,
            "max_latency": lat.max_ns / 1e9 if lat.count else None,
            "throughput": self.throughput,
            "gpu_util": self.gpu.get("util_mean"),
            "torch_load_time": max((s.get("torch_load_time") or 0.0 for s in self.servers), default=None),
            "m_compile_time": max((s.get("m_compile_time") or 0.0 for s in self.servers), default=None),
        }
        for p in ("p50", "p90", "p95", "p99", "p99_9"):
            row[f"{p}_latency"] = lat.percentile_s(float(p[1:].replace("_", ".")))
        row["stdev_latency"] = lat.stdev_s
        row["p50_rtt"] = self.rtt.percentile_s(50)
        row["p50_schedule_lag"] = self.schedule_lag.percentile_s(50)
        row["p99_schedule_lag"] = self.schedule_lag.percentile_s(99)
        row["max_schedule_lag"] = self.schedule_lag.max_ns / 1e9 if self.schedule_lag.count else None
        for name in (*BREAKDOWN, "transport"):
            row[f"server_{name}_mean" if name != "transport" else "transport_mean"] = self.breakdown[name].mean_s
        row["requests_ok"] = self.ok
        row["requests_failed"] = self.failed_total
        row["requests_lost"] = self.lost
        row["backends"] = len(self.backends)
        row["backend_skew"] = backend_skew(self.backends)
        slo = cfg.get("slo_ms")
        row["slo_ms"] = slo
        row["goodput_fraction"] = self.under_slo / self.sent if slo is not None and self.sent else None
        row["goodput"] = (
            self.under_slo * self.batch_size / self.duration_s if slo is not None and self.duration_s else None
        )
        row["gpu_mem_peak_bytes"] = self.gpu.get("mem_peak_bytes")
        row["gpu_power_mean_w"] = self.gpu.get("power_mean_w")
        row["client_cpu_pct"] = self.cpu.get("client_pct")
        row["server_cpu_pct"] = self.cpu.get("server_pct")
        row["stable"] = self.stable
        row["duration_s"] = self.duration_s
        row["batch_size"] = self.batch_size
        row["image_size"] = cfg.get("image_size")
        row["wire_dtype"] = cfg.get("wire_dtype")
        row["compile"] = first.get("compile")
        row["device"] = first.get("device")
        row["num_workers"] = first.get("num_workers")
        row["model"] = first.get("model")
        row["concurrency"] = cfg.get("concurrency")
        row["request_rate"] = cfg.get("request_rate")
        row["endpoint"] = " ".join(cfg.get("servers", []))
        row["processes"] = self.parts
        return row

    def format_text(self) -> str:
        """A human-readable report; every figure with its unit."""
        s = self.summary()

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v * 1e3:.3f} ms"

        lines = [
            f"requests: {self.ok} ok, {self.failed_total} failed{' ' + str(self.failed) if self.failed else ''}, {self.lost} lost"
            f" (batch {self.batch_size}, {self.duration_s:.3f} s)",
            f"throughput: {self.throughput:.1f} samples/s",
            f"latency: mean {ms(s['average_latency'])}, min {ms(s['min_latency'])}, p50 {ms(s['p50_latency'])},"
            f" p90 {ms(s['p90_latency'])}, p99 {ms(s['p99_latency'])}, p99.9 {ms(s['p99_9_latency'])},"
            f" max {ms(s['max_latency'])}",
            f"warm-up latency (first request): {ms(self.warmup_latency)}",
            *(_cold_start_line(c) for c in self.cold_start),
            "server breakdown (mean): "
            + ", ".join(f"{n} {ms(self.breakdown[n].mean_s)}" for n in BREAKDOWN)
            + f"; transport+client {ms(self.breakdown['transport'].mean_s)}",
            f"schedule lag: p50 {ms(s['p50_schedule_lag'])}, p99 {ms(s['p99_schedule_lag'])},"
            f" max {ms(s['max_schedule_lag'])}",
        ]
        if self.schedule.get("client_behind"):
            lines.append(
                f"WARNING: the client could not keep up with {self.schedule.get('offered_rate')} requests/s"
                f" (sent at {self.schedule.get('send_rate') or 0:.1f} requests/s)"
                + (f"; --concurrency {cap} capped the requests in flight" if (cap := self.config.get("concurrency"))
                   else "")
            )
        gpu = self.gpu
        if gpu.get("util_mean") is not None:
            lines.append(
                f"GPU ({gpu.get('source')}): busy {gpu['util_mean']:.1f}% of the time (NVML: a kernel was running),"
                f" memory peak {gpu.get('mem_peak_bytes', 0) / 2**20:.0f} MiB"
            )
        else:
            lines.append(f"GPU: not available ({gpu.get('reason', 'no GPU')})")
        cpu_server = self.cpu.get("server_pct")
        lines.append(
            f"CPU: client {_pct(self.cpu.get('client_pct'))}, server {_pct(cpu_server)} (100% = one core)"
        )
        if s["goodput"] is not None:
            lines.append(
                f"goodput (latency <= {s['slo_ms']} ms): {s['goodput']:.1f} samples/s,"
                f" {100 * s['goodput_fraction']:.1f}% of requests"
            )
        if self.stable is not None:
            lines.append(f"windows: {len(self.windows)}, {'stable' if self.stable else 'NOT stable'}")
        if len(self.backends) > 1:
            lines.append(
                f"backends: {len(self.backends)}, load-balance skew {_ratio(s['backend_skew'])}"
                " (max/min per-backend throughput among backends that stayed up; 1.00 = even)"
            )
            for b in self.backends:
                lines.append(
                    f"  backend {b['endpoint']}: {b['ok']} ok, {sum(b['failed'].values())} failed,"
                    f" {b['lost']} lost, {b['throughput']:.1f} samples/s, p50 {ms(b['latency'].percentile_s(50))}"
                    + _outage(b)
                )
        elif self.backends and self.backends[0]["lost_reason"]:
            lines.append(f"server {self.backends[0]['endpoint']}" + _outage(self.backends[0]).lstrip(","))
        return "\n".join(lines)

    # -- serialisation -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "config": self.config,
            "servers": self.servers,
            "batch_size": self.batch_size,
            "started_unix": self.started_unix,
            "duration_s": self.duration_s,
            "throughput": self.throughput,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "lost": self.lost,
            "latency": self.latency.to_dict(),
            "rtt": self.rtt.to_dict(),
            "schedule_lag": self.schedule_lag.to_dict(),
            "breakdown": {k: v.to_dict() for k, v in self.breakdown.items()},
            "backends": [{**b, "latency": b["latency"].to_dict()} for b in self.backends],
            "warmup_latency": self.warmup_latency,
            "gpu": self.gpu,
            "cpu": self.cpu,
            "windows": self.windows,
            "stable": self.stable,
            "under_slo": self.under_slo,
            "schedule": self.schedule,
            "cold_start": self.cold_start,
            "complete": self.complete,
            "parts": self.parts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        d.pop("summary", None)
        for key in ("latency", "rtt", "schedule_lag"):
            d[key] = LatencyStats.from_dict(d[key])
        d["breakdown"] = {k: LatencyStats.from_dict(v) for k, v in d["breakdown"].items()}
        d["backends"] = [{**b, "latency": LatencyStats.from_dict(b["latency"])} for b in d["backends"]]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def write_json(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read_json(cls, path: Path) -> RunResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def append_csv(self, path: Path) -> None:
        append_csv_row(path, self.summary())

    # -- merging -----------------------------------------------------------

    @classmethod
    def merge(cls, results: list[RunResult]) -> RunResult:
        """Combine runs that happened at the same time (processes or hosts).

        Histograms merge exactly. Throughput is the sum of the parts' throughputs:
        each part measured its own window on its own clock, and clocks of
        different hosts cannot be compared.
        """
        if not results:
            raise ValueError("nothing to merge")
        first = results[0]

        def merged(get: Any) -> LatencyStats:
            out = LatencyStats()
            for r in results:
                out.merge(get(r))
            return out

        failed: dict[str, int] = {}
        for r in results:
            for k, v in r.failed.items():
                failed[k] = failed.get(k, 0) + v
        gpu_utils = [r.gpu.get("util_mean") for r in results if r.gpu.get("util_mean") is not None]
        return cls(
            config={**first.config, "merged_from": [r.config for r in results]},
            servers=first.servers,
            batch_size=first.batch_size,
            started_unix=min(r.started_unix for r in results),
            duration_s=max(r.duration_s for r in results),
            throughput=sum(r.throughput for r in results),
            sent=sum(r.sent for r in results),
            ok=sum(r.ok for r in results),
            failed=failed,
            lost=sum(r.lost for r in results),
            latency=merged(lambda r: r.latency),
            rtt=merged(lambda r: r.rtt),
            schedule_lag=merged(lambda r: r.schedule_lag),
            breakdown={k: merged(lambda r, k=k: r.breakdown[k]) for k in first.breakdown},
            backends=_merge_backends(results),
            warmup_latency=max((r.warmup_latency for r in results if r.warmup_latency is not None), default=None),
            # Parts on one host see the same GPU: report one part's figures
            # rather than inventing an average of overlapping samples.
            gpu={**first.gpu, "util_mean": max(gpu_utils) if gpu_utils else None},
            cpu={
                "client_pct": sum(r.cpu.get("client_pct") or 0.0 for r in results),
                "server_pct": first.cpu.get("server_pct"),
            },
            windows=[],
            stable=None if any(r.stable is None for r in results) else all(r.stable for r in results),
            under_slo=sum(r.under_slo for r in results),
            schedule=first.schedule,
            cold_start=first.cold_start,
            complete=all(r.complete for r in results),
            parts=sum(r.parts for r in results),
        )


def _merge_backends(results: list[RunResult]) -> list[dict[str, Any]]:
    by_endpoint: dict[str, dict[str, Any]] = {}
    for r in results:
        for b in r.backends:
            cur = by_endpoint.get(b["endpoint"])
            if cur is None:
                by_endpoint[b["endpoint"]] = {**b, "failed": dict(b["failed"]), "latency": LatencyStats().merge(b["latency"])}
                continue
            for key in ("sent", "ok", "lost", "throughput"):
                cur[key] += b[key]
            for k, v in b["failed"].items():
                cur["failed"][k] = cur["failed"].get(k, 0) + v
            cur["latency"].merge(b["latency"])
            if b.get("lost_reason") and not cur.get("lost_reason"):
                cur["lost_reason"], cur["lost_at_s"] = b["lost_reason"], b["lost_at_s"]
    return list(by_endpoint.values())


def _cold_start_line(c: dict[str, Any]) -> str:
    def sec(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f} s"

    first = ", ".join(f"{shape} {sec(s)}" for shape, s in (c.get("first_call_s") or {}).items()) or "n/a"
    graphs = c.get("compiled_graphs")
    line = (
        f"cold start ({c.get('endpoint')}): start to ready {sec(c.get('startup_s'))},"
        f" load {sec(c.get('torch_load_time'))}, compile/warm-up {sec(c.get('m_compile_time'))};"
        f" first call per shape: {first}"
    )
    if graphs:
        line += f"; {graphs} graphs compiled ({graphs - 1} recompilations)"
    return line


def backend_skew(backends: list[dict[str, Any]]) -> float | None:
    """Load-balance skew: max / min per-backend throughput, over backends that were not lost.

    1.0 means the requests were spread evenly; 2.0 means the busiest backend
    served twice as many samples per second as the least busy. A lost backend
    is left out (its throughput covers only part of the run and it is reported
    on its own); None with fewer than two live backends, inf if one served nothing.
    """
    live = [b["throughput"] for b in backends if not b.get("lost_reason")]
    if len(live) < 2:
        return None
    low = min(live)
    return max(live) / low if low > 0 else float("inf")


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _outage(b: dict[str, Any]) -> str:
    if not b.get("lost_reason"):
        return ""
    text = f", LOST at {b['lost_at_s']:.3f} s: {b['lost_reason']}"
    if b.get("recovery_s") is not None:
        text += f"; back after {b['recovery_s']:.3f} s ({b.get('recoveries', 1)} recovery)"
    return text


def _pct(v: float | list | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "/".join("n/a" if x is None else f"{x:.0f}%" for x in v)
    return f"{v:.0f}%"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file and rename, so an interrupted run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _csv_value(v: Any) -> Any:
    if isinstance(v, list):
        return " ".join("" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x) for x in v)
    return "" if v is None else v


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row, writing the header first if the file is new or empty.

    The row is written with a single write() on a file opened for appending, so
    an interrupted run leaves whole rows. If the file's header differs from ours
    the row follows the file's columns (unknown ones left empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(row)
    header_needed = not path.exists() or path.stat().st_size == 0
    if not header_needed:
        with open(path, newline="") as f:
            existing = next(csv.reader(f), None)
        if existing:
            columns = existing
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header_needed:
        writer.writerow(columns)
    writer.writerow([_csv_value(row.get(c)) for c in columns])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, buf.getvalue().encode())
    finally:
        os.close(fd)
