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
and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from client.config import ClientConfig
from client.results import RunResult
from common import host
from common.fileio import write_atomic
from common.options import parse_int_list
from server.config import ServerConfig
from server.launch import launch_server, stop_process
from server.model import MODEL_NAMES

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

    def client_config(self, servers: tuple[str, ...], timeout_s: float) -> ClientConfig:
        """The client run of one repeat (ValueError if the grid asks for an invalid one)."""
        return ClientConfig(
            servers=servers, batch_size=self.batch_size, image_size=self.image_size, num_iters=self.num_iters,
            duration_s=self.duration_s, concurrency=self.concurrency, timeout_s=min(timeout_s, 120.0),
            warmup_timeout_s=timeout_s,
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


def run_config(cfg: SweepConfig, repeats: int, servers: tuple[str, ...], log_dir: Path, timeout_s: float) -> dict:
    """All repeats of one configuration, each against a fresh server. Never raises."""
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
            result = run(cfg.client_config(tuple(endpoints), timeout_s))
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


# -- summarising -----------------------------------------------------------------

METRICS = (  # (summary key, column header)
    ("warmup_latency", "warm-up latency (s)"),
    ("average_latency", "average latency (s)"),
    ("p99_latency", "p99 latency (s)"),
    ("throughput", "throughput (samples/s)"),
    ("gpu_util", "GPU utilization (%)"),
)


def run_summaries(record: dict) -> list[dict]:
    rows = []
    for r in record["runs"]:
        row = RunResult.from_dict(r["result"]).summary()
        row["spawn_to_ready_s"] = r["spawn_to_ready_s"]
        rows.append(row)
    return rows


def mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def table_row(record: dict, extra: list[str]) -> list[str]:
    if record["status"] != "ok":
        return [*extra, *(["failed"] * len(METRICS)), "0", record.get("reason", "").replace("|", "/")]
    rows = run_summaries(record)
    return [*extra, *(mean_std([r[k] for r in rows]) for k, _ in METRICS), str(len(rows)), ""]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def append_output_table(path: Path, record: dict, stamp: str) -> None:
    """The seed's per-(batch, compile) file: one row appended per sweep."""
    cfg = record["config"]
    header = ["sweep", "concurrency", "workers", *(h for _, h in METRICS), "repeats", "note"]
    row = table_row(record, [stamp, str(cfg["concurrency"]), str(cfg["num_workers"])])
    if path.exists():
        text = path.read_text()
        if not text.endswith("\n"):
            text += "\n"
        text += markdown(header, [row]).splitlines()[2] + "\n"
    else:
        title = f"# batch size {cfg['batch_size']}, compile {'on' if cfg['compile'] else 'off'}\n\n"
        text = title + markdown(header, [row])
    write_atomic(path, text)


def summary_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["batch", "compile", "concurrency", "workers", *(h for _, h in METRICS), "repeats", "note"]
    rows = []
    for rec in records:
        c = rec["config"]
        extra = [str(c["batch_size"]), "on" if c["compile"] else "off", str(c["concurrency"]), str(c["num_workers"])]
        rows.append(table_row(rec, extra))
    return header, rows


def environment(argv: list[str], device: str) -> dict[str, Any]:
    """The machine, the versions, the command and the commit: what a sweep ran on."""
    return {**host.environment(), "command": argv, "device": device, "git_commit": host.git_commit(ROOT)}


def plot(records: list[dict], results_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok" and r["runs"]]
    written: list[Path] = []
    if not ok:
        return written
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        c = r["config"]
        groups.setdefault((c["compile"], c["concurrency"], c["num_workers"]), []).append(r)
    for (comp, conc, workers), recs in sorted(groups.items()):
        recs.sort(key=lambda r: r["config"]["batch_size"])
        xs = [r["config"]["batch_size"] for r in recs]
        summ = [run_summaries(r) for r in recs]
        label = f"compile {'on' if comp else 'off'}, c{conc}, w{workers}"

        def mean(rows: list[dict], key: str) -> float:
            return statistics.fmean(x[key] for x in rows if x[key] is not None)

        ax_tp.plot(xs, [mean(s, "throughput") for s in summ], marker="o", label=label)
        ax_lat.plot(xs, [mean(s, "average_latency") * 1e3 for s in summ], marker="o", label=f"avg, {label}")
        ax_lat.plot(xs, [mean(s, "p99_latency") * 1e3 for s in summ], marker="x", ls="--", label=f"p99, {label}")
    ax_tp.set(xlabel="batch size", ylabel="throughput (samples/s)", title="Throughput vs batch size", xscale="log")
    ax_lat.set(xlabel="batch size", ylabel="latency (ms)", title="Latency vs batch size", xscale="log")
    batches = sorted({r["config"]["batch_size"] for r in ok})
    for ax in (ax_tp, ax_lat):
        # Label the batch sizes themselves: log-scale minor labels (2x10^0...) read badly.
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, results_dir / "throughput_latency.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in ok:
        # The CDF of the first repeat: the repeats' histograms are alike by construction.
        pts = RunResult.from_dict(r["runs"][0]["result"]).latency.cdf()
        if pts:
            ax.plot([p[0] * 1e3 for p in pts], [p[1] for p in pts], label=SweepConfig(**r["config"]).label)
    ax.set(xlabel="latency (ms)", ylabel="fraction of requests", title="Latency CDF per configuration", xscale="log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, results_dir / "latency_cdf.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=80)
    tmp.replace(path)
    return path


def completed_keys(results_dir: Path) -> dict[str, dict]:
    """Configurations completed by earlier sweeps (for --resume), newest record winning."""
    done: dict[str, dict] = {}
    for path in sorted(results_dir.glob("sweep-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for rec in data.get("configurations", []):
            if rec.get("status") == "ok":
                done[rec["key"]] = rec
    return done


# -- CLI -----------------------------------------------------------------------------

EXIT_SOME_FAILED = 1  # the sweep ran, but at least one configuration failed (recorded with its reason)


def _ints(value: str, name: str) -> list[int]:
    """A comma-separated axis: at least one non-negative integer."""
    try:
        items = list(parse_int_list(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None
    if not items:
        raise click.BadParameter("give at least one value", param_hint=name)
    if any(v < 0 for v in items):
        raise click.BadParameter(f"expected non-negative integers, got {value!r}", param_hint=name)
    return items


def check_grid(grid: list[SweepConfig], servers: tuple[str, ...], timeout_s: float) -> None:
    """Every point's server and client configuration is valid: fail before the first server starts."""
    for cfg in grid:
        try:
            cfg.server_config()
            cfg.client_config(servers or ("tcp://127.0.0.1:5555",), timeout_s)
        except ValueError as exc:
            raise click.UsageError(f"{cfg.label}: {exc}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--batch-sizes", default=None, help="Comma-separated. Default: 1,32,64,128,256 (GPU) / 1,8 (CPU).")
@click.option("--compile", "compile_", type=click.Choice(["on", "off", "both"]), default=None,
              help="Default: both (GPU) / off (CPU: compile costs 20-40 s per shape; pass --compile both).")
@click.option("--repeats", type=click.IntRange(1), default=None, help="Runs per configuration. Default: 10 / 2.")
@click.option("--num-iters", type=click.IntRange(1), default=None, help="Measured requests per run. Default: 100 / 20.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None, help="Seconds per run instead of --num-iters.")
@click.option("--concurrency", default="1", help="Comma-separated requests in flight (0 = unbounded flood).")
@click.option("--num-workers", default="2",
              help="Comma-separated server worker-thread counts (0: the server's I/O thread runs the model).")
@click.option("--image-size", type=click.IntRange(32, 4096), default=None, help="Default: 250 / 64.")
@click.option("--device", default=None, help="Server device: cuda:N or cpu. Default: cuda:0 if CUDA, else cpu.")
@click.option("--model", type=click.Choice(MODEL_NAMES), default="resnet18")
@click.option("--server", "servers", multiple=True,
              help="Run against an already-running server (repeatable) instead of spawning one per run.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"))
@click.option("--resume", is_flag=True, help="Skip configurations completed by an earlier sweep in --results-dir.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=START_TIMEOUT_S,
              help="Seconds allowed for a server to start (and for the first request).")
def main(
    batch_sizes: str | None, compile_: str | None, repeats: int | None, num_iters: int | None,
    duration: float | None, concurrency: str, num_workers: str, image_size: int | None, device: str | None,
    model: str, servers: tuple[str, ...], results_dir: Path, resume: bool, timeout_s: float,
) -> None:
    """Run the benchmark over a grid of configurations, a fresh server per run; write tables and plots.

    Exits 1 when any configuration failed (each is recorded with its reason), 2 on bad usage.
    """
    import torch

    cuda = torch.cuda.is_available()
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    device = device or ("cuda:0" if cuda else "cpu")
    # An empty list is a mistake, not a request for the defaults: only an absent option means those.
    batch_list = _ints(batch_sizes if batch_sizes is not None else defaults["batch_sizes"], "--batch-sizes")
    if 0 in batch_list:
        raise click.BadParameter("batch sizes must be positive", param_hint="--batch-sizes")
    compile_ = compile_ or defaults["compile"]
    compiles = {"on": [True], "off": [False], "both": [False, True]}[compile_]
    repeats = repeats or defaults["repeats"]
    image_size = image_size or defaults["image_size"]
    if duration is None and num_iters is None:
        num_iters = defaults["num_iters"]
    elif duration is not None and num_iters is not None:
        raise click.UsageError("give --num-iters or --duration, not both")
    workers = _ints(num_workers, "--num-workers")
    grid = expand_grid(
        batch_list, compiles, _ints(concurrency, "--concurrency"), workers, image_size=image_size, device=device,
        model=model, num_iters=num_iters, duration_s=duration,
    )
    check_grid(grid, servers, timeout_s)
    if servers and len(workers) > 1 or servers and compile_ == "both":
        click.echo("note: server-side axes on --server endpoints are applied with CONTROL reload (re-exec)")
    click.echo(
        f"sweep on {'GPU' if cuda else 'CPU (no CUDA: small defaults)'}: device {device}, model {model}, "
        f"batch sizes {','.join(map(str, batch_list))}, compile {compile_}, repeats {repeats}, image {image_size}, "
        f"{f'{num_iters} iters' if num_iters else f'{duration:g} s'} per run, concurrency {concurrency}, "
        f"workers {num_workers}: {len(grid)} configurations -> {results_dir}/"
    )
    failed = run_grid(grid, repeats, servers, results_dir, resume, timeout_s, device)
    if failed:
        sys.exit(EXIT_SOME_FAILED)


def run_grid(
    grid: list[SweepConfig], repeats: int, servers: tuple[str, ...], results_dir: Path, resume: bool,
    timeout_s: float, device: str,
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
            rec = run_config(cfg, repeats, servers, Path(logs), timeout_s)
            records.append(rec)
            save()
            append_output_table(
                results_dir / f"output_{cfg.batch_size}_{'on' if cfg.compile else 'off'}.md", rec, stamp
            )
            if rec["status"] != "ok":
                bar.write(f"FAILED {cfg.label}: {rec['reason']}", file=sys.stderr)
            bar.update(1)
    save()
    header, rows = summary_table(records)
    text = f"# Sweep {stamp}\n\n{env['device']} on {env['host']} ({env['cpu']}), git {env['git_commit']}\n\n"
    write_atomic(results_dir / "summary.md", text + markdown(header, rows))
    plots = plot(records, results_dir)
    click.echo(markdown(header, rows))
    failed = sum(r["status"] != "ok" for r in records)
    click.echo(
        f"{len(records) - failed} ok, {failed} failed; wrote {results_dir}/summary.md, {json_path.name}, "
        + ", ".join(p.name for p in plots)
    )
    return failed


if __name__ == "__main__":
    main()
