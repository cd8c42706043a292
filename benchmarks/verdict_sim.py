"""How often the tail verdict (client/verdict.py) passes a queue that does or does not meet its objective.

Each simulated probe is an M/M/1 or M/D/1 queue (benchmarks/queueing.py) fed
Poisson arrivals at a multiple of the rate where the percentile meets the bound,
judged with the same looks a real probe takes. Prints, per multiple, the share
of probes that passed, failed and stayed undecided, and the median requests to a
pass. `python benchmarks/verdict_sim.py` reproduces the table in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.queueing import crossing, simulate  # noqa: E402
from client.verdict import PASS, Decision, TailObjective, decide  # noqa: E402


@dataclass(frozen=True)
class Queue:
    service_s: float
    dist: str  # "fixed" (M/D/1) or "exp" (M/M/1)
    bound_s: float
    percentile: float

    @property
    def name(self) -> str:
        kind = "M/M/1" if self.dist == "exp" else "M/D/1"
        return f"{kind} {self.service_s * 1e3:g} ms, p{self.percentile:g} <= {self.bound_s * 1e3:g} ms"


def sequential(objective: TailObjective, latencies: np.ndarray, idle: np.ndarray) -> Decision:
    """The looks a probe of these requests takes, up to its first decided one (as client/verdict.TailSample)."""
    looks = objective.looks()
    decision = None
    for k, n in enumerate(looks):
        last = k == len(looks) - 1
        decision = decide(objective, latencies[:n], idle[:n], futile_check=k >= 1 and not last)
        if decision.ends_probe:
            break
    assert decision is not None
    return decision


def probes(queue: Queue, multiple: float, runs: int, objective: TailObjective, seed: int = 0) -> list[Decision]:
    rate = multiple * crossing(queue.service_s, queue.dist, queue.bound_s, queue.percentile)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(runs):
        latencies, idle = simulate(rate, queue.service_s, queue.dist, objective.request_limit, rng)
        out.append(sequential(objective, latencies, idle))
    return out


def table(queue: Queue, multiples: list[float], runs: int, confidence: float, max_requests: int | None) -> str:
    objective = TailObjective(queue.bound_s, queue.percentile, confidence, max_requests)
    lines = [f"{queue.name}, confidence {confidence:g}, at most {objective.request_limit} requests, {runs} probes each",
             "| rate / crossing | pass | fail | undecided | median requests to a pass |", "|---|---|---|---|---|"]
    for m in multiples:
        ds = probes(queue, m, runs, objective)
        passed = [d.requests for d in ds if d.verdict == PASS]
        failed = sum(d.verdict == "fail" for d in ds)
        lines.append(f"| {m:g} | {len(passed) / runs:.3f} | {failed / runs:.3f} | "
                     f"{(runs - len(passed) - failed) / runs:.3f} | {np.median(passed) if passed else '-'} |")
    return "\n".join(lines)


QUEUES = {
    "mm1-p99": Queue(0.0052, "exp", 0.100, 99.0),
    "md1-p99": Queue(0.0102, "fixed", 0.050, 99.0),
    "mm1-p90": Queue(0.0052, "exp", 0.100, 90.0),
    "md1-p90": Queue(0.0102, "fixed", 0.030, 90.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", choices=sorted(QUEUES), action="append")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--multiples", default="0.8,0.85,0.9,0.95,1.0,1.05,1.1,1.2")
    args = parser.parse_args()
    for name in args.queue or sorted(QUEUES):
        print(table(QUEUES[name], [float(m) for m in args.multiples.split(",")], args.runs, args.confidence,
                    args.max_requests), flush=True)


if __name__ == "__main__":
    main()
