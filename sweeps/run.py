"""Running a sweep: each configuration's repeats against fresh (or reloaded) servers, and where the files go.

Modes: "fixed" runs the client once at the point's settings (a RunResult per
repeat); "peak" searches the highest request rate meeting the latency objective
(client/peak.py) against the repeat's fresh server, so cold start is real once
per repeat and the probes share the warmed-up server. A peak repeat records the
search and, as its "result", the run at the peak; a configuration no rate
serves within the objective fails with that reason.

Each sweep writes into a folder of its own, `<results-dir>/sweep-<stamp>/` (a
resumed one into the folder of the sweep it goes on with: sweeps/resume.py):
its sweep-<stamp>.json, summary and answer, plots, report.html (all of them on
one page: sweeps/html_report.py), and `logs/` with every server's log, kept.

Ctrl-C stops the configuration in progress (and its server), records it as
interrupted with the repeats it finished, and writes the summary, answer and
plots of what finished, marked interrupted; the CLI then says how to resume
and exits 130.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from client.config import ClientConfig, CurveKeys
from client.peak import PEAK_KEYS, PeakSearch, Probe, find_peak
from client.peak_report import format_probe, no_peak_reason
from common import host
from common.fileio import json_text, write_atomic
from server.launch import launch_server, stop_process
from sweeps.html_report import write_sweep_report
from sweeps.launch import Remote, measure_fleet
from sweeps.plan import Point, SweepPlan
from sweeps.plots import plot, plot_curves, plot_pareto
from sweeps.records import Repeat, SweepRecord, configurations, sweep_title
from sweeps.remote import ensure_settings
from sweeps.report import (
    Objective,
    answer_markdown,
    append_output_table,
    markdown,
    summary_markdown,
    summary_table,
)

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 30.0
Measure = Callable[[ClientConfig], dict[str, Any]]


class NoPeakError(RuntimeError):
    """A peak search that found no rate, with the whole search (`search`) for the sweep's record."""

    def __init__(self, reason: str, search: dict[str, Any]):
        super().__init__(reason)
        self.search = search


def measure_fixed(config: ClientConfig) -> dict[str, Any]:
    """One run at the point's settings; RuntimeError when a request failed or was lost."""
    from client.runner import run

    result = run(config)
    if result.failed_total or result.lost:
        raise RuntimeError(f"{result.failed_total} requests failed, {result.lost} lost")
    return {"result": result.to_dict()}


def peak_search(plan: SweepPlan) -> PeakSearch:
    """The plan's [peak] table as a search (ValueError naming a bad setting)."""
    given = {key: plan.peak[key] for key in PEAK_KEYS if key in plan.peak}
    return PeakSearch(**given)


def measure_for(plan: SweepPlan, say: Callable[[str], None] | None = None, remote: Remote | None = None,
                logs: Path | None = None) -> Measure:
    """What one repeat runs in the plan's mode (`say` gets a line per peak-search probe); with a launcher
    (`remote`), each fixed-load run is a fleet launched by it (sweeps/launch.py), its files in `logs`."""
    if remote is not None and remote.launcher:
        return measure_fleet(remote, logs or Path("."), ROOT, plan.timeout_s)
    if plan.mode != "peak":
        return measure_fixed
    search = peak_search(plan)

    def on_probe(probe: Probe) -> None:
        if say is not None:
            say(f"  probe {format_probe(probe).strip()}")

    def measure_peak(config: ClientConfig) -> dict[str, Any]:
        found = find_peak(config, search, on_probe=on_probe)
        if found.peak_run is None:
            raise NoPeakError(no_peak_reason(found), found.to_dict())
        # The run at the peak as a fixed-load repeat's "result", so every table of a sweep reads it.
        return {"peak": found.to_dict(), "result": found.peak_run.to_dict()}

    return measure_peak


# -- one configuration, all its repeats ------------------------------------------------


