"""GPU validation: ResNet-18 served end to end on one CUDA machine, within a time budget.

    python benchmarks/gpu_validate.py                 # on a GPU box (benchmarks/device/run.sh installs first)
    python benchmarks/gpu_validate.py --dry-run       # the same code and order on CPU, tiny sizes
    python benchmarks/gpu_validate.py --plan          # the plan and its estimated time; runs nothing

The plan (benchmarks/device/plan.py) spends a short machine loan on what matters most first:
the target batch (128), then 32, then 1. In each phase the in-process ceiling
(benchmarks/device/ceiling.py: the server's model code on the device, no server, no
transport) compiles and measures every wire dtype the servers will see, so the servers
reuse its compiled graphs; then the served points (shm float32, tcp float32, tcp uint8);
then, at batch 32 and 1, a `reduce-overhead` (CUDA graphs) ceiling. After the first phase
a KEY line says how the served rates compare with the ceiling at the target batch.

Each step has an estimate; a step that would not fit in what is left of `--budget-s` is
skipped with a row saying so, never started; a step that fails gets its row with the
reason and the next one runs. Every row is printed the moment it completes and written to
`--out-dir` ($OUT when set): results.md, results.jsonl, environment.json, run.log and the
servers' and ceiling's logs.

Target (ResNet-18 at 3x250x250 on one H200): >= 20,000 samples/s end to end over shm float32
or tcp uint8, and >= 0.8 of the in-process ceiling at batch 128. "GPU busy %" is NVML's
utilisation, the share of time at least one kernel was running (not SM occupancy): it is
reported, not targeted.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.device import plan  # noqa: E402
from benchmarks.device.steps import Budget, Run, server_mode  # noqa: E402
from benchmarks.device.table import Output, render_header, verdict  # noqa: E402
from benchmarks.perf_rows import OneLineErrors  # noqa: E402  (torch-free)
from common import __version__  # noqa: E402
from server.config import CUDA_GRAPH_MODES  # noqa: E402

WIRE_DTYPES = ("float32", "uint8")
DRY_RUN = dict(device="cpu", image_size=32, batches="2,1", graph_batches="1", seconds=0.5, workers=1,
               samples_in_flight=4, max_in_flight=2, processes=1, skip_perf=True, ceiling_seconds=0.3,
               budget_s=240.0)



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrors(description="ResNet-18 GPU serving validation, one row per step")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: exercises everything but the GPU")
    parser.add_argument("--plan", action="store_true", help="print the plan with its estimates and exit")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--points", default="shm:float32,tcp:float32,tcp:uint8",
                        help="transport:wire pairs, in order within each batch; transport as infer-client's "
                             "--transport (tcp = the server's own tcp:// endpoint)")
    parser.add_argument("--batches", default="128,32,1", help="phases, in order: the target batch first")
    parser.add_argument("--graph-batches", default="32,1",
                        help="batches that also get a reduce-overhead (CUDA graphs) ceiling; '' for none")
    parser.add_argument("--no-ceiling", action="store_true", help="no in-process ceiling (servers compile cold)")
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
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="measured time per ceiling shape")
    parser.add_argument("--samples-in-flight", type=int, default=1024,
                        help="requests in flight = this / batch, within [2, --max-in-flight]")
    parser.add_argument("--max-in-flight", type=int, default=8,
                        help="cap on requests in flight, so small batches measure latency rather than a deep queue "
                             "(8 = one running and one waiting per worker with 4 workers)")
    parser.add_argument("--processes", type=int, default=2, help="client processes (one Python thread each)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="the whole run, compilation included; steps that would not fit are skipped")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: $OUT when set, else a temp folder")
    parser.add_argument("--skip-perf", action="store_true", help="do not run benchmarks/perf.py afterwards")
    args = parser.parse_args(argv)
    if args.dry_run:
        parser.set_defaults(**DRY_RUN)
        args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 1 if args.compile_mode in CUDA_GRAPH_MODES else 4
    try:
        args.point_list = parse_points(args.points)
        args.batch_list = positive_ints(args.batches, "--batches")
        args.graph_list = positive_ints(args.graph_batches, "--graph-batches")
        if not args.batch_list:
            raise ValueError("--batches is empty")
        for name in ("image_size", "workers", "seconds", "ceiling_seconds", "samples_in_flight", "max_in_flight",
                     "processes", "budget_s"):
            if getattr(args, name) <= (0 if name != "workers" else -1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
    except ValueError as exc:
        parser.error(str(exc))
    if not args.device.startswith("cuda"):  # no autocast or compile on CPU, and the rows say so
        args.precision, args.compile_mode = "fp32", "none"
    return args


def parse_points(points: str) -> list[tuple[str, str]]:
    """'tcp:uint8,shm:float32' -> [(transport, wire)] in that order."""
    out = []
    for item in points.split(","):
        transport, _, wire = item.strip().partition(":")
        if not re.fullmatch(r"[a-z0-9_]+", transport) or wire not in WIRE_DTYPES:
            raise ValueError(f"--points entry {item!r}: want transport:wire with wire one of {', '.join(WIRE_DTYPES)}")
        out.append((transport, wire))
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


def make_plan(args: argparse.Namespace) -> tuple[list[plan.Step], plan.Estimates]:
    steps = plan.default_steps(args.batch_list, args.point_list, args.graph_list, ceiling=not args.no_ceiling,
                               mode=server_mode(args))
    cuda = args.device.startswith("cuda")
    est = plan.Estimates(plan.GPU_DEFAULTS if cuda else plan.CPU_DEFAULTS, ceiling_seconds=args.ceiling_seconds,
                         point_seconds=args.seconds)
    return steps, est


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
    """The GPU's name, driver and settings (common/gpu_env.py: power limit, persistence, MIG, ECC, clocks)."""
    from common.gpu_env import environment

    env = environment(index=index)
    if "error" in env:  # the environment line says why instead of stopping the run
        return {"gpu": f"unknown ({env['error']})", "gpu_environment": env}
    return {"gpu": env.get("name"), "driver": env.get("driver"), "gpu_environment": env}


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
            f"cudnn.benchmark {env['cudnn_benchmark']} (this process's defaults; the servers' are in their INFO)"
            + _gpu_settings(env.get("gpu_environment")))


