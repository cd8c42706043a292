"""The human-readable report of a `RunResult` (its flat row, the CSV's columns, is client/results.py).

Every figure in the text carries its unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client.fleet_result import fleet_lines
from client.gpu_report import gpu_lines
from client.provenance import utc_timestamp
from common.protocol import BREAKDOWN

if TYPE_CHECKING:
    from client.result_parts import BackendResult, ColdStart
    from client.results import RunResult

MAX_WINDOWS_SHOWN = 10


def format_text(r: RunResult) -> str:
    s = r.summary()
    failed = f" {r.failed}" if r.failed else ""
    lines = [
        *_context_lines(r),
        *fleet_lines(r.fleet),
        f"requests: {r.ok} ok, {r.failed_total} failed{failed}, {r.lost} lost"
        f" (batch {r.batch_size}, {r.duration_s:.3f} s)",
        f"throughput: {r.throughput:.1f} samples/s",
        f"latency: mean {_ms(s['average_latency'])}, min {_ms(s['min_latency'])}, p50 {_ms(s['p50_latency'])},"
        f" p90 {_ms(s['p90_latency'])}, p99 {_ms(s['p99_latency'])}, p99.9 {_ms(s['p99_9_latency'])},"
        f" max {_ms(s['max_latency'])}",
        f"warm-up latency (first request): {_ms(r.warmup_latency)}",
        *(_cold_start_line(c) for c in r.cold_start),
        "server breakdown (mean): "
        + ", ".join(f"{n} {_ms(r.breakdown[n].mean_s)}" for n in BREAKDOWN)
        + f"; transport+client {_ms(r.breakdown['transport'].mean_s)}",
        f"schedule lag: p50 {_ms(s['p50_schedule_lag'])}, p99 {_ms(s['p99_schedule_lag'])},"
        f" max {_ms(s['max_schedule_lag'])}",
        *_schedule_lines(r),
        *_resource_lines(r),
        *gpu_lines(r),
        *_backpressure_lines(r),
        *(f"profile trace: {trace}" for trace in r.profile_trace),
        *_verdict_lines(r, s),
        *_backend_lines(r, s),
    ]
    return "\n".join(lines)


def _context_lines(r: RunResult) -> list[str]:
    lines = []
    if r.interrupted:
        lines.append(f"INTERRUPTED (Ctrl-C): a partial result, {r.duration_s:.3f} s measured")
    if r.host:
        label = r.config.get("label")
        when = utc_timestamp(r.window_unix[0] if r.window_unix else r.started_unix)
        lines.append(f"run: {when} on {r.host}, commit {(r.git_commit or 'unknown')[:12]}"
                     + (f", label {label!r}" if label else ""))
    return lines


def _schedule_lines(r: RunResult) -> list[str]:
    if not r.schedule.client_behind:
        return []
    cap = r.config.get("concurrency")
    return [
        f"WARNING: the client could not keep up with {r.schedule.offered_rate} requests/s"
        f" (sent at {r.schedule.send_rate or 0:.1f} requests/s)"
        + (f"; --concurrency {cap} capped the requests in flight" if cap else "")
    ]


def _resource_lines(r: RunResult) -> list[str]:
    gpu = r.gpu
    if gpu.get("util_mean") is not None:
        line = (
            f"GPU ({gpu.get('source')}): busy {gpu['util_mean']:.1f}% of the time (NVML: a kernel was running),"
            f" memory peak {gpu.get('mem_peak_bytes', 0) / 2**20:.0f} MiB"
        )
    else:
        line = f"GPU: not available ({gpu.get('reason', 'no GPU')})"
    cpu = f"CPU: client {_pct(r.cpu.get('client_pct'))}, server {_pct(r.cpu.get('server_pct'))} (100% = one core)"
    return [line, cpu]


def _backpressure_lines(r: RunResult) -> list[str]:
    """One line per server that reported its ZeroMQ backpressure over the window."""
    endpoints = r.config.get("servers") or []
    lines = []
    for i, bp in enumerate(r.backpressure):
        if not bp:
            continue
        where = f" ({endpoints[i]})" if i < len(endpoints) else ""
        lines.append(
            f"ZeroMQ{where}: {bp.get('replies_dropped', 0)} replies dropped"
            f" ({bp.get('replies_dropped_gone', 0)} peer gone, {bp.get('replies_dropped_hwm', 0)} at the"
            f" high-water mark, {bp.get('replies_dropped_bytes', 0)} over the byte budget),"
            f" send queue full {bp.get('send_blocked', 0)} times for {_ms(bp.get('send_blocked_ns', 0) / 1e9)},"
            f" connections {bp.get('peers_connected', 0)} opened, {bp.get('peers_disconnected', 0)} closed"
        )
    return lines


def _verdict_lines(r: RunResult, s: dict[str, Any]) -> list[str]:
    lines = ["valid: yes (the client kept up; docs/metrics.md)" if s["valid"]
             else f"NOT VALID: {s['invalid_reasons']}"]
    if s["goodput"] is not None:
        lines.append(
            f"goodput (latency <= {s['slo_ms']} ms): {s['goodput']:.1f} samples/s,"
            f" {100 * s['goodput_fraction']:.1f}% of requests"
        )
    if r.stable is not None:
        lines.append(_windows_line(r))
    return lines


def _windows_line(r: RunResult) -> str:
    """The verdict and each window's figures (the last MAX_WINDOWS_SHOWN), as perf_analyzer lists its windows."""
    line = f"windows: {len(r.windows)}, {'stable' if r.stable else 'NOT stable'}"
    if not r.windows:
        return line
    shown = r.windows[-MAX_WINDOWS_SHOWN:]
    which = "each" if len(shown) == len(r.windows) else f"the last {len(shown)}"
    figures = ", ".join(f"{w.throughput:.1f} samples/s p50 {_ms(w.p50_s)}" for w in shown)
    return f"{line} ({which}: {figures})"


