"""`python sweep.py`: run the benchmark over a grid of configurations and summarise it.

For every configuration a fresh `infer-server` process is started (so cold start
is measured each time), its `ready` line awaited, the client run in-process, and
the server stopped with SIGTERM (SIGKILL after a timeout). A configuration that
fails is recorded with its reason and the sweep goes on.

The client runs in-process: `client.runner.run` returns the RunResult directly
and every client failure surfaces as an exception bounded by the client's own
timeouts; the server, the part most likely to crash or hang, is the subprocess.

Outputs in --results-dir: output_{batch}_{compile}.md (one row appended per
sweep), summary.md, sweep-<stamp>.json (every raw run plus the environment),
and PNG plots (throughput_latency.png; latency_cdf.png, the percentile plot).
Tables and plots are made by sweep_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from client.config import ClientConfig
from common import __version__, host
from common.click_options import endpoint_type
from common.fileio import write_atomic
from common.options import check_writable_file, parse_int_list
from server.config import ServerConfig
from server.launch import launch_server, stop_process
from server.model import check_model
from sweep_report import append_output_table, completed_keys, markdown, plot, summary_table, title_of

ROOT = Path(__file__).resolve().parent
START_TIMEOUT_S = 600.0  # compile-on warm-up of several shapes can take minutes on CPU
STOP_TIMEOUT_S = 30.0

GPU_DEFAULTS = {"batch_sizes": "1,32,64,128,256", "compile": "both", "repeats": 10, "image_size": 250, "num_iters": 100}
CPU_DEFAULTS = {"batch_sizes": "1,8", "compile": "off", "repeats": 2, "image_size": 64, "num_iters": 20}
# The server settings the grid varies: what a remote server (--server) is reloaded with.
SWEPT_SERVER_SETTINGS = ("compile", "num_workers")


@dataclass(frozen=True)
class SweepConfig:
    """One point of the grid (all repeats of it share these parameters)."""

    batch_size: int
    compile: bool
    concurrency: int
    num_workers: int
    image_size: int
    device: str
    model: str
    num_iters: int | None
    duration_s: float | None

    @property
    def key(self) -> str:
        """Identifies the configuration across sweeps (for --resume)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def label(self) -> str:
        return f"b{self.batch_size} compile={'on' if self.compile else 'off'} c{self.concurrency} w{self.num_workers}"

    def server_config(self) -> ServerConfig:
        """The server this point runs against (ValueError if the grid asks for an invalid one)."""
        return ServerConfig(device=self.device, model=self.model, num_workers=self.num_workers,
                            compile=self.compile, log_level="warning")

    def server_argv(self) -> list[str]:
        return self.server_config().to_argv()

    @property
    def slug(self) -> str:
        """The label as a file name."""
        return f"b{self.batch_size}-compile_{'on' if self.compile else 'off'}-c{self.concurrency}-w{self.num_workers}"

    def client_config(self, servers: tuple[str, ...], timeout_s: float,
                      profile_dir: Path | None = None) -> ClientConfig:
        """The client run of one repeat (ValueError if the grid asks for an invalid one)."""
        return ClientConfig(
            servers=servers, batch_size=self.batch_size, image_size=self.image_size, num_iters=self.num_iters,
            duration_s=self.duration_s, concurrency=self.concurrency, timeout_s=min(timeout_s, 120.0),
            warmup_timeout_s=timeout_s, profile_dir=profile_dir,
        )


def expand_grid(
    batch_sizes: list[int], compiles: list[bool], concurrencies: list[int], workers: list[int], **common: Any
) -> list[SweepConfig]:
    """Every combination, ordered so configurations sharing server settings are adjacent."""
    return [
        SweepConfig(batch_size=b, compile=c, concurrency=k, num_workers=w, **common)
        for c in compiles
        for w in workers
        for b in batch_sizes
        for k in concurrencies
    ]


# -- running one configuration -------------------------------------------------


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
            wanted = cfg.server_config().to_json()
            settings = {name: wanted[name] for name in SWEPT_SERVER_SETTINGS}
            old_instance = backend.control("reload", settings=settings)["instance"]
        finally:
            backend.close()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            # A fresh socket per probe: the old one may hold requests the dying server never answered.
            probe = Backend(ctx, endpoint)
            try:
                info = probe.hello(min(5.0, max(0.1, deadline - time.monotonic())))
                if info.get("instance") != old_instance and info.get("state") == "ready":
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


