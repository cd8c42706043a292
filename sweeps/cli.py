"""`python sweep.py`: run the benchmark over a grid of configurations and summarise it.

For every configuration a fresh `infer-server` process is started (so cold start
is measured each time), its `ready` line awaited, the client run in-process, and
the server stopped with SIGTERM (SIGKILL after a timeout). A configuration that
fails is recorded with its reason and the sweep goes on.

The client runs in-process: `client.runner.run` returns the RunResult directly
and every client failure surfaces as an exception bounded by the client's own
timeouts; the server, the part most likely to crash or hang, is the subprocess.

Every server and client option is an axis (sweeps/axes.py, sweeps/plan.py):
`--axis NAME=VALUES` or a TOML file (`--config`, examples/sweeps/), the flags
overriding the file. `--find-peak` (or `mode = "peak"`) searches each
configuration's highest request rate under `--slo-ms` instead of one run at
fixed load (sweeps/run.py). Across hosts (sweeps/launch.py): `--server` endpoints
reloaded over CURVE with the client's keys, and `--client-launcher` running each
repeat's client as a fleet of ranks (mpirun, srun).

Outputs, in a new folder of the sweep's own under `--results-dir` (default
results/: `results/sweep-<stamp>/`): output_{batch}_{compile}.md, summary.md,
sweep-<stamp>.json (every raw run plus the environment), PNG plots
(throughput_latency.png; latency_cdf.png, the percentile plot), answer.md with
pareto.png and curves.png, and logs/ with every server's log. Tables and the
answer are made by sweeps/report.py, the plots by sweeps/plots.py.

Ctrl-C writes the summary, answer and plots of what finished, marked
interrupted, prints the command that goes on (`--resume FOLDER`,
sweeps/resume.py) and exits 130.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from client.config import CurveKeys
from common import __version__
from common.click_options import endpoint_type
from common.options import check_writable_file, parse_int_list
from server.config import RELOADABLE
from server.models.build import check_model
from sweeps.launch import Remote, parse_launcher
from sweeps.plan import Point, SweepPlan, build_plan, flags_doc, read_toml

if TYPE_CHECKING:
    from sweeps.resume import Earlier

START_TIMEOUT_S = 600.0  # compile-on warm-up of several shapes can take minutes on CPU

GPU_DEFAULTS = {"batch_sizes": "1,32,64,128,256", "compile": "both", "repeats": 10, "image_size": 250, "num_iters": 100}
CPU_DEFAULTS = {"batch_sizes": "1,8", "compile": "off", "repeats": 2, "image_size": 64, "num_iters": 20}


# -- CLI -----------------------------------------------------------------------------

EXIT_SOME_FAILED = 1  # the sweep ran, but at least one configuration failed (recorded with its reason)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as infer-client: what finished is written


def _ints(value: str, name: str, minimum: int = 0) -> list[int]:
    """A comma-separated axis: at least one integer, none below `minimum`."""
    try:
        items = list(parse_int_list(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None
    if not items:
        raise click.BadParameter("give at least one value", param_hint=name)
    if any(v < minimum for v in items):
        raise click.BadParameter(f"expected integers >= {minimum}, got {value!r}", param_hint=name)
    return items


def check_grid(grid: list[Point], servers: tuple[str, ...], timeout_s: float, curve: CurveKeys | None = None) -> None:
    """Every point's server and client configuration is valid: fail before the first server starts."""
    for cfg in grid:
        try:
            cfg.server_config()
            cfg.client_config(servers or ("tcp://127.0.0.1:5555",), timeout_s, curve=curve)
        except ValueError as exc:
            raise click.UsageError(f"{cfg.label}: {exc}") from None
        fixed = [k for k, _ in cfg.server_extra if k not in RELOADABLE]
        if servers and fixed:
            raise click.UsageError(f"{', '.join(fixed)}: not reloadable, so not settable on --server endpoints")


