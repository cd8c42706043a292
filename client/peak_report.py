"""The peak search in words: the probe table, the confirmation and the answer, or why there is none."""

from __future__ import annotations

import math

from client.peak import PERCENTILE_KEYS, PeakResult, Probe
from client.verdict import UNDECIDED, TailObjective


def format_search(result: PeakResult) -> str:
    """The search as the CLI prints it: settings, the probe table, the confirmation and the peak."""
    s, peak = result.search, result.peak
    name = f"p{s.percentile:g}"
    lines = [
        f"peak search: {name} <= {s.slo_ms:g} ms shown at confidence {s.confidence:g}, tolerance "
        f"{s.tolerance:.0%}; each probe {s.objective.min_requests}-{s.requests} requests, at most "
        f"{s.max_probe_s:g} s; capacity probe {result.capacity_rps:.4g} requests/s at concurrency "
        f"{result.capacity_concurrency}",
        f"{'rate (req/s)':>13} {'verdict':>9} {'requests':>8} {'over':>6} {name + ' (ms)':>10} "
        f"{name + ' <= (ms)':>11} {'samples/s':>10}  reason",
    ]
    lines += [format_probe(p) for p in result.probes]
    if peak is None:
        lines.append(no_peak_reason(result))
        return "\n".join(lines)
    if result.confirmation is not None:
        lines += ["confirmation at the peak, on a schedule of its own:", format_probe(result.confirmation)]
    at = result.at_peak
    shown = " ".join(f"{n} {at.figures[k] * 1e3:.4g}" for n, k in PERCENTILE_KEYS.items()
                     if at.figures.get(k) is not None)
    note = "" if result.converged else " (not converged: no failing rate within the tolerance above it)"
    if result.confirmation is not None and not result.confirmation.passed:
        note += " (NOT CONFIRMED: the confirmation run did not pass)"
    lines.append(f"peak: {peak.rate:.4g} requests/s = {peak.rate * result.batch_size:.4g} samples/s{note}; "
                 f"latency there (ms): {shown}; {name} <= {_ms(at.latency_high_s)} ms at confidence "
                 f"{s.confidence:g}, from {at.requests} requests")
    return "\n".join(lines)


def out_of_time(probe: Probe, objective: TailObjective) -> bool:
    """Undecided with its share over the bound under q, and stopped by time before its request limit: more
    time might show a pass."""
    return (probe.verdict == UNDECIDED and probe.requests < objective.request_limit
            and probe.over_slo < objective.q * probe.requests)


def no_peak_reason(result: PeakResult) -> str:
    """Why a search found no peak, in one line: no rate met the objective, or none could be shown to in time."""
    s, last = result.search, result.probes[-1]
    if out_of_time(last, s.objective):
        return (f"no rate could be shown to meet p{s.percentile:g} <= {s.slo_ms:g} ms within a probe's "
                f"{s.max_probe_s:g} s: at {last.rate:.4g} requests/s {last.over_slo} of {last.requests} were "
                f"over, too few requests to decide, and below {s.min_rate:.3g} requests/s a probe cannot send "
                f"the {s.objective.min_requests} a verdict needs; raise --max-probe-s (max_probe_s)")
    return (f"no request rate down to {last.rate:.3g}/s met p{s.percentile:g} <= {s.slo_ms:g} ms "
            f"at confidence {s.confidence:g}")


def format_probe(p: Probe) -> str:
    verdict = "pass" if p.passed else ("FAIL" if p.verdict != UNDECIDED else "undecided")
    return (f"{p.rate:13.4g} {verdict:>9} {p.requests:8d} {p.over_slo:6d} {_ms(p.latency_s):>10} "
            f"{_ms(p.latency_high_s):>11} {p.throughput:10.4g}  {p.reason}")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return "inf" if math.isinf(seconds) else f"{seconds * 1e3:.4g}"
