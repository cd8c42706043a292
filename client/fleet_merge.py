"""The merged result of a fleet (or of --processes): one `RunResult` from every rank's, with its `FleetInfo`.

Histograms and counters merge exactly (`RunResult.merge`). The throughput is
counted over the ranks' common window: each rank's measured phase moved onto
rank 0's clock by its clock offset, and the union of those taken. Ranks that went
away are listed with when and why; their requests are not in the totals, and the
result is then partial (`complete` false).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from client.coordinator import Outcome, Rank
from client.fleet_result import FleetInfo, RankRow
from client.fleet_wire import FleetError
from client.results import RunResult

if TYPE_CHECKING:
    from client.config import ClientConfig


def merge_fleet(outcome: Outcome, config: ClientConfig, launcher: str, coordinator: str) -> RunResult:
    """One result from the ranks' results: the exact merge, over the common window on rank 0's clock."""
    parts = {r.rank: RunResult.from_dict(json.loads(r.result)) for r in outcome.ranks.values() if r.result}
    if not parts:
        raise FleetError("no rank's result arrived: nothing to report")
    merged = RunResult.merge(list(parts.values()))
    merged.config = {**config.to_dict(), "merged_from": [p.config for p in parts.values()]}
    rows = [_row(r, parts.get(r.rank), outcome.start_ns) for r in outcome.ranks.values()]
    windows = [row.window for row in rows if row.window and row.gone_at_s is None]
    if windows:
        start, end = min(w[0] for w in windows), max(w[1] for w in windows)
        merged.window_unix = [start, end]
        merged.duration_s = max(1e-9, end - start)
        merged.throughput = merged.ok * merged.batch_size / merged.duration_s if merged.ok else 0.0
    merged.fleet = FleetInfo(launcher, outcome.world_size, coordinator, outcome.start_ns / 1e9,
                             batch_size=merged.batch_size, load_per_rank=config.load_per_rank, ranks=rows)
    merged.complete = merged.complete and not merged.fleet.partial
    merged.interrupted = merged.interrupted or outcome.stopped
    return merged


def _row(rank: Rank, part: RunResult | None, start_ns: int) -> RankRow:
    clock = rank.clock
    offset_s = clock["offset_ns"] / 1e9 if clock else None
    row = RankRow(
        rank.rank, rank.host, rank.pid,
        clock_offset_s=offset_s,
        clock_uncertainty_s=clock["uncertainty_ns"] / 1e9 if clock else None,
        rtt_s=clock["rtt_ns"] / 1e9 if clock else None,
    )
    if rank.gone_ns is not None or part is None:
        row.gone_at_s = ((rank.gone_ns or start_ns) - start_ns) / 1e9
        row.gone_reason = rank.gone_reason or "no result"
        return row
    cfg = part.config
    row.share = {k: cfg.get(k) for k in ("num_iters", "request_rate", "concurrency", "seed")}
    row.sent, row.ok, row.failed, row.lost = part.sent, part.ok, part.failed_total, part.lost
    row.throughput, row.latency, row.interrupted = part.throughput, part.latency, part.interrupted
    if part.window_unix is not None:
        row.window = [t + (offset_s or 0.0) for t in part.window_unix]
    row.start_offset_s = rank.late_ns / 1e9 if rank.late_ns is not None else None
    return row
