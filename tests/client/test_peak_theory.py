"""The peak search against queueing theory: real infer-server processes whose queueing is known exactly.

The sleep model on one worker is an M/D/1 queue (`--service-dist fixed`) or an M/M/1
queue (`exp`). For each, a p90 and a p99 search run as `infer-client --find-peak`
processes, all four at once (about 800 requests/s in all at their crossings: more,
and the client and server processes, on two cores, add latency of their own), each
followed by its independent runs as soon as it ends, and their answers are compared
with the crossing:
the rate at which the percentile of the time in system equals the bound, computed
from the service time the server measured (its breakdown) and the bound less the
round trip outside the server (transport), M/M/1 in closed form and M/D/1 by
Crommelin's formula. The module takes six to seven minutes, mostly waiting on the queues;
`make test` runs it beside the rest of the suite, at a higher CPU priority (Makefile). Its limits
held with two CPU-bound processes beside it (peak / crossing 0.72-0.87), but the suite's bursts
(compiling, saturating both cores for seconds) once stretched a p99 probe at 0.66 of the crossing
past its bound, and that search answered 0.62: `make test` runs a module that failed beside the
rest again alone, and that run decides.

What is asserted, and why these limits:
- the peak is at most 1.05x the crossing: the verdict holds its confidence on the
  queue itself, so no search lands above it (the 5% allows for the service time's
  and the transport's measurement);
- the peak is at least LOWEST[case] of the crossing: a sound verdict is conservative,
  and how much is measured by simulating the same search on the exact queue
  (benchmarks/search_sim.py), less a margin;
- an independent run at the peak, on a schedule of its own, is valid and its percentile
  within AT_PEAK_SPREAD of the bound: one finite run's percentile strays from the true one,
  and at the crossing itself a run of these lengths exceeds the bound in 42-47% of runs and
  by this factor in 0.1% (simulated, `benchmarks/search_sim.py --runs-of N`);
- one at 1.2x the crossing breaks it. Not 1.2x the peak: a sound search lands at
  0.78-0.95 of the crossing, so 1.2x the peak is often below it, and just above it a
  run of these lengths still meets the objective by chance in 7-32% of runs at 1.03-1.05x
  (simulated, `benchmarks/search_sim.py --runs-of N`); at 1.2x in none of 2,000.

Searches bisect to a 10% bracket, and p99 ones use confidence 0.9 and at most
12,000 requests per probe, so that a search takes minutes, not the better part of
an hour; the verdict's soundness at its defaults is the simulation's
(tests/client/test_verdict.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.queueing import crossing
from tests.support import ROOT, sleep_model, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SEARCH_TIMEOUT_S = 720.0
RUN_TIMEOUT_S = 240.0
ABOVE = 1.2  # the run that must break the objective, at this multiple of the crossing


@dataclass(frozen=True)
class Case:
    dist: str  # "fixed" (M/D/1) or "exp" (M/M/1)
    service_ms: float
    percentile: float
    bound_multiple: int  # the objective, in service times

    @property
    def slo_ms(self) -> float:
        return self.bound_multiple * self.service_ms

    @property
    def name(self) -> str:
        kind = "MD1" if self.dist == "fixed" else "MM1"
        return f"{kind}-{self.service_ms:g}ms-p{self.percentile:g}"

    def search_args(self) -> list[str]:
        args = ["--peak-percentile", f"{self.percentile:g}", "--max-probe-s", "120", "--peak-tolerance", "0.1"]
        if self.percentile == 99:
            args += ["--peak-confidence", "0.9", "--max-probe-requests", "12000"]
        return args

    @property
    def run_requests(self) -> int:
        """An independent run's length: enough that its percentile estimate is within a few % of the truth."""
        return 10_000 if self.percentile == 99 else 3_000


# Bounds at 5-20 service times put the crossings at 77-88% utilisation, where bursts are real, and every
# bound is at least 30 ms: the client and server processes' own latency on two cores (a few ms at p90-p99,
# with their threads' hand-offs) would otherwise be a visible part of it. Each queue at two service times.
CASES = [Case("fixed", 6.0, 90, 5), Case("exp", 4.0, 90, 10), Case("fixed", 3.5, 99, 10), Case("exp", 2.5, 99, 20)]
# The lowest peak / crossing the search may answer: the simulated search's minimum over 1,200 seeds at these
# settings, its first rate at 0.75-0.9 of 1 / service time as the capacity probes measure it (M/D/1 p90 0.776,
# M/M/1 p90 0.672, M/D/1 p99 0.714, M/M/1 p99 0.619: `python benchmarks/search_sim.py --dist fixed
# --service-ms 6 --bound-ms 29.5 --percentile 90`, and so on), less 0.04 for a real machine's own latency.
# A sound verdict is conservative: the bursts leave the last tenth or so below the crossing unprovable within
# a budget of minutes (docs/metrics.md).
LOWEST = {("fixed", 90): 0.73, ("exp", 90): 0.63, ("fixed", 99): 0.67, ("exp", 99): 0.58}
# How far over the bound the independent run at the peak may measure: the 99.9th percentile, over 2,000 simulated
# runs of its length at the crossing itself, of the run's percentile / the bound (1.42, 1.79, 1.55, 2.06),
# rounded up. Even below the crossing one run is no proof: at 0.95x it exceeds the bound in 5-12% of runs.
AT_PEAK_SPREAD = {("fixed", 90): 1.45, ("exp", 90): 1.8, ("fixed", 99): 1.6, ("exp", 99): 2.1}


