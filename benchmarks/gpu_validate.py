"""GPU validation: one command, a few minutes, on one CUDA machine.

    python benchmarks/gpu_validate.py                 # on an H100/H200
    python benchmarks/gpu_validate.py --device cpu --image-size 32 --batches 1,4 --seconds 2 --skip-perf
                                                      # dry run of everything but the GPU

Starts one infer-server per wire dtype with the GPU options (channels-last,
bf16 autocast, torch.compile warmed up for every batch shape, several workers),
drives it with infer-client at each batch size with enough requests in flight
to keep the GPU busy, and prints one markdown table: throughput, latency p50,
GPU utilization (NVML, sampled by the client's monitor over the measured phase)
and the server's breakdown (queue / H2D / compute / D2H). Then runs
benchmarks/perf.py. Target (issue 7): ResNet-18, 3x250x250, loopback,
>= 10,000 samples/s end to end with GPU utilization > 90% on one H100/H200.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.config import ClientConfig  # noqa: E402
from client.metrics import BREAKDOWN, LatencyStats  # noqa: E402
from client.runner import run as run_client  # noqa: E402
from server.launch import launch_server  # noqa: E402

TARGET_SAMPLES_S = 10_000
START_TIMEOUT_S = 900.0
TARGET_GPU_UTIL = 90.0


def main() -> int:
    parser = argparse.ArgumentParser(description="ResNet-18 GPU serving sweep (issue 7 validation)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--wires", default="float32,uint8")
    parser.add_argument("--image-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    # 'default' compiles in ~30 s per shape and keeps the script within a few
    # minutes; max-autotune tunes for minutes per shape.
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "none"])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured phase per point")
    parser.add_argument("--samples-in-flight", type=int, default=1024,
                        help="concurrency = max(2, this / batch): enough queued work to hide transport")
    parser.add_argument("--processes", type=int, default=2, help="client processes (one Python thread each)")
    parser.add_argument("--skip-perf", action="store_true", help="do not run benchmarks/perf.py afterwards")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    cuda = args.device.startswith("cuda")
    if not cuda:  # a dry run: no autocast or compile on CPU, and the table should say so
        args.precision, args.compile_mode = "fp32", "none"
    tmp = Path(tempfile.mkdtemp(prefix="gpu-validate-"))
    rows = []
    for wire in args.wires.split(","):
        server_args = [
            "--device", args.device, "--model", "resnet18", "--num-workers", str(args.workers),
            "--precision", args.precision if cuda else "fp32", "--channels-last",
            "--warmup-batch-sizes", ",".join(map(str, batches)),
            "--warmup-image-size", str(args.image_size), "--warmup-dtype", wire,
            "--max-inflight", "4096",
        ]
        server_args += ["--no-compile"] if args.compile_mode == "none" or not cuda else [
            "--compile", "--compile-mode", args.compile_mode]
        t0 = time.monotonic()
        # Compiling and warming up every batch shape before ready can take minutes.
        server = launch_server(server_args, tmp / f"server-{wire}.err", START_TIMEOUT_S, cwd=ROOT)
        print(f"server ({wire} warm-up) ready in {time.monotonic() - t0:.0f} s", flush=True)
        try:
            for b in batches:
                concurrency = max(2, args.samples_in_flight // b)
                config = ClientConfig(
                    servers=(server.endpoint,), batch_size=b, image_size=args.image_size, wire_dtype=wire,
                    num_iters=None, duration_s=args.seconds, warmup=3, concurrency=concurrency,
                    processes=args.processes if concurrency >= args.processes else 1,
                    gpu_source="auto" if cuda else "off",
                )
                result = run_client(config)
                s = result.summary()
                gpu = result.gpu or {}
                rows.append((wire, b, concurrency, result.throughput, s.get("p50_latency"),
                             gpu.get("util_mean"), _breakdown(result.breakdown), result.complete))
                print(f"  {wire} batch {b}: {result.throughput:,.0f} samples/s", flush=True)
        finally:
            server.terminate()
    print(render(rows, args))
    best = max((r for r in rows if r[1] >= 128), key=lambda r: r[3], default=None)
    ok = cuda and best is not None and best[3] >= TARGET_SAMPLES_S and (best[5] or 0) > TARGET_GPU_UTIL
    print(f"target >= {TARGET_SAMPLES_S:,} samples/s with GPU util > {TARGET_GPU_UTIL:.0f}%: "
          f"{'met' if ok else 'NOT met' if cuda else 'not applicable (no CUDA device)'}")
    if not args.skip_perf:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py")], cwd=ROOT, check=False)
    return 0 if ok or not cuda else 1


def _breakdown(breakdown: dict[str, LatencyStats]) -> str:
    """p50 of each server stage, in ms, as the server reported them per request."""
    parts = []
    for stage in BREAKDOWN:
        p50_s = breakdown[stage].percentile_s(50)
        if p50_s is not None:
            parts.append(f"{stage} {p50_s * 1e3:.2f}")
    return ", ".join(parts)


def render(rows, args) -> str:
    lines = [
        f"ResNet-18 3x{args.image_size}², device {args.device}, precision {args.precision}, channels-last, "
        f"compile {args.compile_mode}, {args.workers} workers, {args.seconds:g} s per point",
        "",
        "| wire | batch | in flight | samples/s | p50 ms | GPU util % | server p50 ms by stage | complete |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for wire, b, conc, thr, p50, util, bd, complete in rows:
        p50_ms = f"{p50 * 1e3:.2f}" if p50 is not None else "-"
        util_s = f"{util:.0f}" if util is not None else "-"
        lines.append(f"| {wire} | {b} | {conc} | {thr:,.0f} | {p50_ms} | {util_s} | {bd} | {complete} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
