"""The typed parts of a `RunResult`: per-server results, cold start, how the load was offered.

Each field of `BackendResult` declares how parts of one run seen by several
client processes merge (`metadata["merge"]`), as `RunResult`'s fields do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from client.latency import LatencyStats

if TYPE_CHECKING:
    from client.loop import Link, MeasureLoop
    from client.metrics import ReplyCounts
    from common.protocol import InfoHeader, StatsReplyHeader


def merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Add up count maps such as {"OVERLOADED": 3}."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def plain_to_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def plain_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a dataclass from a JSON map, ignoring keys it does not know (files from newer versions)."""
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def first_known(values: list[Any]) -> Any:
    return next((v for v in values if v not in (None, "")), values[0])


def max_known(values: list[Any]) -> Any:
    return max((v for v in values if v is not None), default=None)


def merged_hist(values: list[LatencyStats]) -> LatencyStats:
    out = LatencyStats()
    for v in values:
        out.merge(v)
    return out


@dataclass
class BackendResult:
    """One server's share of a run: replies counted by the metrics thread, sends and outages by the I/O thread."""

    endpoint: str
    sent: int = field(default=0, metadata={"merge": sum})
    ok: int = field(default=0, metadata={"merge": sum})
    failed: dict[str, int] = field(default_factory=dict, metadata={"merge": merge_counts})
    lost: int = field(default=0, metadata={"merge": sum})
    lost_at_s: float | None = field(default=None, metadata={"merge": first_known})  # since the first send
    recovery_s: float | None = field(default=None, metadata={"merge": first_known})  # last outage's length
    recoveries: int = field(default=0, metadata={"merge": max})
    lost_reason: str = field(default="", metadata={"merge": first_known})
    throughput: float = field(default=0.0, metadata={"merge": sum})  # samples/s until its last reply
    latency: LatencyStats = field(default_factory=LatencyStats, metadata={"merge": merged_hist})

    @classmethod
    def from_run(cls, link: Link, replies: ReplyCounts, batch_size: int, start_ns: int) -> BackendResult:
        span_s = max(1e-9, ((replies.last_recv_ns or start_ns) - start_ns) / 1e9)
        return cls(
            endpoint=replies.endpoint,
            sent=link.sent,
            ok=replies.ok,
            failed=dict(replies.failed),
            lost=link.lost,
            lost_at_s=link.lost_at_s,
            recovery_s=link.recovery_s,
            recoveries=link.recoveries,
            lost_reason=link.lost_reason,
            throughput=replies.ok * batch_size / span_s if replies.ok else 0.0,
            latency=replies.latency,
        )

    @classmethod
    def merge(cls, parts: list[BackendResult]) -> BackendResult:
        """The same server seen by several client processes (outage details from the first that saw one)."""
        merged = {f.name: f.metadata["merge"]([getattr(p, f.name) for p in parts]) for f in fields(cls) if f.metadata}
        return cls(endpoint=parts[0].endpoint, **merged)

    def to_dict(self) -> dict[str, Any]:
        return {**plain_to_dict(self), "failed": dict(self.failed), "latency": self.latency.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendResult:
        return plain_from_dict(cls, {**d, "latency": LatencyStats.from_dict(d["latency"])})

    # Read access by key, for callers written when backends were plain dicts.
    def __getitem__(self, key: str) -> Any:
        if key not in _BACKEND_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _BACKEND_KEYS else default


_BACKEND_KEYS = frozenset(f.name for f in fields(BackendResult))


@dataclass
class ColdStart:
    """How one server became ready, from its INFO and this client's warm-up (plus its STATS after the run)."""

    endpoint: str
    startup_s: float | None = None  # process start to ready
    torch_load_time: float | None = None
    m_compile_time: float | None = None  # the seed's name: compile and warm-up at start-up
    warmup_latency: float | None = None  # the client's first warm-up request
    first_call_s: dict[str, float] | None = None  # per input shape, first call after start-up
    compiled_graphs: int | None = None

    @classmethod
    def from_info(cls, endpoint: str, info: InfoHeader, warmup_latency: float | None) -> ColdStart:
        return cls(endpoint, info.startup_s, info.torch_load_time, info.m_compile_time, warmup_latency)

    def add_stats(self, stats: StatsReplyHeader | None) -> None:
        """What the server knows only after the first requests ran (its STATS at the end)."""
        if stats is not None:
            self.first_call_s = stats.first_call_s
            self.compiled_graphs = stats.compiled_graphs


@dataclass
class Schedule:
    """How the load was offered, and whether the client kept to it."""

    mode: str  # "closed": a fixed number in flight; "open": requests on a schedule
    offered_rate: float | None = None  # requests/s asked for
    send_rate: float | None = None  # requests/s really sent
    behind_at_end_s: float | None = None  # last send's lateness against its scheduled time
    client_behind: bool = False  # the offered load was not offered: do not report it as such

    @classmethod
    def of_run(cls, request_rate: float | None, loop: MeasureLoop) -> Schedule:
        if not request_rate:
            return cls(mode="closed")
        send_span = max(1e-9, (loop.last_send_ns - loop.start_ns) / 1e9)
        behind_s = (loop.last_send_ns - loop.last_scheduled_ns) / 1e9
        return cls(
            mode="open",
            offered_rate=request_rate,
            send_rate=(loop.sent - 1) / send_span if loop.sent > 1 else None,
            behind_at_end_s=behind_s,
            # More than 5% of the run (and 10 ms) behind the schedule at the end.
            client_behind=behind_s > max(0.01, 0.05 * send_span),
        )


def backend_skew(backends: list[BackendResult]) -> float | None:
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


# -- how RunResult's fields merge (its `_rule`s) --------------------------------------------------


def merge_first(values: list[Any]) -> Any:
    return values[0]


def merge_configs(configs: list[dict[str, Any]]) -> dict[str, Any]:
    return {**configs[0], "merged_from": configs}


def merge_hist_maps(maps: list[dict[str, LatencyStats]]) -> dict[str, LatencyStats]:
    return {k: merged_hist([m[k] for m in maps]) for k in maps[0]}


def merge_backends(lists: list[list[BackendResult]]) -> list[BackendResult]:
    by_endpoint: dict[str, list[BackendResult]] = {}
    for backends in lists:
        for b in backends:
            by_endpoint.setdefault(b.endpoint, []).append(b)
    return [BackendResult.merge(parts) for parts in by_endpoint.values()]


def merge_gpu(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    # Parts on one host see the same GPU: report one part's figures rather
    # than inventing an average of overlapping samples.
    utils = [g.get("util_mean") for g in gpus if g.get("util_mean") is not None]
    return {**gpus[0], "util_mean": max(utils) if utils else None}


def merge_cpu(cpus: list[dict[str, Any]]) -> dict[str, Any]:
    # Each part is its own client process; the servers are the same ones. Each process has its own GIL: the
    # busiest one says whether a client was the limit.
    gil = [c["client_gil_pct"] for c in cpus if c.get("client_gil_pct") is not None]
    return {**cpus[0], "client_pct": sum(c.get("client_pct") or 0.0 for c in cpus),
            "client_gil_pct": max(gil) if gil else None}


def merge_stable(values: list[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def merge_hosts(hosts: list[str | None]) -> str | None:
    known = list(dict.fromkeys(h for h in hosts if h))
    return ",".join(known) or None


def merge_windows(windows: list[list[float] | None]) -> list[float] | None:
    if any(w is None for w in windows):
        return None
    return [min(w[0] for w in windows), max(w[1] for w in windows)]  # type: ignore[index]


def merge_backpressure(parts: list[list[dict[str, int] | None]]) -> list[dict[str, int] | None]:
    # Every part watched the same servers over overlapping windows: the widest view of each server
    # (the largest growth of each counter) rather than a sum that would count the overlap twice.
    merged: list[dict[str, int] | None] = []
    for per_server in itertools.zip_longest(*parts):
        known = [w for w in per_server if w]
        merged.append({k: max(w.get(k, 0) for w in known) for k in known[0]} if known else None)
    return merged