def run_config(cfg: SweepConfig, repeats: int, servers: tuple[str, ...], log_dir: Path, timeout_s: float,
               profile_dir: Path | None = None) -> dict:
    """All repeats of one configuration, each against a fresh server (each repeat's trace in
    `profile_dir` when given: the repeats stay alike). Never raises."""
    from client.runner import run

    record: dict[str, Any] = {"key": cfg.key, "config": dataclasses.asdict(cfg), "runs": [], "status": "ok"}
    for repeat in range(repeats):
        proc = None
        try:
            if servers:
                endpoints = servers
                ready_s = max(reload_remote(e, cfg, timeout_s) for e in servers)
            else:
                log_path = log_dir / f"server-b{cfg.batch_size}-c{int(cfg.compile)}-{repeat}.log"
                proc, endpoint, ready_s = start_server(cfg, log_path, timeout_s)
                endpoints = (endpoint,)
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            result = run(cfg.client_config(tuple(endpoints), timeout_s, profile_dir))
            if result.failed_total or result.lost:
                raise RuntimeError(f"{result.failed_total} requests failed, {result.lost} lost")
            record["runs"].append({"repeat": repeat, "spawn_to_ready_s": ready_s, "result": result.to_dict()})
        except Exception as exc:  # one configuration must not lose the sweep
            record["status"] = "failed"
            record["reason"] = f"{type(exc).__name__}: {exc}"
            break
        finally:
            if proc is not None:
                stop_process(proc, STOP_TIMEOUT_S)
    return record


# -- summarising (tables and plots: sweep_report.py) ------------------------------------


def environment(argv: list[str], device: str) -> dict[str, Any]:
    """The machine, the versions, the command and the commit: what a sweep ran on."""
    return {**host.environment(), "command": argv, "device": device, "git_commit": host.git_commit(ROOT)}


# -- CLI -----------------------------------------------------------------------------

EXIT_SOME_FAILED = 1  # the sweep ran, but at least one configuration failed (recorded with its reason)
COMPILES = {"on": [True], "off": [False], "both": [False, True]}


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


def check_grid(grid: list[SweepConfig], servers: tuple[str, ...], timeout_s: float) -> None:
    """Every point's server and client configuration is valid: fail before the first server starts."""
    for cfg in grid:
        try:
            cfg.server_config()
            cfg.client_config(servers or ("tcp://127.0.0.1:5555",), timeout_s)
        except ValueError as exc:
            raise click.UsageError(f"{cfg.label}: {exc}") from None


@dataclass(frozen=True)
class GridArgs:
    """The grid as the command line gave it: None where the machine's defaults apply."""

    batch_sizes: list[int] | None
    compile: str | None
    repeats: int | None
    num_iters: int | None
    duration_s: float | None
    concurrencies: list[int]
    workers: list[int]
    image_size: int | None
    device: str | None
    model: str

    def resolve(self, cuda: bool) -> tuple[list[SweepConfig], dict[str, Any]]:
        """The grid with this machine's defaults filled in, and those settings (for the opening line)."""
        defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
        settings = {
            "device": self.device or ("cuda:0" if cuda else "cpu"),
            "batch_sizes": self.batch_sizes or parse_int_list(defaults["batch_sizes"]),
            "compile": self.compile or defaults["compile"],
            "repeats": self.repeats or defaults["repeats"],
            "image_size": self.image_size or defaults["image_size"],
            "num_iters": self.num_iters if self.num_iters or self.duration_s else defaults["num_iters"],
        }
        grid = expand_grid(
            list(settings["batch_sizes"]), COMPILES[settings["compile"]], self.concurrencies, self.workers,
            image_size=settings["image_size"], device=settings["device"], model=self.model,
            num_iters=settings["num_iters"], duration_s=self.duration_s,
        )
        return grid, settings


def check_results_dir(results_dir: Path) -> None:
    """The directory exists (made if missing) and takes files: checked before any configuration runs."""
    try:
        check_writable_file(results_dir / "summary.md")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--results-dir") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="sweep.py")
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
@click.option("--concurrency", default="1", help="Comma-separated requests in flight (0 = unbounded flood).")
@click.option("--num-workers", default="2",
              help="Comma-separated server worker-thread counts (0: the server's I/O thread runs the model).")
@click.option("--image-size", type=click.IntRange(32, 4096), default=None,
              help="Inputs are [B, 3, S, S]; S in pixels.  [default: 250 with CUDA, else 64]")
@click.option("--device", default=None, help="Server device: cuda:N or cpu.  [default: cuda:0 with CUDA, else cpu]")
@click.option("--model", default="resnet18",
              help="The server's model: a built-in, any torchvision classification model, or package.module:factory.")