@dataclass
class Outcome:
    case: Case
    search: dict
    theory_rps: float
    at_peak: dict
    above: dict  # the run at ABOVE x the crossing


def _client(endpoint: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "client", "--server", endpoint, "--batch-size", "1", "--image-size", "32",
            "--wire-dtype", "uint8", "--output-file", "", "-q", *args]


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def theory(case: Case, figures: dict) -> float:
    """The crossing for the service time the server measured, and the bound less the measured transport."""
    service_s = sum(figures[f"server_{k}_mean"] or 0.0 for k in ("decode", "h2d", "compute", "d2h", "encode"))
    bound_s = case.slo_ms / 1e3 - (figures["transport_mean"] or 0.0)
    return crossing(service_s, case.dist, bound_s, case.percentile)


def _run(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """One client process to completion, killed at the deadline."""
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:  # its output is bytes, whatever text= said
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return subprocess.CompletedProcess(command, -9, out, f"(killed after {timeout_s:g} s)")


def _one_case(case: Case, endpoint: str) -> Outcome | str:
    """A case's search, then its independent runs on the same server: at the peak, and at ABOVE x the crossing."""
    search = _run(_client(endpoint, "--find-peak", "--slo-ms", f"{case.slo_ms:g}", *case.search_args(), "--json"),
                  SEARCH_TIMEOUT_S)
    if search.returncode != 0:
        return f"search exited {search.returncode}: {search.stdout[-3000:]}{search.stderr[-2000:]}"
    found = _last_json(search)
    theory_rps = theory(case, found["at_peak"])

    def run_at(rate: float) -> dict:
        return _last_json(_run(_client(endpoint, "--request-rate", f"{rate:.6g}", "--slo-ms", f"{case.slo_ms:g}",
                                       "--num-iters", str(case.run_requests), "--seed", "12345", "--json"),
                               RUN_TIMEOUT_S))

    return Outcome(case, found, theory_rps, run_at(found["peak_rate"]), run_at(ABOVE * theory_rps))


def _search_and_check(cases: list[Case], tmp: Path) -> dict[str, Outcome | str]:
    """Every case at once, each on its own server, its search and runs one after another: a case's runs
    start when its own search ends, so the load stays one client per server throughout."""
    servers = [start_server(*sleep_model(c.service_ms, "--service-dist", c.dist), tmp_path=tmp) for c in cases]
    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = {c.name: pool.submit(_one_case, c, s.endpoint) for c, s in zip(cases, servers)}
            return {name: _result_or_error(f) for name, f in futures.items()}
    finally:
        for s in servers:
            s.kill()


def _result_or_error(future: Future) -> Outcome | str:
    try:
        return future.result()
    except AssertionError as exc:  # a run that exited non-zero (_last_json)
        return f"a run failed: {exc}"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome | str]:
    return _search_and_check(CASES, tmp_path_factory.mktemp("theory"))


def _outcome(outcomes: dict[str, Outcome | str], case: Case) -> Outcome:
    o = outcomes[case.name]
    assert isinstance(o, Outcome), o
    return o


def _percentile_key(case: Case) -> str:
    return "p99_latency" if case.percentile == 99 else "p90_latency"


def check_peak(outcomes: dict[str, Outcome | str], case: Case) -> None:
    o = _outcome(outcomes, case)
    peak = o.search["peak_rate"]
    ratio = peak / o.theory_rps
    shown = (f"{case.name}: peak {peak:.4g} req/s, crossing {o.theory_rps:.4g} (x{ratio:.3f}); "
             f"probes {[(round(p['rate'], 1), p['verdict']) for p in o.search['probes']]}")
    print(shown, f"; at the peak p{case.percentile:g} {o.at_peak[_percentile_key(case)] * 1e3:.1f} ms, at "
                 f"{ABOVE:g}x the crossing {o.above[_percentile_key(case)] * 1e3:.1f} ms (bound {case.slo_ms:g})")
    assert LOWEST[(case.dist, case.percentile)] <= ratio <= 1.05, shown
    key, slo_s = _percentile_key(case), case.slo_ms / 1e3
    spread = AT_PEAK_SPREAD[(case.dist, case.percentile)]
    assert o.at_peak["valid"] and o.at_peak[key] <= spread * slo_s, (o.at_peak[key], o.at_peak["invalid_reasons"], shown)
    assert o.above[key] > slo_s, (o.above[key], shown)
    # The confirmation ran at the peak, and did not show it wrong. At these budgets it stays undecided in 22-40%
    # of simulated searches (benchmarks/search_sim.py: the peak is where passing is marginal) and failed in 1 of
    # 4,800; where it passed, its upper bound is within the objective.
    d = o.search
    confirmation = d["confirmation"]
    assert confirmation["rate"] == d["peak_rate"] and confirmation["verdict"] in ("pass", "undecided"), confirmation
    assert confirmation["verdict"] != "pass" or d["peak_latency_high"] <= slo_s, d["peak_latency_high"]
    seeds = [p["seed"] for p in d["probes"]] + [d["confirmation"]["seed"]]
    assert len(set(seeds)) == len(seeds)
    # The sleep model ends each call on its deadline (it spins the last 0.3 ms): the mean service time the
    # breakdown reports is the configured one, to within what a busy 2-core machine adds.
    compute = d["at_peak"]["server_compute_mean"]
    assert case.service_ms / 1e3 * 0.98 <= compute <= case.service_ms / 1e3 * 1.15, compute


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_peak_lies_under_the_crossing_and_the_objective_holds_there_not_above(
        outcomes: dict[str, Outcome | str], case: Case) -> None:
    check_peak(outcomes, case)
