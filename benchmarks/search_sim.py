"""Where the peak search lands on an exact queue: the bisection of client/peak.py, each probe judged by the real
verdict on its own simulated sample path (benchmarks/queueing.py), and a confirmation at the peak.

Prints, per capacity (the search's first rate, as a fraction of 1 / service time: what a closed-loop
capacity probe measures on a real server), the found peak as a fraction of the crossing (its minimum,
1st and 10th percentiles, median and maximum over the seeds), the search's time (the requests sent
divided by each probe's rate), and how often the confirmation at the peak stayed undecided or failed. tests/client/test_peak_theory.py takes its lower limits from it:

    python benchmarks/search_sim.py --dist fixed --service-ms 3.5 --bound-ms 34.5 --percentile 99 \\
        --confidence 0.9 --max-requests 12000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.queueing import crossing, simulate  # noqa: E402
from benchmarks.verdict_sim import sequential  # noqa: E402
from client.peak import Probe, bracket_and_bisect, peak_of  # noqa: E402
from client.verdict import FAIL, PASS, UNDECIDED, TailObjective  # noqa: E402


def simulated_queue(service_s: float, dist: str, objective: TailObjective,
                    rng: np.random.Generator) -> Callable[[float], Probe]:
    """A probe on a simulated single-server queue, judged by the verdict as a real probe is."""

    def measure(rate: float) -> Probe:
        sojourn, idle = simulate(rate, service_s, dist, objective.request_limit, rng)
        d = sequential(objective, sojourn, idle)
        return Probe(rate, d.verdict == PASS, d.reason, d.percentile_s, rate, d.requests, d.over, d.verdict,
                     d.percentile_high_s, d.dispersion)

    return measure


def _search(probe: Callable[[float], Probe], first_rate: float, tolerance: float) -> tuple[Probe | None, list[Probe]]:
    """One search and its confirmation: (the peak, every probe run)."""
    spent: list[Probe] = []

    def measure(rate: float) -> Probe:
        spent.append(probe(rate))
        return spent[-1]

    peak = peak_of(bracket_and_bisect(first_rate, measure, tolerance))
    if peak is not None:
        measure(peak.rate)  # the confirmation
    return peak, spent


def searches(service_s: float, dist: str, objective: TailObjective, tolerance: float, capacity: float,
             seeds: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(peak / crossing, seconds, the confirmation's verdict) of `seeds` searches; a search that found no
    peak counts as 0, its verdict as ""."""
    cross = crossing(service_s, dist, objective.bound_s, objective.percentile)
    ratios, seconds, confirmed = [], [], []
    for seed in range(seeds):
        measure = simulated_queue(service_s, dist, objective, np.random.default_rng(seed))
        peak, spent = _search(measure, capacity / service_s, tolerance)
        ratios.append(peak.rate / cross if peak is not None else 0.0)
        seconds.append(sum(p.requests / p.rate for p in spent))
        confirmed.append(spent[-1].verdict if peak is not None else "")
    return np.array(ratios), np.array(seconds), confirmed


def meeting(service_s: float, dist: str, objective: TailObjective, requests: int, multiple: float,
            runs: int) -> float:
    """The share of open-loop runs of `requests` requests at `multiple` x the crossing, each from empty, whose
    percentile still meets the bound: how sure a run above the crossing is to show it broken."""
    rate = multiple * crossing(service_s, dist, objective.bound_s, objective.percentile)
    rng = np.random.default_rng(0)
    met = sum(np.percentile(simulate(rate, service_s, dist, requests, rng)[0], objective.percentile)
              <= objective.bound_s for _ in range(runs))
    return met / runs


def percentile_spread(service_s: float, dist: str, objective: TailObjective, requests: int, multiple: float,
                      runs: int) -> np.ndarray:
    """The 90th, 99th and 99.9th percentiles, over `runs` runs of `requests` requests at `multiple` x the
    crossing (each from empty), of the run's percentile / the bound: how far one finite run strays."""
    rate = multiple * crossing(service_s, dist, objective.bound_s, objective.percentile)
    rng = np.random.default_rng(1)
    ratios = [np.percentile(simulate(rate, service_s, dist, requests, rng)[0], objective.percentile) / objective.bound_s
              for _ in range(runs)]
    return np.quantile(ratios, [0.9, 0.99, 0.999])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", choices=("fixed", "exp"), required=True)
    parser.add_argument("--service-ms", type=float, required=True)
    parser.add_argument("--bound-ms", type=float, required=True)
    parser.add_argument("--percentile", type=float, default=99.0)
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--capacities", default="0.75,0.8,0.85,0.9")
    parser.add_argument("--seeds", type=int, default=300)
    parser.add_argument("--runs-of", type=int, help="instead: how often a run of this many requests above the "
                                                     "crossing still meets the objective")
    args = parser.parse_args()
    objective = TailObjective(args.bound_ms / 1e3, args.percentile, args.confidence, args.max_requests)
    if args.runs_of:
        print(f"{args.dist} {args.service_ms:g} ms, p{args.percentile:g} <= {args.bound_ms:g} ms: runs of "
              f"{args.runs_of} requests meeting it, of {args.seeds}")
        for m in (1.03, 1.05, 1.1, 1.15, 1.2):
            print(f"{m:g}x the crossing: {meeting(args.service_ms / 1e3, args.dist, objective, args.runs_of, m, args.seeds):.2%}")
        for m in (0.95, 1.0):
            q = percentile_spread(args.service_ms / 1e3, args.dist, objective, args.runs_of, m, args.seeds)
            print(f"{m:g}x the crossing: a run's p{args.percentile:g} / the bound, 90th/99th/99.9th percentiles: "
                  f"{q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}")
        return
    print(f"{args.dist} {args.service_ms:g} ms, p{args.percentile:g} <= {args.bound_ms:g} ms, confidence "
          f"{args.confidence:g}, at most {objective.request_limit} requests a probe, tolerance {args.tolerance:g}, "
          f"{args.seeds} seeds")
    print("| capacity | min | 1% | 10% | median | max | median s | confirmation undecided | failed |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for capacity in (float(c) for c in args.capacities.split(",")):
        r, t, confirmed = searches(args.service_ms / 1e3, args.dist, objective, args.tolerance, capacity, args.seeds)
        q = np.quantile(r, [0.01, 0.1, 0.5])
        print(f"| {capacity:g} | {r.min():.3f} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {r.max():.3f} | "
              f"{np.median(t):.0f} | {confirmed.count(UNDECIDED) / len(r):.1%} | {confirmed.count(FAIL) / len(r):.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
