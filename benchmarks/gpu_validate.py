"""GPU validation: ResNet-18 served end to end on one CUDA machine, within a time budget.

    python benchmarks/gpu_validate.py                 # on a GPU box (benchmarks/device/run.sh installs first)
    python benchmarks/gpu_validate.py --dry-run       # the same code on CPU with tiny sizes

Steps, each bounded by what is left of `--budget-s`:
1. the environment: Python, torch, CUDA, cuDNN, GPU, driver, TF32 and cudnn.benchmark flags;
2. the in-process ceiling (benchmarks/device/ceiling.py in its own process): the same model
   code, compile mode and precision on the device with no server, at `--ceiling-batches`;
3. the points: one infer-server per wire dtype (channels-last, autocast, torch.compile warmed
   up for every batch shape, a worker pool), driven by infer-client at each batch with enough
   requests in flight to keep the GPU busy, for each `--points` entry (transport:wire).
   Target combinations come first so a short budget still measures them.

Each point runs in its own try/except and its row is printed the moment it completes (a
failed or skipped point prints a row that says why); when the budget is nearly spent the
remaining points are skipped, not started. Every row also lands in `--out-dir` ($OUT when
set): results.md, results.jsonl, environment.json and the servers' and ceiling's logs.

Target (ResNet-18 at 3x250x250 on one H200): >= 20,000 samples/s end to end over shm float32
or tcp uint8, and >= 0.8 of the in-process ceiling at batch 128. "GPU busy %" is NVML's
utilisation, the share of time at least one kernel was running (not SM occupancy): it is
reported, not targeted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.config import ClientConfig  # noqa: E402
from client.results import RunResult  # noqa: E402
from common import __version__  # noqa: E402
from common.protocol import BREAKDOWN  # noqa: E402
from server.config import CUDA_GRAPH_MODES  # noqa: E402
from server.launch import ServerProcess, launch_server  # noqa: E402

TARGET_SAMPLES_S = 20_000
TARGET_CEILING_FRACTION = 0.8
TARGET_BATCH = 128
TARGET_POINTS = (("shm", "float32"), ("tcp", "uint8"))
TARGET_IMAGE_SIZE = 250
WIRE_DTYPES = ("float32", "uint8", "float16", "bfloat16")
# Seconds a point costs beyond its measured phase: client processes, handshake, warm-up requests.
POINT_OVERHEAD_S = 12.0
SERVER_START_CAP_S = 300.0  # compiling 4 shapes; caches from the ceiling's run make it shorter
SERVER_START_MIN_S = 20.0  # less than this for a start (imports, model, warm-up) is not worth trying
CEILING_CAP_S = 200.0
CLIENT_TIMEOUT_S = 20.0  # a reply this late means the server is stuck: fail the point, keep the budget
NOTE_CHARS = 200
STAGES = (*BREAKDOWN, "transport")
DRY_RUN = dict(device="cpu", image_size=32, batches="1,2", ceiling_batches="2", seconds=0.5, workers=1,
               samples_in_flight=2, processes=1, skip_perf=True, ceiling_seconds=0.3, budget_s=240.0)
COLUMNS = ("transport", "wire", "batch", "in flight", "samples/s", "of ceiling", "p50 ms", "GPU busy %",
           "failed", "lost", "server mean ms by stage (+ transport)", "note")


@dataclasses.dataclass(frozen=True)
class Point:
    transport: str
    wire: str
    batch: int


class Budget:
    """Seconds left of the run's budget, from the moment it was made."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Output:
    """Everything the run writes: rewritten after every row, so a killed run keeps what it measured."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.header: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.environment: dict[str, Any] = {}
        self.ceiling: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.folder / name

    def write_environment(self) -> None:
        """environment.json: versions, flags, GPU, and the ceiling's rows once measured."""
        data = {**self.environment, "ceiling": self.ceiling}
        self.path("environment.json").write_text(json.dumps(data, indent=2, default=str) + "\n")

    def add_row(self, row: dict[str, Any]) -> None:
        line = render_row(row)
        print(line, flush=True)
        self.rows.append(row)
        self.lines.append(line)
        with open(self.path("results.jsonl"), "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        self.write_table()

    def write_table(self, footer: list[str] | None = None) -> None:
        text = "\n".join([*self.header, *self.lines, *(footer or [])]) + "\n"
        self.path("results.md").write_text(text)


class OneLineErrors(argparse.ArgumentParser):
    """Bad usage: one line and exit status 2, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrors(description="ResNet-18 GPU serving validation, one row per point")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: exercises everything but the GPU")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--points", default="tcp:uint8,shm:float32,tcp:float32",
                        help="transport:wire pairs, in order; transport as infer-client's --transport "
                             "(tcp = the server's own tcp:// endpoint)")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--ceiling-batches", default="128,256", help="'' skips the in-process ceiling")
    parser.add_argument("--image-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=None,
                        help="default: 4, or 1 with a CUDA-graph --compile-mode (the server refuses more: graphs are "
                             "per thread)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    # 'default' compiles in tens of seconds per shape; max-autotune tunes for minutes per shape.
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "none"])
    parser.add_argument("--cudnn-benchmark", action="store_true", help="pass --cudnn-benchmark to servers and ceiling")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured phase per point")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="measured time per ceiling batch")
    parser.add_argument("--samples-in-flight", type=int, default=1024,
                        help="concurrency = max(2, this / batch): enough queued work to hide transport")
    parser.add_argument("--processes", type=int, default=2, help="client processes (one Python thread each)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="whole run, compilation included; points that would not fit are skipped")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT when set, else a temp folder")
    parser.add_argument("--skip-perf", action="store_true", help="do not run benchmarks/perf.py afterwards")
    args = parser.parse_args(argv)
    if args.dry_run:
        parser.set_defaults(**DRY_RUN)
        args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.compile_mode in CUDA_GRAPH_MODES else 4
    try:
        args.point_list = parse_points(args.points, args.batches)
        args.ceiling_list = positive_ints(args.ceiling_batches, "--ceiling-batches")
        for name in ("image_size", "workers", "seconds", "ceiling_seconds", "samples_in_flight", "processes",
                     "budget_s"):
            if getattr(args, name) <= (0 if name != "workers" else -1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
    except ValueError as exc:
        parser.error(str(exc))
    if not args.device.startswith("cuda"):  # no autocast or compile on CPU, and the rows say so
        args.precision, args.compile_mode = "fp32", "none"
    return args


def parse_points(points: str, batches: str) -> list[Point]:
    """'tcp:uint8,shm:float32' x '1,32' -> points in that order, batch varying fastest."""
    sizes = positive_ints(batches, "--batches")
    if not sizes:
        raise ValueError("--batches is empty")
    out = []
    for item in points.split(","):
        transport, _, wire = item.strip().partition(":")
        if not re.fullmatch(r"[a-z0-9_]+", transport) or wire not in WIRE_DTYPES:
            raise ValueError(f"--points entry {item!r}: want transport:wire with wire one of {', '.join(WIRE_DTYPES)}")
        out.extend(Point(transport, wire, b) for b in sizes)
    return out


def positive_ints(text: str, flag: str) -> list[int]:
    """'1, 32,128' -> [1, 32, 128]; '' -> []."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} wants comma-separated integers, not {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"{flag} wants positive integers, not {text!r}")
    return values


def describe_environment(device: str) -> dict[str, Any]:
    """Versions and backend flags of this process, and the GPU as NVML sees it (no CUDA context made)."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _quiet(torch.backends.cudnn.version),
        "cpus": os.cpu_count(),
        "device": device,
        "cuda_devices": _quiet(torch.cuda.device_count),
        "tf32_conv": _quiet(lambda: torch.backends.cudnn.allow_tf32),
        "tf32_matmul": _quiet(lambda: torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": _quiet(torch.get_float32_matmul_precision),
        "cudnn_benchmark": _quiet(lambda: torch.backends.cudnn.benchmark),
        "gpu": None,
        "driver": None,
    }
    env.update(_host_facts())
    if device.startswith("cuda"):
        env.update(_nvml_gpu(int(device.partition(":")[2] or 0)))
    return env


def _host_facts() -> dict[str, Any]:
    """CPU model, pyzmq/libzmq versions and the checkout's commit, from the project's host module."""
    try:
        from common import host

        return {"host": host.hostname(), "cpu": host.cpu_model(), "commit": host.git_commit(ROOT),
                **{k: v for k, v in host.versions().items() if k in ("pyzmq", "libzmq")}}
    except Exception as exc:  # noqa: BLE001 - facts for the record, never a reason to stop
        return {"host_facts": f"unknown ({type(exc).__name__}: {exc})"}


def _nvml_gpu(index: int) -> dict[str, Any]:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return {"gpu": _text(pynvml.nvmlDeviceGetName(handle)),
                    "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                    "gpu_memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(handle).total}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - the environment line says why instead of stopping the run
        return {"gpu": f"unknown ({type(exc).__name__}: {exc})"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _quiet(get: Any) -> Any:
    try:
        return get()
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__})"


def environment_line(env: dict[str, Any]) -> str:
    return (f"environment: python {env['python']} | torch {env['torch']} | pyzmq {env.get('pyzmq')} "
            f"(libzmq {env.get('libzmq')}) | CUDA {env['cuda']} | "
            f"cuDNN {env['cudnn']} | GPU {env['gpu']} (driver {env['driver']}) | "
            f"TF32 conv {env['tf32_conv']}, matmul {env['tf32_matmul']} "
            f"(float32 matmul precision {env['float32_matmul_precision']}) | "
            f"cudnn.benchmark {env['cudnn_benchmark']} (this process's defaults; the servers' are in their INFO)")


def measure_ceiling(args: argparse.Namespace, budget: Budget, out: Output) -> dict[int, float]:
    """samples/s of the model alone per batch, from benchmarks/device/ceiling.py; {} when it fails."""
    if not args.ceiling_list:
        return {}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device" / "ceiling.py"), "--device", args.device,
           "--batches", ",".join(map(str, args.ceiling_list)), "--image-size", str(args.image_size),
           "--precision", args.precision, "--compile-mode", args.compile_mode,
           "--seconds", str(args.ceiling_seconds), *(["--cudnn-benchmark"] if args.cudnn_benchmark else [])]
    if not args.device.startswith("cuda"):
        # A dry run on shared cores: a team of OpenMP threads waits on whichever core is taken.
        cmd += ["--threads", "1"]
    timeout = max(1.0, min(CEILING_CAP_S, budget.left() / 3))
    stdout, problem = "", None
    with open(out.path("ceiling.err"), "w") as err:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout)
            stdout = proc.stdout
            problem = None if proc.returncode == 0 else f"exited with {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            problem = f"stopped after {timeout:.0f} s"
    ceilings, rows = {}, {}
    for line in stdout.splitlines():
        if not line.startswith("ceiling "):
            continue
        try:
            row = json.loads(line.removeprefix("ceiling "))
            ceilings[int(row["batch"])], rows[str(row["batch"])] = float(row["samples_s"]), row
        except (ValueError, KeyError, TypeError):
            problem = f"printed a line it should not have: {line[:NOTE_CHARS]}"
            continue
        log(f"in-process ceiling, batch {row['batch']}: {row['samples_s']:,.0f} samples/s "
            f"({row.get('iters')} calls; compile and warm-up {row.get('compile_s', 0):.1f} s)")
    out.ceiling = rows
    if problem:
        log(f"in-process ceiling {problem}: {_last_line(out.path('ceiling.err'))}")
    return ceilings


def server_args(args: argparse.Namespace, wire: str) -> list[str]:
    cuda = args.device.startswith("cuda")
    cmd = ["--device", args.device, "--model", "resnet18", "--num-workers", str(args.workers),
           "--precision", args.precision, "--channels-last",
           "--warmup-batch-sizes", ",".join(sorted({str(p.batch) for p in args.point_list}, key=int)),
           "--warmup-image-size", str(args.image_size), "--warmup-dtype", wire, "--max-inflight", "4096"]
    cmd += ["--no-compile"] if args.compile_mode == "none" or not cuda else [
        "--compile", "--compile-mode", args.compile_mode]
    return cmd + (["--cudnn-benchmark"] if args.cudnn_benchmark else [])


def client_config(args: argparse.Namespace, point: Point, endpoint: str, budget: Budget) -> ClientConfig:
    concurrency = max(2, args.samples_in_flight // point.batch)
    extra: dict[str, Any] = {}
    has_transport = "transport" in {f.name for f in dataclasses.fields(ClientConfig)}
    if point.transport != "tcp" or has_transport:
        if not has_transport:
            raise RuntimeError(f"this infer-client has no --transport option, so no {point.transport!r} transport")
        extra["transport"] = "zmq" if point.transport == "tcp" else point.transport
    return ClientConfig(
        servers=(endpoint,), batch_size=point.batch, image_size=args.image_size, wire_dtype=point.wire,
        num_iters=None, duration_s=args.seconds, warmup=3, concurrency=concurrency,
        processes=args.processes if concurrency >= args.processes else 1,
        gpu_source="auto" if args.device.startswith("cuda") else "off",
        timeout_s=CLIENT_TIMEOUT_S, warmup_timeout_s=max(10.0, min(60.0, budget.left())), **extra,
    )


def measured_row(point: Point, config: ClientConfig, result: RunResult, ceilings: dict[int, float]) -> dict:
    ceiling = ceilings.get(point.batch)
    summary = result.summary()
    return {
        **_point_fields(point, config.concurrency),
        "samples_s": result.throughput,
        "ceiling_samples_s": ceiling,
        "of_ceiling": result.throughput / ceiling if ceiling else None,
        "p50_ms": _ms(summary.get("p50_latency")),
        "p99_ms": _ms(summary.get("p99_latency")),
        "gpu_busy_pct": (result.gpu or {}).get("util_mean"),
        "failed": result.failed_total,
        "lost": result.lost,
        "complete": result.complete,
        "server_mean_ms": {s: _ms(result.breakdown[s].mean_s) for s in STAGES if s in result.breakdown},
        "server": (result.servers or [{}])[0],
        "note": "" if result.complete and not result.failed_total else _failures(result),
    }


def failed_row(point: Point, concurrency: int | None, note: str) -> dict:
    return {**_point_fields(point, concurrency), "samples_s": None, "note": " ".join(note.split())[:NOTE_CHARS]}


def _point_fields(point: Point, concurrency: int | None) -> dict:
    return {"transport": point.transport, "wire": point.wire, "batch": point.batch, "in_flight": concurrency}


def _failures(result: RunResult) -> str:
    parts = [f"{n} {kind}" for kind, n in sorted(result.failed.items()) if n]
    return "failed: " + ", ".join(parts) if parts else "incomplete: a server was lost"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def render_header(args: argparse.Namespace) -> list[str]:
    return [
        f"ResNet-18 3x{args.image_size}x{args.image_size}, device {args.device}, precision {args.precision}, "
        f"channels-last, compile {args.compile_mode}, {args.workers} workers, {args.seconds:g} s per point, "
        f"{args.processes} client processes",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]


def render_row(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    stages = row.get("server_mean_ms") or {}
    breakdown = ", ".join(f"{s} {v:.2f}" for s, v in stages.items() if v is not None) or "-"
    cells = [row["transport"], row["wire"], str(row["batch"]), num("in_flight", "d"), num("samples_s", ",.0f"),
             num("of_ceiling", ".2f"), num("p50_ms", ".2f"), num("gpu_busy_pct", ".0f"), num("failed", "d"),
             num("lost", "d"), breakdown, row.get("note") or ""]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def verdict(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[str]:
    """The target, restated, and whether each target combination met it."""
    lines = [f"target (ResNet-18 3x{TARGET_IMAGE_SIZE}x{TARGET_IMAGE_SIZE}, one H200): >= {TARGET_SAMPLES_S:,} "
             f"samples/s end to end over shm float32 or tcp uint8, and >= {TARGET_CEILING_FRACTION} of the "
             f"in-process ceiling at batch {TARGET_BATCH}"]
    if not args.device.startswith("cuda") or args.image_size != TARGET_IMAGE_SIZE:
        return [*lines, "target: not applicable (no CUDA device)" if not args.device.startswith("cuda")
                else f"target: not applicable (image size {args.image_size})"]
    met_any = False
    for transport, wire in TARGET_POINTS:
        done = [r for r in rows if (r["transport"], r["wire"]) == (transport, wire) and r["samples_s"]]
        best = max(done, key=lambda r: r["samples_s"], default=None)
        at_target = next((r for r in done if r["batch"] == TARGET_BATCH), None)
        fraction = at_target.get("of_ceiling") if at_target else None
        met = bool(best and best["samples_s"] >= TARGET_SAMPLES_S and fraction and fraction >= TARGET_CEILING_FRACTION)
        met_any |= met
        best_s = f"best {best['samples_s']:,.0f} samples/s at batch {best['batch']}" if best else "no point completed"
        frac_s = f"{fraction:.2f}" if fraction is not None else "unknown"
        lines.append(f"  {transport} {wire}: {best_s}; batch {TARGET_BATCH} at {frac_s} of the ceiling: "
                     f"{'met' if met else 'NOT met'}")
    return [*lines, f"target: {'met' if met_any else 'NOT met'}"]


def log(message: str) -> None:
    """Progress, on stderr, so stdout holds the environment, the table and the verdict only."""
    print(message, file=sys.stderr, flush=True)


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "(no output)"


def server_start_timeout(args: argparse.Namespace, budget: Budget) -> float:
    """How long a server may take to start: what is left once one point is set aside, capped."""
    return min(SERVER_START_CAP_S, budget.left() - args.seconds - POINT_OVERHEAD_S)


@contextmanager
def serving(args: argparse.Namespace, wire: str, budget: Budget, out: Output) -> Iterator[ServerProcess]:
    """One server for `wire`, stopped (SIGTERM, then SIGKILL) however the block ends."""
    err = out.path(f"server-{wire}.err")
    t0 = time.monotonic()
    server = launch_server(server_args(args, wire), err, server_start_timeout(args, budget), cwd=ROOT)
    log(f"server ({wire}: compile and warm-up of every batch) ready in {time.monotonic() - t0:.0f} s")
    try:
        yield server
    finally:
        server.terminate()


def run_wire(args: argparse.Namespace, wire: str, points: list[Point], ceilings: dict[int, float], budget: Budget,
             out: Output) -> None:
    """Every point of one wire dtype against one server; each point's failure is its own row."""
    if server_start_timeout(args, budget) < SERVER_START_MIN_S:
        for p in points:
            out.add_row(failed_row(p, None, f"skipped: time budget spent ({budget.left():.0f} s left, "
                                            f"not enough to start a server and run a point)"))
        return
    try:
        with serving(args, wire, budget, out) as server:
            for point in points:
                out.add_row(run_point(args, point, server, ceilings, budget))
    except Exception as exc:  # noqa: BLE001 - the server did not start: say so on each point left
        done = {(r["transport"], r["wire"], r["batch"]) for r in out.rows}
        for p in points:
            if (p.transport, p.wire, p.batch) not in done:
                out.add_row(failed_row(p, None, f"{type(exc).__name__}: {exc}"))


def run_point(
    args: argparse.Namespace, point: Point, server: ServerProcess, ceilings: dict[int, float], budget: Budget
) -> dict:
    """One point's row: measured, or failed or skipped with the reason; never raises for the point itself."""
    if budget.left() < args.seconds + POINT_OVERHEAD_S:
        return failed_row(point, None, f"skipped: time budget spent ({budget.left():.0f} s left)")
    if server.proc.poll() is not None:
        return failed_row(point, None, f"server exited with {server.proc.returncode}: {_last_line(server.stderr_path)}")
    config = None
    try:
        config = client_config(args, point, server.endpoint, budget)
        from client.runner import run as run_client  # torch comes with it: not needed for --help

        return measured_row(point, config, run_client(config), ceilings)
    except Exception as exc:  # noqa: BLE001 - one point's failure is its row's note, never the run's end
        return failed_row(point, config.concurrency if config else None, f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds like an exception, so servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    budget = Budget(args.budget_s)
    folder = args.out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    out = Output(folder or Path(tempfile.mkdtemp(prefix="gpu-validate-")))
    out.environment = describe_environment(args.device)
    out.write_environment()
    print(environment_line(out.environment), flush=True)
    ceilings = measure_ceiling(args, budget, out)
    out.write_environment()
    out.header = render_header(args)
    print("\n".join(out.header), flush=True)
    out.write_table()
    wires = list(dict.fromkeys(p.wire for p in args.point_list))
    for wire in wires:
        run_wire(args, wire, [p for p in args.point_list if p.wire == wire], ceilings, budget, out)
    footer = ["", "GPU busy %: NVML utilisation, the share of time at least one kernel was running "
              "(not SM occupancy); no target is set on it.", *verdict(args, out.rows)]
    print("\n".join(footer), flush=True)
    out.write_table(footer)
    log(f"results in {out.folder}")
    if not args.skip_perf:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py")], cwd=ROOT, check=False)
    return 0 if not args.device.startswith("cuda") or footer[-1] == "target: met" else 1


if __name__ == "__main__":
    sys.exit(main())
