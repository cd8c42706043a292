"""Whether a run measured the server, or the client: a verdict every result carries.

A load generator that cannot keep up still produces figures, and they look like
the server's. Each rule below names one way the client (or the run) became the
limit; a run is valid when none applies. The rules and their thresholds are
documented in docs/metrics.md ("Is the run valid?").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from client.results import RunResult

# Open loop: the p99 schedule lag (how late requests left against their scheduled time) over this share of the
# p99 latency (of the objective, when a verdict is judged against one), and over LAG_FLOOR_S, means a visible
# part of the latency is the client's own delay. On a busy 2-core machine the p99 lag of a 100 requests/s
# schedule is 1-2 ms (GIL hand-offs and scheduling), a tenth of a 10 ms latency.
LAG_SHARE = 0.25
LAG_FLOOR_S = 0.001
# The client's Python threads (the I/O loop and the metrics thread) share one GIL: together busy this share of
# one core over the window, they were the limit, whatever the server could do.
GIL_BUSY = 0.90
# Closed loop: transport + client over this share of the mean round trip means the figures describe the client
# and the network more than the server (the breakdown's server times make this measurable).
TRANSPORT_SHARE = 0.50


def invalid_reasons(r: RunResult, objective_s: float | None = None) -> list[str]:
    """Why the run's figures are not (only) the server's; empty when the run is valid.

    With `objective_s` (a latency bound a verdict judges), the schedule lag is weighed against it rather
    than against the run's own p99 latency."""
    reasons = []
    missing = r.fleet.missing if r.fleet is not None else []
    if r.failed_total or r.lost or (not r.complete and not missing):
        reasons.append(f"{r.failed_total} requests failed, {r.lost} lost")
    if missing:  # a fleet rank went away: its requests are not in the totals
        reasons.append("ranks missing: " + ", ".join(f"rank {m.rank} ({m.host}) went away {m.gone_at_s:.3f} s "
                                                      "after the start" for m in missing))
    if r.interrupted:
        reasons.append("interrupted: a partial result")
    reasons += _schedule_reasons(r, objective_s)
    gil = r.cpu.get("client_gil_pct")
    if gil is not None and gil >= 100 * GIL_BUSY:
        reasons.append(f"client CPU: its Python threads were busy {gil:.0f}% of one core (the GIL allows one)")
    if r.stable is False:
        reasons.append("measurement windows not stable")
    reasons += _transport_reasons(r)
    return reasons


def _schedule_reasons(r: RunResult, objective_s: float | None) -> list[str]:
    if r.schedule.mode != "open":
        return []
    reasons = []
    if r.schedule.client_behind:
        reasons.append(f"client behind its schedule: {r.schedule.behind_at_end_s or 0.0:.3g} s late at the end "
                       f"(sent {r.schedule.send_rate or 0.0:.4g} of {r.schedule.offered_rate:.4g} requests/s)")
    lag = r.schedule_lag.percentile_s(99)
    latency = objective_s or r.latency.percentile_s(99)
    if lag is not None and latency and lag > max(LAG_FLOOR_S, LAG_SHARE * latency):
        against = "the objective" if objective_s else "the p99 latency"
        reasons.append(f"schedule lag: p99 {lag * 1e3:.3g} ms is {lag / latency:.0%} of {against} "
                       f"(over {LAG_SHARE:.0%})")
    return reasons


def _transport_reasons(r: RunResult) -> list[str]:
    if r.schedule.mode != "closed" or not r.rtt.count:
        return []
    transport, rtt = r.breakdown["transport"].mean_s, r.rtt.mean_s
    if transport is None or not rtt or transport <= TRANSPORT_SHARE * rtt:
        return []
    return [f"transport+client is {transport / rtt:.0%} of the mean round trip (over {TRANSPORT_SHARE:.0%}): "
            "the figures describe the client and the network more than the server"]
