"""Which CPU thread split serves fastest: prediction workers x intra-op threads, side by side.

    python benchmarks/cpu_defaults.py                       # ResNet-18, batch 8, 64 and 128 px
    python benchmarks/cpu_defaults.py --images 64 --trials 5 --seconds 4

Starts one ResNet-18 server (CPU, random init, no compile) per split, then measures
each split in both regimes, interleaved (split A, B, C, A, B, C, ... per trial, so a
noisy shared machine slows every split alike):

- closed loop, concurrency 1: one request in flight, the latency a single caller sees;
- flood, concurrency 8: requests always queued, the throughput the server can give.

The splits (C = the cores torch sees):

- `2 x C (old default)`: 2 workers, each with torch's default C intra-op threads and
  libgomp's default spinning, as infer-server ran before the thread budget: 2C
  threads on C cores;
- `1 x C (default)`: 1 worker with every core, whose OpenMP threads sleep between
  parallel regions (the server sets OMP_WAIT_POLICY=PASSIVE unless told otherwise);
- `1 x C spinning`: the same with libgomp's default wait (GOMP_SPINCOUNT=300000: a
  team's threads spin for milliseconds after each region when they fit the cores);
- `2 x C/2`: 2 workers sharing the budget (`--num-workers 2`, --threads unset);
- `inline x C`: no worker thread, the I/O thread runs the model (`--num-workers 0`).

Prints a markdown table: each split's median samples/s and p50 latency per regime
and image size, and its throughput relative to the default (median of per-trial
ratios, with their range). Every figure comes from the server's own INFO-checked
split (`thread_split`), so a table cannot claim a split the server did not run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from client.config import ClientConfig  # noqa: E402
from client.runner import run as run_client  # noqa: E402
from server.launch import ServerProcess, launch_server  # noqa: E402

BATCH = 8
REGIMES = (("closed c1", 1), ("flood c8", 8))


def splits(cores: int) -> list[tuple[str, list[str], tuple[int, int], dict[str, str]]]:
    """(label, server arguments, expected (workers, threads each), environment) for each split."""
    spin = {"GOMP_SPINCOUNT": "300000"}  # libgomp's default, given explicitly: the server then leaves it
    return [
        (f"2 x {cores} (old default)", ["--num-workers", "2", "--threads", str(2 * cores)], (2, cores), spin),
        (f"1 x {cores} (default)", [], (1, cores), {}),
        (f"1 x {cores} spinning", [], (1, cores), spin),
        (f"2 x {max(1, cores // 2)}", ["--num-workers", "2"], (2, max(1, cores // 2)), {}),
        (f"inline x {cores}", ["--num-workers", "0"], (0, cores), {}),
    ]


def measure(endpoint: str, image: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """(samples/s, p50 latency in ms) of one run against `endpoint`; every request answered."""
    config = ClientConfig(servers=(endpoint,), batch_size=BATCH, image_size=image, duration_s=seconds,
                          warmup=2, concurrency=concurrency, gpu_source="off")
    result = run_client(config)
    if result.failed_total or result.lost:
        raise RuntimeError(f"{endpoint}: {result.failed} failed, {result.lost} lost")
    return result.throughput, result.latency.percentile_s(50) * 1e3


def start(args: list[str], expected: tuple[int, int], env: dict[str, str], tmp: Path) -> ServerProcess:
    server = launch_server(["--device", "cpu", "--model", "resnet18", "--no-compile", *args],
                           tmp / "server.err", timeout=120, env=env)
    probe = run_client(ClientConfig(servers=(server.endpoint,), batch_size=1, image_size=32, num_iters=1,
                                    warmup=0, gpu_source="off"))
    split = probe.servers[0]["thread_split"]
    if (split["workers"], split["threads_each"]) != expected or split["gomp_spincount"] != env.get("GOMP_SPINCOUNT"):
        raise RuntimeError(f"server {args} runs {split}, expected workers x threads {expected}")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="64,128", help="image sides, comma-separated")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    args = parser.parse_args(argv)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # each split's server gets only its own setting
        os.environ.pop(name, None)
    cores = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="cpu-defaults-"))
    plan = splits(cores)
    servers = [start(server_args, expected, env, tmp) for _, server_args, expected, env in plan]
    samples: dict[tuple, list[tuple[float, float]]] = {}
    try:
        for image in (int(s) for s in args.images.split(",")):
            for regime, concurrency in REGIMES:
                for _ in range(args.trials):
                    for (label, *_), server in zip(plan, servers):
                        key = (image, regime, label)
                        samples.setdefault(key, []).append(measure(server.endpoint, image, concurrency, args.seconds))
    finally:
        for server in servers:
            server.terminate()
    print(render(samples, plan, cores, args))
    return 0


def render(samples: dict[tuple, list[tuple[float, float]]], plan: list, cores: int, args: argparse.Namespace) -> str:
    default = plan[1][0]
    lines = [f"ResNet-18 on CPU ({cores} cores), batch {BATCH}, no compile, {args.trials} interleaved trials "
             f"of {args.seconds:g} s; workers x intra-op threads each",
             "", "| image | regime | split | samples/s | p50 ms | vs default |", "|---|---|---|---|---|---|"]
    for (image, regime, label), runs in samples.items():
        base = samples[(image, regime, default)]
        ratios = [a[0] / b[0] for a, b in zip(runs, base)]
        lines.append(f"| {image} | {regime} | {label} | {statistics.median(r[0] for r in runs):.1f} | "
                     f"{statistics.median(r[1] for r in runs):.1f} | {statistics.median(ratios):.2f} "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