def _backend_lines(r: RunResult, s: dict[str, Any]) -> list[str]:
    if len(r.backends) == 1:
        b = r.backends[0]
        return [f"server {b.endpoint}" + _outage(b).lstrip(",")] if b.lost_reason else []
    if not r.backends:
        return []
    lines = [
        f"backends: {len(r.backends)}, load-balance skew {_ratio(s['backend_skew'])}"
        " (max/min per-backend throughput among backends that stayed up; 1.00 = even)"
    ]
    for b in r.backends:
        lines.append(
            f"  backend {b.endpoint}: {b.ok} ok, {sum(b.failed.values())} failed,"
            f" {b.lost} lost, {b.throughput:.1f} samples/s, p50 {_ms(b.latency.percentile_s(50))}"
            + _outage(b)
        )
    return lines


def _cold_start_line(c: ColdStart) -> str:
    first = ", ".join(f"{shape} {_sec(s)}" for shape, s in (c.first_call_s or {}).items()) or "n/a"
    line = (
        f"cold start ({c.endpoint}): start to ready {_sec(c.startup_s)},"
        f" load {_sec(c.torch_load_time)}, compile/warm-up {_sec(c.m_compile_time)};"
        f" first call per shape: {first}"
    )
    if c.compiled_graphs:
        line += f"; {c.compiled_graphs} graphs compiled ({c.compiled_graphs - 1} recompilations)"
    return line


def _outage(b: BackendResult) -> str:
    if not b.lost_reason:
        return ""
    text = f", LOST at {b.lost_at_s:.3f} s: {b.lost_reason}"
    if b.recovery_s is not None:
        text += f"; back after {b.recovery_s:.3f} s ({b.recoveries or 1} recovery)"
    return text


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.3f} ms"


def _sec(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f} s"


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _pct(v: float | list | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "/".join("n/a" if x is None else f"{x:.0f}%" for x in v)
    return f"{v:.0f}%"