def start_server(cfg: Point, log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    """Spawn a fresh server; returns (process, endpoint, spawn-to-ready seconds)."""
    t0 = time.monotonic()
    server = launch_server(cfg.server_argv(), log_path, timeout_s, cwd=ROOT)
    return server.proc, server.endpoint, time.monotonic() - t0


def run_config(record: SweepRecord, cfg: Point, repeats: int, servers: tuple[str, ...], folder: Path,
               timeout_s: float, measure: Measure, index: int = 0, profile_dir: Path | None = None,
               curve: CurveKeys | None = None) -> None:
    """All repeats of one configuration into `record`, each against a fresh server (its log kept in
    folder/logs; each repeat's trace in `profile_dir` when given: the repeats stay alike), or against the
    --server endpoints (over CURVE with `curve`), reloaded only when they run other settings. A failure is
    recorded and ends the configuration; only Ctrl-C (KeyboardInterrupt) leaves here, the repeats finished
    kept in `record`."""
    for repeat in range(repeats):
        proc = None
        try:
            if servers:
                endpoints = servers
                waits = [ensure_settings(e, cfg, timeout_s, curve) for e in servers]
                ready_s = max((w for w in waits if w is not None), default=None)
            else:
                proc, endpoint, ready_s = start_server(cfg, log_path(folder, index, repeat), timeout_s)
                endpoints = (endpoint,)
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            measured = measure(cfg.client_config(tuple(endpoints), timeout_s, profile_dir, curve))
            record.runs.append(Repeat(repeat, ready_s, measured["result"], measured.get("peak")))
        except Exception as exc:  # one configuration must not lose the sweep
            record.status = "failed"
            record.reason = f"{type(exc).__name__}: {exc}"
            record.no_peak = exc.search if isinstance(exc, NoPeakError) else None
            break
        finally:
            if proc is not None:
                stop_process(proc, STOP_TIMEOUT_S)


# -- where a sweep's files go ------------------------------------------------------------


def sweep_folder(results_dir: Path, stamp: str) -> Path:
    """A new folder for this sweep under `results_dir` (never an earlier sweep's), with `logs/`."""
    folder = results_dir / f"sweep-{stamp}"
    suffix = 1
    while folder.exists():  # two sweeps started within the same second
        suffix += 1
        folder = results_dir / f"sweep-{stamp}-{suffix}"
    (folder / "logs").mkdir(parents=True)
    return folder


def log_path(folder: Path, index: int, repeat: int) -> Path:
    """Where the server of configuration `index`, repeat `repeat`, logs (kept after the sweep; appended to when
    a resumed sweep runs it again)."""
    return folder / "logs" / f"server-{index:03d}-r{repeat}.log"


def objective_ms(plan: SweepPlan) -> float | None:
    """The latency objective the answer holds configurations to (ms), if any."""
    return objective_of(plan).slo_ms


def objective_of(plan: SweepPlan) -> Objective:
    """What the answer ranks by: the peak search's objective, or a fixed-load sweep's client slo_ms on p99."""
    if plan.mode == "peak":
        search = peak_search(plan)
        return Objective("peak", search.slo_ms, search.percentile, search.confidence)
    slo = plan.client.get("slo_ms", (None,))
    return Objective("fixed", slo[0] if len(slo) == 1 else None)


def write_answer(records: list[SweepRecord], folder: Path, plan: SweepPlan, host_name: str = "",
                 interrupted: str | None = None) -> list[Path]:
    """answer.md (the best configuration under the objective, every configuration's figures), the plots."""
    stats = configurations(records)
    objective = objective_of(plan)
    answer = folder / "answer.md"
    write_atomic(answer, answer_markdown(stats, objective, interrupted))
    title = sweep_title([r for r in records if r.ok and r.runs], host_name)
    plots = [plot_pareto(stats, folder / "pareto.png", objective, title),
             plot_curves(stats, plan.curve_axis, folder / "curves.png", objective, title)]
    return [answer, *(p for p in plots if p is not None)]


# -- the whole grid ------------------------------------------------------------------------


def environment(argv: list[str], device: str) -> dict[str, Any]:
    """The machine, the versions, the command and the commit: what a sweep ran on."""
    return {**host.environment(), "command": argv, "device": device, "git_commit": host.git_commit(ROOT)}


@dataclass
class Outcome:
    """How a sweep ended: configurations failed, and whether Ctrl-C cut it short (and how far it got)."""

    failed: int
    interrupted: str | None = None  # "1 of 3 configurations finished"


def run_grid(grid: list[Point], plan: SweepPlan, servers: tuple[str, ...], folder: Path, stamp: str,
             device: str, profile: bool = False, cdf_per_repeat: bool = False,
             done: dict[str, SweepRecord] | None = None, remote: Remote | None = None) -> Outcome:
    """Run every configuration not in `done` (an earlier sweep's, reused), writing results as it goes."""
    from tqdm import tqdm

    (folder / "logs").mkdir(parents=True, exist_ok=True)
    done = done or {}
    json_path = folder / f"sweep-{stamp}.json"
    env = environment(sys.argv, device)
    records: list[SweepRecord] = []
    interrupted: str | None = None

    def save() -> None:
        write_atomic(json_path, json_text({"environment": env, "stamp": stamp, "mode": plan.mode, "peak": plan.peak,
                                            "interrupted": interrupted is not None,
                                            "configurations": [r.to_dict() for r in records]}, indent=1))

    with tqdm(total=len(grid), unit="config", file=sys.stderr, dynamic_ncols=True) as bar:
        measure = measure_for(plan, lambda line: bar.write(line, file=sys.stderr), remote, folder / "logs")
        curve = remote.curve if remote else None
        try:
            for index, cfg in enumerate(grid):
                if cfg.key in done:
                    records.append(dataclasses.replace(done[cfg.key], resumed=True))
                    bar.update(1)
                    continue
                record = SweepRecord(cfg.key, cfg.label, cfg.record_config())
                records.append(record)  # before the bar names it: once named, a Ctrl-C finds it recorded
                bar.set_postfix_str(cfg.label)
                profile_dir = (folder / "profile" / cfg.slug).resolve() if profile else None
                run_config(record, cfg, plan.repeats, servers, folder, plan.timeout_s, measure, index,
                           profile_dir, curve)
                save()
                table = folder / f"output_{cfg.batch_size}_{'on' if cfg.compile else 'off'}.md"
                append_output_table(table, record, stamp, env["host"])
                bar.write(f"done {cfg.label}" if record.ok else f"FAILED {cfg.label}: {record.reason}", file=sys.stderr)
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = _interrupted(records, plan.repeats, len(grid))
    save()
    failed = _summarise(records, folder, stamp, env, json_path, interrupted, cdf_per_repeat)
    answers = write_answer(records, folder, plan, env["host"], interrupted)
    answers.append(write_sweep_report(json_path, objective_ms(plan)))
    answer, *others = answers
    click.echo(f"the answer: {answer}" + (f" ({', '.join(p.name for p in others)})" if others else ""))
    return Outcome(failed, interrupted)


def _interrupted(records: list[SweepRecord], repeats: int, total: int) -> str:
    """Mark the configuration Ctrl-C cut short (its finished repeats kept); returns how far the sweep got."""
    for rec in records:
        if rec.ok and not rec.resumed and len(rec.runs) < repeats:
            rec.status, rec.reason = "interrupted", f"Ctrl-C after {len(rec.runs)} of {repeats} repeats"
    return f"{sum(r.status != 'interrupted' for r in records)} of {total} configurations finished"


def _summarise(records: list[SweepRecord], folder: Path, stamp: str, env: dict[str, Any], json_path: Path,
               interrupted: str | None, cdf_per_repeat: bool) -> int:
    """summary.md and the plots; returns how many configurations failed."""
    write_atomic(folder / "summary.md", summary_markdown(records, stamp, env, interrupted))
    plots = plot(records, folder, env["host"], cdf_per_repeat)
    click.echo(markdown(*summary_table(records, env["host"])))
    failed = sum(r.status == "failed" for r in records)
    cut = sum(r.status == "interrupted" for r in records)
    counts = f"{len(records) - failed - cut} ok, {failed} failed" + (f", {cut} interrupted" if cut else "")
    written = [str(folder / "summary.md"), json_path.name, *(p.name for p in plots)]
    click.echo(f"{counts}; wrote {', '.join(written)}")
    return failed