def _gpu_settings(gpu_env: dict[str, Any] | None) -> str:
    if not gpu_env or "error" in gpu_env:
        return ""
    from common.gpu_env import summary

    return " | " + ", ".join(f"{k.removeprefix('gpu_')} {v}" for k, v in summary(gpu_env).items()
                             if k not in ("gpu_name", "gpu_driver") and v is not None)


def title(args: argparse.Namespace) -> str:
    return (f"ResNet-18 3x{args.image_size}x{args.image_size}, device {args.device}, precision {args.precision}, "
            f"channels-last, compile {args.compile_mode}, {args.workers} workers, {args.seconds:g} s per point, "
            f"{args.processes} client processes, at most {args.max_in_flight} requests in flight; "
            f"'s (est.)': seconds the step took (its estimate)")


def print_plan(args: argparse.Namespace) -> int:
    steps, est = make_plan(args)
    lines, total, key_at = plan.plan_table(steps, est, compiles=args.device.startswith("cuda")
                                           and args.compile_mode != "none")
    print("\n".join(lines))
    key = f"; the key row at ~{key_at:.0f} s" if key_at is not None else ""
    print(f"\nestimated total: {total:.0f} s from run.sh's start{key}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        return print_plan(args)
    # A SIGTERM (e.g. from `timeout`) unwinds like an exception, so servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    budget = Budget(args.budget_s)
    folder = args.out_dir or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    out = Output(folder or Path(tempfile.mkdtemp(prefix="gpu-validate-")))
    steps, est = make_plan(args)
    out.log(f"plan: {len(steps)} steps in {args.budget_s:.0f} s (python benchmarks/gpu_validate.py --plan "
            "shows each with its estimate)")
    out.environment = describe_environment(args.device)
    out.write_environment()
    out.say(environment_line(out.environment))
    out.header = render_header(title(args))
    out.write_table()
    for line in out.header:
        out.say(line)
    run = Run(args, out, budget, est)
    try:
        run.run(steps)
    except BaseException as exc:  # SIGTERM, Ctrl-C or a bug: run.log says so, not only a terminal
        out.log(f"stopped: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    finally:
        run.close()
    footer = ["", "GPU busy %: NVML utilisation, the share of time at least one kernel was running "
              "(not SM occupancy); no target is set on it.", *verdict(args.device, args.image_size, out.rows)]
    out.add_lines(footer)
    out.log(f"results in {out.folder}")
    if not args.skip_perf:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py")], cwd=ROOT, check=False)
    return 0 if not args.device.startswith("cuda") or footer[-1] == "target: met" else 1


if __name__ == "__main__":
    sys.exit(main())