def remote_of(servers: tuple[str, ...], client_key: Path | None, server_key: Path | None, launcher: str | None,
              coordinator: str | None, profile: bool, find_peak: bool) -> Remote:
    """CURVE keys and the client launcher, checked (UsageError naming the options at fault)."""
    if (client_key is None) != (server_key is None):
        raise click.UsageError("--curve-client-key and --curve-server-key go together")
    if client_key is not None and not servers:
        raise click.UsageError("CURVE keys are for --server endpoints; the servers spawned here listen on loopback")
    if coordinator is not None and launcher is None:
        raise click.UsageError("--client-coordinator needs --client-launcher")
    words: tuple[str, ...] = ()
    if launcher is not None:
        if profile or find_peak:
            raise click.UsageError("--client-launcher runs fixed-load repeats without --profile or --find-peak")
        try:
            words = parse_launcher(launcher)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--client-launcher") from None
    curve = CurveKeys(client_key, server_key) if client_key is not None and server_key is not None else None
    return Remote(curve, words, coordinator)


def machine_defaults(cuda: bool, server: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The grid a bare `python sweep.py` runs on this machine, as a sweep document (sweeps/plan.py); `server`:
    the server settings of a running --server endpoint instead of a spawned server's defaults."""
    d = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    spawned = {"device": "cuda:0" if cuda else "cpu", "model": "resnet18", "compile": d["compile"],
               "num_workers": 2 if cuda else 1}  # the server's own default (server/workers.py)
    return {
        "server": server if server is not None else spawned,
        "client": {"batch_size": list(parse_int_list(d["batch_sizes"])), "image_size": d["image_size"],
                   "num_iters": d["num_iters"], "concurrency": 1},
        "sweep": {"repeats": d["repeats"], "timeout_s": START_TIMEOUT_S},
    }


def plan_of(cuda: bool, file_doc: dict[str, Any] | None, flags: dict[str, Any],
            server: dict[str, Any] | None = None) -> tuple[SweepPlan, list[Point]]:
    """The plan (machine defaults, then the file, then the flags) and its grid; UsageError naming what is wrong."""
    try:
        plan = build_plan(machine_defaults(cuda, server), file_doc, flags)
        return plan, plan.points()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def running_server(servers: tuple[str, ...], timeout_s: float, curve: CurveKeys | None = None) -> dict[str, Any]:
    """The first --server endpoint's settings (device, model, compile, workers): what the sweep leaves as they
    are unless told. UsageError when it does not answer."""
    from sweeps.remote import server_defaults, server_info

    try:
        return server_defaults(server_info(servers[0], min(timeout_s, 30.0), curve))
    except RuntimeError as exc:
        raise click.UsageError(f"--server {exc}") from None


def check_device(plan: SweepPlan, running: dict[str, Any], servers: tuple[str, ...]) -> None:
    """A --server endpoint keeps its device (a reload cannot move it): a sweep asking for another is refused."""
    other = [d for d in plan.server.get("device", ()) if d != running.get("device")]
    if other:
        raise click.UsageError(f"--device {other[0]}: the server at {servers[0]} runs on {running.get('device')}, "
                               "and a reload cannot change a server's device")


def resumed(plan: SweepPlan) -> Earlier | None:
    """The earlier sweep --resume names, read; UsageError when it cannot be."""
    from sweeps.resume import read_earlier

    if plan.resume is None:
        return None
    try:
        return read_earlier(plan.resume)
    except ValueError as exc:
        raise click.UsageError(f"--resume: {exc}") from None


def check_results_dir(results_dir: Path) -> None:
    """The directory exists (made if missing) and takes files: checked before any configuration runs."""
    try:
        check_writable_file(results_dir / "summary.md")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--results-dir") from None


def describe(plan: SweepPlan, grid: list[Point], cuda: bool, folder: Path) -> str:
    """The opening line: what runs, on what, and where it goes."""
    axes = {**plan.server, **plan.client}
    swept = [f"{k}={','.join(map(str, v))}" for k, v in axes.items() if len(v) > 1]
    fixed = [f"{k}={v[0]}" for k, v in axes.items() if len(v) == 1 and v[0] is not None]
    mode = (f"peak mode (p{plan.peak.get('percentile', 99):g} <= {plan.peak['slo_ms']:g} ms)"
            if plan.mode == "peak" else "fixed load")
    return (f"sweep on {'GPU' if cuda else 'CPU (no CUDA: small defaults)'}, {mode}: {len(grid)} configurations x "
            f"{plan.repeats} repeats; axes {' '.join(swept) or 'none'}; fixed {' '.join(fixed)} -> {folder}/")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__)  # named as invoked: sweep.py or infer-sweep
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A TOML sweep file (examples/sweeps/); the flags given here override it.  [default: none]")
@click.option("--axis", "axes", multiple=True,
              help="NAME=VALUES (repeatable): any server or client option as an axis, VALUES a comma list or "
                   "start:end:step, e.g. max_batch_size=0,8 or request_rate=10:50:10.  [default: none]")
