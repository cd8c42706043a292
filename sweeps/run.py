"""Running a sweep: each configuration's repeats against fresh (or reloaded) servers, and where the files go.

Modes: "fixed" runs the client once at the point's settings (a RunResult per
repeat); "peak" searches the highest request rate meeting the latency objective
(client/peak.py) against the repeat's fresh server, so cold start is real once
per repeat and the probes share the warmed-up server. A peak repeat records the
search and, as its "result", the run at the peak; a configuration no rate
serves within the objective fails with that reason.

Each sweep writes into a folder of its own, `<results-dir>/sweep-<stamp>/`:
its sweep-<stamp>.json, summary and answer, plots, report.html (all of them on
one page: sweeps/html_report.py), and `logs/` with every server's log, kept.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from client.config import ClientConfig, CurveKeys
from client.peak import PEAK_KEYS, PeakSearch, Probe, find_peak, format_probe
from common import host
from common.fileio import write_atomic
from common.protocol import ControlReplyHeader, InfoHeader
from server.launch import launch_server, stop_process
from sweeps.html_report import write_sweep_report
from sweeps.launch import Remote, measure_fleet
from sweeps.plan import Point, SweepPlan
from sweeps.plots import plot, plot_curves, plot_pareto
from sweeps.records import Repeat, SweepRecord, completed_records, configurations
from sweeps.report import answer_markdown, append_output_table, markdown, summary_markdown, summary_table

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 30.0
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
            raise RuntimeError(f"no request rate down to {found.probes[-1].rate:.3g}/s met "
                               f"p{search.percentile:g} <= {search.slo_ms:g} ms")
        # The run at the peak as a fixed-load repeat's "result", so every table of a sweep reads it.
        return {"peak": found.to_dict(), "result": found.peak_run.to_dict()}

    return measure_peak


# -- one configuration, all its repeats ------------------------------------------------


def start_server(cfg: Point, log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    """Spawn a fresh server; returns (process, endpoint, spawn-to-ready seconds)."""
    t0 = time.monotonic()
    server = launch_server(cfg.server_argv(), log_path, timeout_s, cwd=ROOT)
    return server.proc, server.endpoint, time.monotonic() - t0


def reload_remote(endpoint: str, cfg: Point, timeout_s: float, curve: CurveKeys | None = None) -> float:
    """Ask a running server to re-exec with cfg's server settings; returns seconds until its new HELLO.

    The reply carries the old instance id; a poll loop on HELLO (each bounded)
    waits for a different one, so the cold start of the new settings is measured.
    With `curve`, over CURVE (a server beyond loopback accepts CONTROL only from an
    authenticated peer).
    """
    import zmq

    from client.transport import Backend, ClientError

    ctx = zmq.Context()
    t0 = time.monotonic()
    try:
        backend = Backend(ctx, endpoint, curve=curve)
        try:
            # Reload even when the settings already match: every repeat gets a real cold start.
            settings = cfg.reload_settings()
            old_instance = ControlReplyHeader.from_wire(backend.control("reload", settings=settings)).instance
        finally:
            backend.close()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            # A fresh socket per probe: the old one may hold requests the dying server never answered.
            probe = Backend(ctx, endpoint, curve=curve)
            try:
                info = probe.hello(min(5.0, max(0.1, deadline - time.monotonic())))
                header = InfoHeader.from_wire(info)
                if header.instance != old_instance and header.state == "ready":
                    applied = {k: info.get(k) for k in settings}
                    if applied != settings:  # e.g. another server answered on that endpoint
                        raise RuntimeError(f"{endpoint} came back with {applied}, not {settings}")
                    return time.monotonic() - t0
            except ClientError:
                pass
            finally:
                probe.close()
        raise RuntimeError(f"{endpoint} did not come back from reload within {timeout_s:g} s")
    finally:
        ctx.term()


def run_config(cfg: Point, repeats: int, servers: tuple[str, ...], folder: Path, timeout_s: float,
               measure: Measure, index: int = 0, profile_dir: Path | None = None,
               curve: CurveKeys | None = None) -> SweepRecord:
    """All repeats of one configuration, each against a fresh server (its log kept in folder/logs; each
    repeat's trace in `profile_dir` when given: the repeats stay alike). Never raises."""
    record = SweepRecord(cfg.key, cfg.label, cfg.record_config())
    for repeat in range(repeats):
        proc = None
        try:
            if servers:
                endpoints = servers
                ready_s = max(reload_remote(e, cfg, timeout_s, curve) for e in servers)
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
            break
        finally:
            if proc is not None:
                stop_process(proc, STOP_TIMEOUT_S)
    return record


# -- where a sweep's files go ------------------------------------------------------------


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


def write_answer(records: list[SweepRecord], folder: Path, plan: SweepPlan) -> list[Path]:
    """answer.md (the best configuration under the objective, every configuration's figures), the plots."""
    stats = configurations(records)
    slo = objective_ms(plan)
    answer = folder / "answer.md"
    percentile = float(plan.peak.get("percentile", 99.0)) if plan.mode == "peak" else 99.0
    write_atomic(answer, answer_markdown(stats, slo, plan.mode, percentile))
    plots = [plot_pareto(stats, folder / "pareto.png", slo),
             plot_curves(stats, plan.curve_axis, folder / "curves.png", slo)]
    return [answer, *(p for p in plots if p is not None)]


# -- the whole grid ------------------------------------------------------------------------


def environment(argv: list[str], device: str) -> dict[str, Any]:
    """The machine, the versions, the command and the commit: what a sweep ran on."""
    return {**host.environment(), "command": argv, "device": device, "git_commit": host.git_commit(ROOT)}


def earlier_records(plan: SweepPlan, folder: Path, own_folder: bool) -> dict[str, SweepRecord]:
    """With --resume, the configurations earlier sweeps completed: this folder's, and with a folder per
    sweep, every sibling's."""
    done: dict[str, SweepRecord] = {}
    if plan.resume:
        for earlier in [*(sorted(folder.parent.glob("sweep-*/")) if own_folder else []), folder]:
            done.update(completed_records(earlier))
    return done


def run_grid(grid: list[Point], plan: SweepPlan, servers: tuple[str, ...], folder: Path, stamp: str,
             device: str, own_folder: bool, profile: bool = False, remote: Remote | None = None) -> int:
    """Run every configuration, writing results as it goes; returns how many failed."""
    from tqdm import tqdm

    (folder / "logs").mkdir(parents=True, exist_ok=True)
    done = earlier_records(plan, folder, own_folder)
    json_path = folder / f"sweep-{stamp}.json"
    env = environment(sys.argv, device)
    records: list[SweepRecord] = []

    def save() -> None:
        write_atomic(json_path, json.dumps({"environment": env, "stamp": stamp, "mode": plan.mode, "peak": plan.peak,
                                            "configurations": [r.to_dict() for r in records]}, indent=1))

    with tqdm(total=len(grid), unit="config", file=sys.stderr, dynamic_ncols=True) as bar:
        measure = measure_for(plan, lambda line: bar.write(line, file=sys.stderr), remote, folder / "logs")
        for index, cfg in enumerate(grid):
            bar.set_postfix_str(cfg.label)
            if cfg.key in done:
                records.append(dataclasses.replace(done[cfg.key], resumed=True))
                bar.update(1)
                continue
            profile_dir = (folder / "profile" / cfg.slug).resolve() if profile else None
            rec = run_config(cfg, plan.repeats, servers, folder, plan.timeout_s, measure, index, profile_dir,
                             remote.curve if remote else None)
            records.append(rec)
            save()
            table = folder / f"output_{cfg.batch_size}_{'on' if cfg.compile else 'off'}.md"
            append_output_table(table, rec, stamp, env["host"])
            if not rec.ok:
                bar.write(f"FAILED {cfg.label}: {rec.reason}", file=sys.stderr)
            bar.update(1)
    save()
    failed = _summarise(records, folder, stamp, env, json_path)
    answers = write_answer(records, folder, plan)
    answers.append(write_sweep_report(json_path, objective_ms(plan)))
    click.echo(f"the answer: {folder}/{answers[0].name} ({', '.join(p.name for p in answers[1:])})")
    return failed


def _summarise(records: list[SweepRecord], results_dir: Path, stamp: str, env: dict[str, Any],
               json_path: Path) -> int:
    """summary.md and the plots; returns how many configurations failed."""
    write_atomic(results_dir / "summary.md", summary_markdown(records, stamp, env))
    plots = plot(records, results_dir, env["host"])
    click.echo(markdown(*summary_table(records, env["host"])))
    failed = sum(not r.ok for r in records)
    click.echo(
        f"{len(records) - failed} ok, {failed} failed; wrote {results_dir}/summary.md, {json_path.name}, "
        + ", ".join(p.name for p in plots)
    )
    return failed
