"""How sweep.py measures one repeat of a configuration in each mode, and where a sweep's files go.

Modes: "fixed" runs the client once at the point's settings (a RunResult per
repeat); "peak" searches the highest request rate meeting the latency objective
(client/peak.py) against the repeat's fresh server, so cold start is real once
per repeat and the probes share the warmed-up server. A peak repeat records the
search and, as its "result", the run at the peak; a configuration no rate
serves within the objective fails with that reason.

Each sweep writes into a folder of its own, `<results-dir>/sweep-<stamp>/`:
its sweep-<stamp>.json, summary and answer, plots, and `logs/` with every
server's log, kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.config import ClientConfig
from client.peak import PeakSearch, Probe, find_peak
from common.fileio import write_atomic
from sweep_answer import answer_markdown, configuration_stats, plot_curves, plot_pareto
from sweep_plan import SweepPlan

Measure = Callable[[ClientConfig], dict[str, Any]]


def measure_fixed(config: ClientConfig) -> dict[str, Any]:
    """One run at the point's settings; RuntimeError when a request failed or was lost."""
    from client.runner import run

    result = run(config)
    if result.failed_total or result.lost:
        raise RuntimeError(f"{result.failed_total} requests failed, {result.lost} lost")
    return {"result": result.to_dict()}


def peak_search(plan: SweepPlan) -> PeakSearch:
    """The plan's [peak] table as a search (ValueError naming a bad setting)."""
    peak = plan.peak
    return PeakSearch(float(peak["slo_ms"]), float(peak.get("percentile", 99.0)), float(peak.get("tolerance", 0.05)),
                      peak.get("probe_requests"))


def measure_for(plan: SweepPlan, say: Callable[[str], None] | None = None) -> Measure:
    """What one repeat runs in the plan's mode (`say` gets a line per peak-search probe)."""
    if plan.mode != "peak":
        return measure_fixed
    search = peak_search(plan)

    def on_probe(probe: Probe) -> None:
        if say is not None:
            say(f"  probe {probe.rate:.4g} requests/s: p{search.percentile:g} "
                f"{(probe.latency_s or 0) * 1e3:.4g} ms, {'pass' if probe.passed else 'FAIL ' + probe.reason}")

    def measure_peak(config: ClientConfig) -> dict[str, Any]:
        found = find_peak(config, search, on_probe=on_probe)
        if found.peak_run is None:
            raise RuntimeError(f"no request rate down to {found.probes[-1].rate:.3g}/s met "
                               f"p{search.percentile:g} <= {search.slo_ms:g} ms")
        # The run at the peak as a fixed-load repeat's "result", so every table of a sweep reads it.
        return {"peak": found.to_dict(), "result": found.peak_run.to_dict()}

    return measure_peak


def sweep_folder(results_dir: Path, stamp: str) -> Path:
    """A new folder for this sweep (never an earlier sweep's), with `logs/` for the servers' logs."""
    folder = results_dir / f"sweep-{stamp}"
    suffix = 1
    while folder.exists():  # two sweeps started within the same second
        suffix += 1
        folder = results_dir / f"sweep-{stamp}-{suffix}"
    (folder / "logs").mkdir(parents=True)
    return folder


def log_path(folder: Path, index: int, repeat: int) -> Path:
    """Where the server of configuration `index`, repeat `repeat`, logs (kept after the sweep)."""
    return folder / "logs" / f"server-{index:03d}-r{repeat}.log"


def objective_ms(plan: SweepPlan) -> float | None:
    if plan.mode == "peak":
        return float(plan.peak["slo_ms"])
    slo = plan.client.get("slo_ms", (None,))
    return slo[0] if len(slo) == 1 else None


def write_answer(records: list[dict[str, Any]], folder: Path, plan: SweepPlan) -> list[Path]:
    """answer.md (the best configuration under the objective, every configuration's figures), the plots."""
    stats = configuration_stats(records)
    slo = objective_ms(plan)
    answer = folder / "answer.md"
    percentile = float(plan.peak.get("percentile", 99.0)) if plan.mode == "peak" else 99.0
    write_atomic(answer, answer_markdown(stats, slo, plan.mode, percentile))
    plots = [plot_pareto(stats, folder / "pareto.png", slo),
             plot_curves(stats, plan.curve_axis, folder / "curves.png", slo)]
    return [answer, *(p for p in plots if p is not None)]