@click.option("--find-peak", is_flag=True,
              help="Peak mode: per configuration, search the highest request rate whose p99 meets --slo-ms.")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The latency objective of --find-peak.  [default: none]")
@click.option("--peak-percentile", type=click.FloatRange(0, 100, min_open=True, max_open=True), default=None,
              help="The percentile --find-peak holds under --slo-ms.  [default: 99]")
@click.option("--batch-sizes", default=None, help="Comma-separated samples per request.  "
              "[default: 1,32,64,128,256 with CUDA, else 1,8]")
@click.option("--compile", "compile_", type=click.Choice(["on", "off", "both"]), default=None,
              help="torch.compile on the server (on CPU compile costs 20-40 s per shape).  "
                   "[default: both with CUDA, else off]")
@click.option("--repeats", type=click.IntRange(1), default=None,
              help="Runs per configuration, each against a fresh server.  [default: 10 with CUDA, else 2]")
@click.option("--num-iters", type=click.IntRange(1), default=None,
              help="Measured requests per run.  [default: 100 with CUDA, else 20]")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Seconds per run instead of --num-iters.  [default: none]")
@click.option("--concurrency", default=None, help="Comma-separated requests in flight (0 = unbounded flood).  "
              "[default: 1]")
@click.option("--num-workers", default=None,
              help="Comma-separated server worker-thread counts (0: the server's I/O thread runs the model).  "
                   "[default: 2 with CUDA, else 1, as the server's]")
@click.option("--image-size", type=click.IntRange(32, 4096), default=None,
              help="Inputs are [B, 3, S, S]; S in pixels.  [default: 250 with CUDA, else 64]")
@click.option("--device", default=None, help="Server device: cuda:N or cpu.  [default: cuda:0 with CUDA, else cpu]")
@click.option("--model", default=None,
              help="The server's model: a built-in, any torchvision classification model, or package.module:factory."
                   "  [default: resnet18]")
@click.option("--server", "servers", multiple=True, type=endpoint_type(),
              help="Run against an already-running server (repeatable) instead of spawning one per run; "
                   "server-side axes are applied with CONTROL reload.  [default: none]")
@click.option("--curve-client-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE to the --server endpoints (reloads and client runs): this client's .key_secret file "
                   "(needs --curve-server-key).  [default: none]")
@click.option("--curve-server-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CURVE: the servers' public .key file.  [default: none]")
@click.option("--client-launcher", default=None,
              help="Run each repeat's client as a fleet started by this command, e.g. 'mpirun -np 4 --host a,b' "
                   "or 'srun --ntasks 8' (docs/distributed.md); load options are the fleet's totals.  "
                   "[default: none, one client in this process]")
@click.option("--client-coordinator", default=None, type=endpoint_type(),
              help="--client-launcher: tcp://HOST:PORT where rank 0 listens (HOST: rank 0's host).  [default: "
                   "Slurm's first node under srun, else this host at a free port]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The parent of this sweep's own new folder, sweep-<stamp>/ (made if missing).  [default: results]")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="SWEEP",
              help="Go on with the sweep in folder SWEEP (results/sweep-<stamp>/, as Ctrl-C prints): reuse the "
                   "configurations it completed, run the rest, write there. Refused if SWEEP ran configurations "
                   "this grid lacks.  [default: none]")
@click.option("--cdf-per-repeat", is_flag=True,
              help="latency_cdf.png: each repeat's own curve too (thin), beside its configuration's merged one.")
@click.option("--profile", is_flag=True,
              help="Keep a torch.profiler trace of each run's measured window, in a folder per configuration "
                   "under the sweep's folder, in profile/ (servers spawned here only; profiling slows the runs it "
                   "measures).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=None,
              help="Seconds allowed for a server to start (and for the first request).  [default: 600]")
