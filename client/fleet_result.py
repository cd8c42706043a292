"""A fleet's part of a result: each rank's share and figures, the start skew, what went missing.

`FleetInfo` rides on the merged `RunResult` (its `fleet` field) that rank 0
writes: one `RankRow` per rank with its share of the load, its requests,
throughput and latency histogram (the merged histogram is the exact merge of
these), its clock offset to rank 0 with the offset's uncertainty, how late its
first send was after the announced start, and, for a rank that went away, when
and why. `fleet_lines` and `fleet_row` are its part of the text report and of
the CSV row.

Times: `window` and `start_unix` are on rank 0's clock. A rank's start offset is
measured on its own clock against its own reading of the start instant, so it
is exact there; across ranks each is uncertain by that rank's clock uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from client.metrics import LatencyStats


@dataclass
class RankRow:
    """One rank: who and where, its share, what it measured, and how its clock and start compare to rank 0's."""

    rank: int
    host: str = ""
    pid: int = 0
    share: dict[str, Any] = field(default_factory=dict)  # num_iters, request_rate, concurrency, seed
    sent: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    throughput: float = 0.0  # samples/s over its own window
    latency: LatencyStats = field(default_factory=LatencyStats)
    window: list[float] | None = None  # its measured phase on rank 0's clock (Unix s)
    start_offset_s: float | None = None  # its first send after the announced start instant
    clock_offset_s: float | None = None  # rank 0's clock minus this rank's
    clock_uncertainty_s: float | None = None  # the true offset is within clock_offset_s +- this
    rtt_s: float | None = None  # the round trip the offset was estimated from
    gone_at_s: float | None = None  # after the start instant, on rank 0's clock: it went away
    gone_reason: str = ""
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["latency"] = self.latency.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankRow:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["latency"] = LatencyStats.from_dict(d.get("latency") or {})
        return cls(**kwargs)


@dataclass
class FleetInfo:
    """The fleet behind a merged result."""

    launcher: str  # "Open MPI", "Slurm", "flags", "--processes" (on one host), ...
    world_size: int
    coordinator: str
    start_unix: float  # the announced start instant, on rank 0's clock
    batch_size: int = 1
    load_per_rank: bool = False
    ranks: list[RankRow] = field(default_factory=list)

    @property
    def missing(self) -> list[RankRow]:
        """Ranks whose result is not in the merged one."""
        return [r for r in self.ranks if r.gone_at_s is not None]

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def start_skew_s(self) -> float | None:
        """Latest minus earliest first send across the ranks that reported, on rank 0's clock."""
        starts = [r.start_offset_s for r in self.ranks if r.start_offset_s is not None]
        return max(starts) - min(starts) if len(starts) > 1 else None

    @property
    def skew_uncertainty_s(self) -> float:
        """How far off the skew can be from the clock offsets' uncertainty: the two largest added."""
        known = sorted((r.clock_uncertainty_s or 0.0 for r in self.ranks if r.start_offset_s is not None),
                       reverse=True)
        return sum(known[:2])

    @property
    def max_clock_offset_s(self) -> float | None:
        offsets = [abs(r.clock_offset_s) for r in self.ranks if r.clock_offset_s is not None]
        return max(offsets) if offsets else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ranks"] = [r.to_dict() for r in self.ranks]
        d["start_skew_s"] = self.start_skew_s
        d["skew_uncertainty_s"] = self.skew_uncertainty_s
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FleetInfo | None:
        if not d:
            return None
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["ranks"] = [RankRow.from_dict(r) for r in d.get("ranks") or []]
        return cls(**kwargs)


def merge_fleet_infos(infos: list[FleetInfo | None]) -> FleetInfo | None:
    """A result merged again (infer-merge) is no longer one fleet's: its table would mislead."""
    return infos[0] if len(infos) == 1 else None


# -- the report -----------------------------------------------------------------------

