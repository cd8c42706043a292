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

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.config import ClientConfig
from client.peak import PeakSearch, Probe, find_peak
from common.fileio import write_atomic
from common.protocol import ControlReplyHeader, InfoHeader
from server.launch import launch_server, stop_process
from sweep_answer import answer_markdown, configuration_stats, plot_curves, plot_pareto
from sweep_plan import SweepPlan

if TYPE_CHECKING:
    from sweep import SweepConfig

ROOT = Path(__file__).resolve().parent
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


# -- one configuration, all its repeats ------------------------------------------------


def start_server(cfg: SweepConfig, log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, str, float]:
    """Spawn a fresh server; returns (process, endpoint, spawn-to-ready seconds)."""
    t0 = time.monotonic()
    server = launch_server(cfg.server_argv(), log_path, timeout_s, cwd=ROOT)
    return server.proc, server.endpoint, time.monotonic() - t0


def reload_remote(endpoint: str, cfg: SweepConfig, timeout_s: float) -> float:
    """Ask a running server to re-exec with cfg's server settings; returns seconds until its new HELLO.

    The reply carries the old instance id; a poll loop on HELLO (each bounded)
    waits for a different one, so the cold start of the new settings is measured.
    """
    import zmq

    from client.transport import Backend, ClientError

    ctx = zmq.Context()
    t0 = time.monotonic()
    try:
        backend = Backend(ctx, endpoint)
        try:
            # Reload even when the settings already match: every repeat gets a real cold start.
            settings = cfg.reload_settings()
            old_instance = ControlReplyHeader.from_wire(backend.control("reload", settings=settings)).instance
        finally:
            backend.close()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            # A fresh socket per probe: the old one may hold requests the dying server never answered.
            probe = Backend(ctx, endpoint)
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


def run_config(cfg: SweepConfig, repeats: int, servers: tuple[str, ...], folder: Path, timeout_s: float,
               measure: Measure, index: int = 0, profile_dir: Path | None = None) -> dict:
    """All repeats of one configuration, each against a fresh server (its log kept in folder/logs; each
    repeat's trace in `profile_dir` when given: the repeats stay alike). Never raises."""
    record: dict[str, Any] = {"key": cfg.key, "label": cfg.label, "config": cfg.record_config(), "runs": [],
                              "status": "ok"}
    for repeat in range(repeats):
        proc = None
        try:
            if servers:
                endpoints = servers
                ready_s = max(reload_remote(e, cfg, timeout_s) for e in servers)
            else:
                proc, endpoint, ready_s = start_server(cfg, log_path(folder, index, repeat), timeout_s)
                endpoints = (endpoint,)
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            measured = measure(cfg.client_config(tuple(endpoints), timeout_s, profile_dir))
            record["runs"].append({"repeat": repeat, "spawn_to_ready_s": ready_s, **measured})
        except Exception as exc:  # one configuration must not lose the sweep
            record["status"] = "failed"
            record["reason"] = f"{type(exc).__name__}: {exc}"
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