def main(
    config_file: Path | None, axes: tuple[str, ...], find_peak: bool, slo_ms: float | None,
    peak_percentile: float | None, batch_sizes: str | None, compile_: str | None, repeats: int | None,
    num_iters: int | None, duration: float | None, concurrency: str | None, num_workers: str | None,
    image_size: int | None, device: str | None, model: str | None, servers: tuple[str, ...],
    curve_client_key: Path | None, curve_server_key: Path | None, client_launcher: str | None,
    client_coordinator: str | None, results_dir: Path | None, resume: Path | None, cdf_per_repeat: bool,
    profile: bool, timeout_s: float | None,
) -> None:
    """Run the benchmark over a grid of configurations, a fresh server per run; write tables and plots.

    Exits 1 when any configuration failed (each is recorded with its reason), 2 on bad usage, 130 on Ctrl-C
    (what finished is written, and the command to go on printed).
    """
    if duration is not None and num_iters is not None:
        raise click.UsageError("give --num-iters or --duration, not both")
    if profile and servers:  # the trace is written on the server's host, maybe not this one
        raise click.UsageError("--profile needs servers spawned here, not --server endpoints")
    remote = remote_of(servers, curve_client_key, curve_server_key, client_launcher, client_coordinator,
                       profile, find_peak)
    # An empty list is a mistake, not a request for the defaults: only an absent option means those.
    for text, name, low in ((batch_sizes, "--batch-sizes", 1), (concurrency, "--concurrency", 0),
                            (num_workers, "--num-workers", 0)):
        if text is not None:
            _ints(text, name, minimum=low)
    try:
        file_doc = read_toml(config_file) if config_file is not None else None
        flags = flags_doc(
            batch_sizes=batch_sizes, compile_=compile_, concurrency=concurrency, num_workers=num_workers,
            image_size=image_size, device=device, model=model, num_iters=num_iters, duration_s=duration,
            repeats=repeats, results_dir=results_dir, timeout_s=timeout_s, resume=resume, axes=axes,
            find_peak=find_peak, slo_ms=slo_ms, percentile=peak_percentile)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    # Everything the command line says is checked before torch is imported (seconds) and before any run.
    plan, grid = plan_of(False, file_doc, flags)
    if remote.launcher and plan.mode == "peak":
        raise click.UsageError("--client-launcher runs fixed-load repeats; a peak search probes from this process")
    check_grid(grid, servers, plan.timeout_s, remote.curve)
    for name in plan.server["model"] if not servers else ():  # servers started here load it: does it exist?
        try:
            check_model(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    earlier = resumed(plan)
    if earlier is None:
        check_results_dir(plan.results_dir)
    _execute(file_doc, flags, servers, remote, earlier, profile, cdf_per_repeat, plan.timeout_s)


def _execute(file_doc: dict[str, Any] | None, flags: dict[str, Any], servers: tuple[str, ...], remote: Remote,
             earlier: Earlier | None, profile: bool, cdf_per_repeat: bool, timeout_s: float) -> None:
    """Plan again with what only torch and a running server can say, then run the grid and report it."""
    import torch

    from sweeps.run import run_grid, sweep_folder  # imports numpy (client.peak): after the checks

    cuda = torch.cuda.is_available()
    running = running_server(servers, timeout_s, remote.curve) if servers else None
    plan, grid = plan_of(cuda, file_doc, flags, running)
    check_grid(grid, servers, plan.timeout_s, remote.curve)
    if running is not None:
        check_device(plan, running, servers)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from sweeps.resume import check_belongs, first_line, resume_command

    if earlier is not None:
        try:
            check_belongs(earlier, plan, grid)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(first_line(earlier, grid))
    folder = earlier.folder if earlier is not None else sweep_folder(plan.results_dir, stamp)
    click.echo(describe(plan, grid, cuda, folder))
    if servers and any(len(v) > 1 for v in plan.server.values()):
        click.echo("note: server-side axes on --server endpoints are applied with CONTROL reload (re-exec)")
    try:
        outcome = run_grid(grid, plan, servers, folder, stamp, grid[0].device, profile, cdf_per_repeat,
                           earlier.completed() if earlier is not None else None, remote)
    except OSError as exc:  # e.g. the disk filled up: one line, and what was written so far stays
        raise click.ClickException(f"cannot write results: {exc}") from None
    if outcome.interrupted:
        click.echo(f"interrupted: {outcome.interrupted}; their summary, answer and plots are in {folder}/ "
                   f"(marked interrupted). To go on:\n  {resume_command(sys.argv, folder)}")
        sys.exit(EXIT_INTERRUPTED)
    if outcome.failed:
        sys.exit(EXIT_SOME_FAILED)




if __name__ == "__main__":
    main()