def fleet_row(info: FleetInfo | None) -> dict[str, Any]:
    """The CSV columns of a fleet (empty for a single client); whether it is valid is the run's `valid`."""
    if info is None:
        return {"ranks": None, "start_skew": None, "start_skew_uncertainty": None, "max_clock_offset": None,
                "ranks_missing": None}
    return {
        "ranks": info.world_size,
        "start_skew": info.start_skew_s,
        "start_skew_uncertainty": info.skew_uncertainty_s,
        "max_clock_offset": info.max_clock_offset_s,
        "ranks_missing": len(info.missing),
    }


def fleet_lines(info: FleetInfo | None) -> list[str]:
    """The fleet's part of the text report: who ran, how together they started, each rank and host (whether
    the result is valid, a rank missing included, is the run's verdict: client/validity.py)."""
    if info is None:
        return []
    word = "processes" if info.launcher == "--processes" else "ranks"
    hosts = list(dict.fromkeys(r.host for r in info.ranks))
    lines = [
        f"fleet: {info.world_size} {word} on {len(hosts)} host{'s' if len(hosts) > 1 else ''}"
        f" ({info.launcher}), coordinated by rank 0 at {info.coordinator};"
        f" load {'per rank' if info.load_per_rank else 'split across the ranks'}",
        f"start skew: {_ms(info.start_skew_s)} (latest minus earliest first send on rank 0's clock,"
        f" +- {_ms(info.skew_uncertainty_s)} from the clock offsets);"
        f" largest clock offset {_ms(info.max_clock_offset_s)}",
    ]
    for r in info.missing:
        lines.append(f"PARTIAL: rank {r.rank} ({r.host}) went away {r.gone_at_s:.3f} s after the start: "
                     f"{r.gone_reason}; its requests are not in this result")
    return lines + _table(info)


COLUMNS = ("rank", "host", "requests", "samples/s", "p50 ms", "p99 ms", "start +ms", "clock offset ms")


def _table(info: FleetInfo) -> list[str]:
    rows = [_rank_cells(r) for r in info.ranks]
    by_host: dict[str, list[RankRow]] = {}
    for r in info.ranks:
        by_host.setdefault(r.host, []).append(r)
    if len(by_host) < len(info.ranks) or len(by_host) > 1:
        rows += [_host_cells(host, ranks, info.batch_size) for host, ranks in by_host.items()]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:>{w}}}" if i != 1 else f"{{:<{w}}}" for i, w in enumerate(widths))
    return ["  " + fmt.format(*COLUMNS), *("  " + fmt.format(*row).rstrip() for row in rows)]


def _rank_cells(r: RankRow) -> list[str]:
    offset = "n/a" if r.clock_offset_s is None else (
        f"{r.clock_offset_s * 1e3:+.3f} +- {(r.clock_uncertainty_s or 0) * 1e3:.3f}")
    if r.gone_at_s is not None:
        return [str(r.rank), r.host, "GONE", f"at {r.gone_at_s:.3f} s", "", "", "", offset]
    return [str(r.rank), r.host, str(r.ok), f"{r.throughput:.1f}", _num(r.latency.percentile_s(50)),
            _num(r.latency.percentile_s(99)), _num(r.start_offset_s), offset]


def _host_cells(host: str, ranks: list[RankRow], batch_size: int) -> list[str]:
    """A host's ranks together: requests added, throughput over the union of their windows."""
    live = [r for r in ranks if r.gone_at_s is None]
    hist = LatencyStats()
    for r in live:
        hist.merge(r.latency)
    windows = [r.window for r in live if r.window]
    ok = sum(r.ok for r in live)
    span = max(w[1] for w in windows) - min(w[0] for w in windows) if windows else 0.0
    rate = sum(r.throughput for r in live) if span <= 0 else ok * batch_size / span
    starts = [r.start_offset_s for r in live if r.start_offset_s is not None]
    return [_ranks_label([r.rank for r in ranks]), f"{host} (host)", str(ok), f"{rate:.1f}",
            _num(hist.percentile_s(50)), _num(hist.percentile_s(99)), _num(max(starts) if starts else None), ""]


def _ranks_label(ranks: list[int]) -> str:
    """'0-2' for consecutive ranks, else '0,2,5'."""
    if len(ranks) > 1 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def _num(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f} ms"
