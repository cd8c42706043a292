"""The peak search against queueing theory: real infer-server processes whose queueing is known exactly.

The sleep model on one worker is an M/D/1 queue (`--service-dist fixed`) or an M/M/1
queue (`exp`). For each, a p90 and a p99 search run as `infer-client --find-peak`
processes, all four at once (about 800 requests/s in all at their crossings: more,
and the client and server processes, on two cores, add latency of their own), and
their answers are compared with the crossing:
the rate at which the percentile of the time in system equals the bound, computed
from the service time the server measured (its breakdown) and the bound less the
round trip outside the server (transport), M/M/1 in closed form and M/D/1 by
Crommelin's formula. The module takes about nine minutes.

What is asserted, and why these limits:
- the peak is at most 1.05x the crossing: the verdict holds its confidence on the
  queue itself, so no search lands above it (the 5% allows for the service time's
  and the transport's measurement);
- the peak is at least LOWEST[case] of the crossing: a sound verdict is conservative,
  and how much is measured by simulating the same search on the exact queue
  (benchmarks/verdict_sim.py; tests/client/test_peak.py), less a margin;
- an independent run at the peak, on a schedule of its own, meets the objective;
- one at 1.2x the peak breaks it wherever theory says 1.2x the peak is beyond the
  crossing by 3% or more (a peak found at 0.8x, which a sound verdict may return,
  leaves 1.2x of it under the crossing, where nothing should break).

Searches bisect to a 10% bracket, and p99 ones use confidence 0.9 and at most
12,000 requests per probe, so that a search takes minutes, not the better part of
an hour; the verdict's soundness at its defaults is the simulation's
(tests/client/test_verdict.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.queueing import crossing
from tests.support import ROOT, sleep_model, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SEARCH_TIMEOUT_S = 720.0
RUN_TIMEOUT_S = 240.0


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
CASES = [Case("fixed", 6.0, 90, 5), Case("exp", 4.0, 90, 10), Case("fixed", 4.0, 99, 10), Case("exp", 3.0, 99, 20)]
# The lowest peak / crossing the search may answer: the simulated search's minimum over 40 seeds at these
# settings (M/D/1 p90 0.78, M/M/1 p90 0.77, M/D/1 p99 0.81, M/M/1 p99 0.69), less 0.05 for a real machine.
# A sound verdict is conservative: the bursts leave the last tenth or so below the crossing unprovable within
# a budget of minutes (docs/metrics.md).
LOWEST = {("fixed", 90): 0.73, ("exp", 90): 0.72, ("fixed", 99): 0.76, ("exp", 99): 0.64}


@dataclass
class Outcome:
    case: Case
    search: dict
    theory_rps: float
    at_peak: dict
    above_peak: dict


def _client(endpoint: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "client", "--server", endpoint, "--batch-size", "1", "--image-size", "32",
            "--wire-dtype", "uint8", "--output-file", "", "-q", *args]


def _run_all(commands: list[list[str]], timeout_s: float) -> list[subprocess.CompletedProcess]:
    """Run the commands at once, each to completion (bounded); a process still running at the deadline is killed."""
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    deadline = time.monotonic() + timeout_s
    done = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err += f"\n(killed after {timeout_s:g} s)"
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return done


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def theory(case: Case, figures: dict) -> float:
    """The crossing for the service time the server measured, and the bound less the measured transport."""
    service_s = sum(figures[f"server_{k}_mean"] or 0.0 for k in ("decode", "h2d", "compute", "d2h", "encode"))
    bound_s = case.slo_ms / 1e3 - (figures["transport_mean"] or 0.0)
    return crossing(service_s, case.dist, bound_s, case.percentile)


def _search_and_check(cases: list[Case], tmp: Path) -> dict[str, Outcome | str]:
    """Each case's search and independent runs, all at once; a failed search gives its output instead."""
    out: dict[str, Outcome | str] = {}
    servers = [start_server(*sleep_model(c.service_ms, "--service-dist", c.dist), tmp_path=tmp) for c in cases]
    try:
        searches = _run_all([_client(s.endpoint, "--find-peak", "--slo-ms", f"{c.slo_ms:g}", *c.search_args(),
                                     "--json") for c, s in zip(cases, servers)], SEARCH_TIMEOUT_S)
        ran = []
        for c, s, p in zip(cases, servers, searches):
            if p.returncode == 0:
                ran.append((c, s, _last_json(p)))
            else:
                out[c.name] = f"search exited {p.returncode}: {p.stdout[-3000:]}{p.stderr[-2000:]}"
        runs = {}
        for factor in (1.0, 1.2):
            procs = _run_all([_client(s.endpoint, "--request-rate", f"{factor * d['peak_rate']:.6g}", "--slo-ms",
                                      f"{c.slo_ms:g}", "--num-iters", str(c.run_requests), "--seed", "12345",
                                      "--json") for c, s, d in ran], RUN_TIMEOUT_S)
            runs[factor] = [_last_json(p) for p in procs]
    finally:
        for s in servers:
            s.kill()
    for (c, _server, d), at, above in zip(ran, runs[1.0], runs[1.2]):
        out[c.name] = Outcome(c, d, theory(c, d["at_peak"]), at, above)
    return out


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
    print(shown)
    assert LOWEST[(case.dist, case.percentile)] <= ratio <= 1.05, shown
    key, slo_s = _percentile_key(case), case.slo_ms / 1e3
    assert o.at_peak["valid"] and o.at_peak[key] <= slo_s, (o.at_peak[key], o.at_peak["invalid_reasons"], shown)
    if 1.2 * peak >= 1.03 * o.theory_rps:
        assert o.above_peak[key] > slo_s, (o.above_peak[key], shown)
    d = o.search
    assert d["confirmation"]["rate"] == d["peak_rate"] and d["peak_latency_high"] is not None
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
