"""The in-process ceiling: the server's model code on the device, with no server and no transport.

    python benchmarks/device/ceiling.py --device cuda:0 --shapes float32:128,uint8:128 --precision bf16
    python benchmarks/device/ceiling.py --serve ...      # one request per stdin line (gpu_validate.py)

Builds ResNet-18 with the server's own `build_model` and `ModelRunner` (channels-last,
autocast, torch.compile: the settings benchmarks/gpu_validate.py gives its servers), puts
one batch of the wire dtype on the device (uint8 is normalised inside the compiled graph,
as the server does), compiles and warms it up, then runs it back to back for `--seconds`.
Because the graph is the server's own, compiled with the same settings, a server started
afterwards finds it in inductor's on-disk caches instead of compiling it again.

Prints one line per shape as it completes (an `error` key instead when that shape failed):

    ceiling {"batch": 128, "wire": "float32", "mode": "default", "samples_s": ..., "compile_s": ..., ...}

With `--serve`, each stdin line `{"wire": "uint8", "batch": 32, "mode": "reduce-overhead"}`
gets one such line, so one process (one CUDA context, one set of compile workers) serves
the whole run. Dynamo's caches are reset when the batch changes: earlier batches are not
asked again, and the per-function limit on compiled variants is never reached.

On CUDA the timing uses events created with blocking=True, so the host sleeps in the
driver while it waits instead of spinning a core (CUDA's default when contexts <= CPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch._dynamo  # noqa: E402

from server.models.build import build_model, resolve_device  # noqa: E402
from server.runner import ModelRunner  # noqa: E402

CALIBRATION_ITERS = 3
SETTLED = 0.9  # a block of calls at least 0.9x as long as the one before: warm
DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def measure(runner: ModelRunner, x: torch.Tensor, seconds: float) -> tuple[int, float, float]:
    """Back-to-back calls for about `seconds`, after calls that settle; returns (calls, seconds they took,
    seconds spent settling).

    The first calls after compilation are slower (allocator growth, kernel selection, lazy
    initialisation): blocks of calls run untimed until one is no faster than the last, for at
    most `seconds`, and the last block's time per call sizes the measured run.
    """
    timer = Timer(x.device)
    t0 = time.monotonic()
    settle_until = t0 + seconds
    previous = float("inf")
    while True:
        timer.start()
        for _ in range(CALIBRATION_ITERS):
            runner(x)
        block = timer.stop()
        if block >= SETTLED * previous or time.monotonic() > settle_until:
            break
        previous = block
    settle_s = time.monotonic() - t0
    iters = max(5, int(seconds * CALIBRATION_ITERS / max(block, 1e-6)))
    timer.start()
    for _ in range(iters):
        runner(x)
    return iters, timer.stop(), settle_s


def backend_flags() -> dict[str, object]:
    """The TF32 and cuDNN settings this process runs with."""
    return {
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def example(wire: str, batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    """One batch as the server holds it on the device: random pixels for uint8, random floats otherwise."""
    shape = (batch, 3, image_size, image_size)
    if wire == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    return torch.randn(shape, device=device).to(DTYPES[wire])


class Ceiling:
    """One model, one runner per compile mode, measured shape by shape."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = resolve_device(args.device)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        self.model, _ = build_model("resnet18", self.device, None)
        self.runners: dict[str, ModelRunner] = {}
        self.batch: int | None = None
        self.flags = backend_flags()

    def runner(self, mode: str) -> ModelRunner:
        if mode not in self.runners:
            self.runners[mode] = ModelRunner(self.model, self.device, compile=mode != "none",
                                             compile_mode="default" if mode == "none" else mode,
                                             precision=self.args.precision, channels_last=True)
        return self.runners[mode]

    def shape(self, wire: str, batch: int, mode: str) -> dict[str, Any]:
        """One shape's row: compiled, warmed up and measured."""
        if wire not in DTYPES:
            raise ValueError(f"wire dtype {wire!r} is not one of {', '.join(DTYPES)}")
        if self.batch is not None and batch != self.batch:
            torch._dynamo.reset()  # earlier batches are done: keep Dynamo's per-function variants few
        self.batch = batch
        runner = self.runner(mode)
        with torch.inference_mode():  # as the server's prediction threads run
            x = example(wire, batch, self.args.image_size, self.device)
            compile_s = runner.warm_up([batch], self.args.image_size, x.dtype)
            iters, elapsed, settle_s = measure(runner, x, self.args.seconds)
        return {"batch": batch, "wire": wire, "mode": mode, "samples_s": iters * batch / elapsed,
                "ms_per_call": elapsed / iters * 1e3, "iters": iters, "seconds": elapsed, "settle_s": settle_s,
                "compile_s": compile_s, "device": str(self.device), "precision": self.args.precision,
                **self.flags}


def answer(ceiling: Ceiling, request: dict[str, Any]) -> None:
    """Print the row for one request, or the error that stopped it; never raises for the shape itself."""
    try:
        row = ceiling.shape(str(request["wire"]), int(request["batch"]), str(request.get("mode", "default")))
    except Exception as exc:  # noqa: BLE001 - the parent reads the reason and carries on
        row = {**request, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print("ceiling " + json.dumps(row), flush=True)


def parse_shapes(text: str, mode: str) -> list[dict[str, Any]]:
    """'float32:128,uint8:128' -> requests."""
    out = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        wire, _, batch = item.partition(":")
        out.append({"wire": wire, "batch": int(batch), "mode": mode})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="model-only throughput of the served ResNet-18, no server")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--shapes", default="float32:128,uint8:128", help="wire:batch pairs, in order")
    parser.add_argument("--serve", action="store_true", help="read one JSON request per stdin line instead")
    parser.add_argument("--image-size", type=int, default=250)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "none"],
                        help="for --shapes (each --serve request names its own)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per shape")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    ceiling = Ceiling(args)
    # readline, not `for line in sys.stdin`: each request is answered as soon as its line arrives.
    lines = iter(sys.stdin.readline, "")
    requests = (json.loads(line) for line in lines if line.strip()) if args.serve else \
        iter(parse_shapes(args.shapes, args.compile_mode))
    for request in requests:
        answer(ceiling, request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