@click.option("--server", "servers", multiple=True, type=endpoint_type(),
              help="Run against an already-running server (repeatable) instead of spawning one per run; "
                   "server-side axes are applied with CONTROL reload.  [default: none]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              help="Where tables, plots and sweep-*.json go (made if missing; relative to the current directory).")
@click.option("--resume", is_flag=True, help="Skip configurations completed by an earlier sweep in --results-dir.")
@click.option("--profile", is_flag=True,
              help="Keep a torch.profiler trace of each run's measured window, in a folder per configuration "
                   "under --results-dir/profile/ (servers spawned here only; profiling slows the runs it measures).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=START_TIMEOUT_S,
              help="Seconds allowed for a server to start (and for the first request).")
def main(
    batch_sizes: str | None, compile_: str | None, repeats: int | None, num_iters: int | None,
    duration: float | None, concurrency: str, num_workers: str, image_size: int | None, device: str | None,
    model: str, servers: tuple[str, ...], results_dir: Path, resume: bool, profile: bool, timeout_s: float,
) -> None:
    """Run the benchmark over a grid of configurations, a fresh server per run; write tables and plots.

    Exits 1 when any configuration failed (each is recorded with its reason), 2 on bad usage.
    """
    if duration is not None and num_iters is not None:
        raise click.UsageError("give --num-iters or --duration, not both")
    if profile and servers:  # the trace is written on the server's host, maybe not this one
        raise click.UsageError("--profile needs servers spawned here, not --server endpoints")
    # An empty list is a mistake, not a request for the defaults: only an absent option means those.
    args = GridArgs(
        batch_sizes=_ints(batch_sizes, "--batch-sizes", minimum=1) if batch_sizes is not None else None,
        compile=compile_, repeats=repeats, num_iters=num_iters, duration_s=duration,
        concurrencies=_ints(concurrency, "--concurrency"), workers=_ints(num_workers, "--num-workers"),
        image_size=image_size, device=device, model=model,
    )
    # Everything the command line says is checked before torch is imported (seconds) and before any run.
    check_grid(args.resolve(cuda=False)[0], servers, timeout_s)
    if not servers:  # servers started here load it: is it a torchvision name torchvision knows?
        try:
            check_model(model)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    check_results_dir(results_dir)
    import torch

    cuda = torch.cuda.is_available()
    grid, settings = args.resolve(cuda)
    check_grid(grid, servers, timeout_s)
    if servers and (len(args.workers) > 1 or settings["compile"] == "both"):
        click.echo("note: server-side axes on --server endpoints are applied with CONTROL reload (re-exec)")
    length = f"{settings['num_iters']} iters" if settings["num_iters"] else f"{duration:g} s"
    click.echo(
        f"sweep on {'GPU' if cuda else 'CPU (no CUDA: small defaults)'}: device {settings['device']}, model {model}, "
        f"batch sizes {','.join(map(str, settings['batch_sizes']))}, compile {settings['compile']}, "
        f"repeats {settings['repeats']}, image {settings['image_size']}, {length} per run, "
        f"concurrency {concurrency}, workers {num_workers}: {len(grid)} configurations -> {results_dir}/"
    )
    try:
        failed = run_grid(grid, settings["repeats"], servers, results_dir, resume, timeout_s, settings["device"],
                          profile)
    except OSError as exc:  # e.g. the disk filled up: one line, and what was written so far stays
        raise click.ClickException(f"cannot write results: {exc}") from None
    if failed:
        sys.exit(EXIT_SOME_FAILED)


def run_grid(
    grid: list[SweepConfig], repeats: int, servers: tuple[str, ...], results_dir: Path, resume: bool,
    timeout_s: float, device: str, profile: bool = False,
) -> int:
    """Run every configuration, writing results as it goes; returns how many failed."""
    from tqdm import tqdm

    results_dir.mkdir(parents=True, exist_ok=True)
    done = completed_keys(results_dir) if resume else {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = results_dir / f"sweep-{stamp}.json"
    env = environment(sys.argv, device)
    records: list[dict] = []

    def save() -> None:
        write_atomic(json_path, json.dumps({"environment": env, "stamp": stamp, "configurations": records}, indent=1))

    with tempfile.TemporaryDirectory(prefix="sweep-logs-") as logs, tqdm(
        total=len(grid), unit="config", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        for cfg in grid:
            bar.set_postfix_str(cfg.label)
            if cfg.key in done:
                records.append({**done[cfg.key], "resumed": True})
                bar.update(1)
                continue
            profile_dir = (results_dir / "profile" / cfg.slug).resolve() if profile else None
            rec = run_config(cfg, repeats, servers, Path(logs), timeout_s, profile_dir)
            records.append(rec)
            save()
            table = results_dir / f"output_{cfg.batch_size}_{'on' if cfg.compile else 'off'}.md"
            append_output_table(table, rec, stamp, env["host"])
            if rec["status"] != "ok":
                bar.write(f"FAILED {cfg.label}: {rec['reason']}", file=sys.stderr)
            bar.update(1)
    save()
    return _summarise(records, results_dir, stamp, env, json_path)


def _summarise(records: list[dict], results_dir: Path, stamp: str, env: dict[str, Any], json_path: Path) -> int:
    """summary.md and the plots; returns how many configurations failed."""
    header, rows = summary_table(records, env["host"])
    text = (f"# Sweep {stamp}: {title_of(records, env['host'])}\n\n"
            f"{env['device']} on {env['host']} ({env['cpu']}), git {env['git_commit']}; latency in ms, each cell"
            " the mean ± standard deviation over the repeats\n\n")
    write_atomic(results_dir / "summary.md", text + markdown(header, rows))
    plots = plot(records, results_dir, env["host"])
    click.echo(markdown(header, rows))
    failed = sum(r["status"] != "ok" for r in records)
    click.echo(
        f"{len(records) - failed} ok, {failed} failed; wrote {results_dir}/summary.md, {json_path.name}, "
        + ", ".join(p.name for p in plots)
    )
    return failed


if __name__ == "__main__":
    main()
