"""The in-process ceiling: the server's model code on the device, with no server and no transport.

    python benchmarks/device/ceiling.py --device cuda:0 --batches 128,256 --precision bf16 --compile-mode default

Builds ResNet-18 with the server's own `build_model` and `ModelRunner` (channels-last,
autocast, torch.compile: the settings benchmarks/gpu_validate.py gives its servers), puts
one float32 batch on the device, compiles and warms it up, then runs it back to back for
`--seconds` per batch. Prints one line per batch as it completes:

    ceiling {"batch": 128, "samples_s": ..., "iters": ..., "compile_s": ..., ...}

On CUDA the timing uses events created with blocking=True, so the host sleeps in the
driver while it waits instead of spinning a core (CUDA's default when contexts <= CPUs).
Run as its own process so the parent never holds a CUDA context or compiled graphs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from server.models.build import build_model, resolve_device  # noqa: E402
from server.runner import ModelRunner  # noqa: E402

CALIBRATION_ITERS = 3
SETTLED = 0.9  # a block of calls at least 0.9x as long as the one before: warm


class Timer:
    """Seconds of device work between start() and stop(); the host blocks (not spins) on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True, blocking=True)
            self._end = torch.cuda.Event(enable_timing=True, blocking=True)

    def start(self) -> None:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self._t0
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3


def measure(runner: ModelRunner, x: torch.Tensor, seconds: float) -> tuple[int, float]:
    """Back-to-back calls for about `seconds`, after calls that settle; returns (calls, seconds they took).

    The first calls after compilation are slower (allocator growth, kernel selection, lazy
    initialisation): blocks of calls run untimed until one is no faster than the last, for at
    most `seconds`, and the last block's time per call sizes the measured run.
    """
    timer = Timer(x.device)
    settle_until = time.monotonic() + seconds
    previous = float("inf")
    while True:
        timer.start()
        for _ in range(CALIBRATION_ITERS):
            runner(x)
        block = timer.stop()
        if block >= SETTLED * previous or time.monotonic() > settle_until:
            break
        previous = block
    iters = max(5, int(seconds * CALIBRATION_ITERS / max(block, 1e-6)))
    timer.start()
    for _ in range(iters):
        runner(x)
    return iters, timer.stop()


def backend_flags() -> dict[str, object]:
    """The TF32 and cuDNN settings this process runs with."""
    return {
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="model-only throughput of the served ResNet-18, no server")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--image-size", type=int, default=250)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "none"])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per batch size")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    model, _ = build_model("resnet18", device, None)
    runner = ModelRunner(model, device, compile=args.compile_mode != "none",
                         compile_mode="default" if args.compile_mode == "none" else args.compile_mode,
                         precision=args.precision, channels_last=True)
    flags = backend_flags()
    for batch in (int(b) for b in args.batches.split(",")):
        with torch.inference_mode():  # as the server's prediction threads run
            x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
            compile_s = runner.warm_up([batch], args.image_size, torch.float32)
            iters, elapsed = measure(runner, x, args.seconds)
        row = {"batch": batch, "samples_s": iters * batch / elapsed, "iters": iters, "seconds": elapsed,
               "compile_s": compile_s, "device": str(device), "precision": args.precision,
               "compile_mode": args.compile_mode, **flags}
        print("ceiling " + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
