"""`infer-server`: load the model, bind the ROUTER socket, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import click

from common.protocol import Limits
from server.config import DEFAULT_BIND, ServerConfig

log = logging.getLogger("infer.server")

STARTED_AT_ENV = "INFER_SERVER_STARTED_AT"  # carries the start time across a reload's exec


def _int_list(_ctx: object, _param: object, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if any(v <= 0 for v in items):
        raise click.BadParameter("batch sizes must be positive")
    return items


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--bind", "binds", multiple=True, default=[DEFAULT_BIND],
              help="Endpoint to bind (repeatable): tcp://HOST:PORT (PORT * = any free port) or ipc://PATH. "
                   "Loopback by default; bind 0.0.0.0 only on a trusted network or with --curve-dir.")
@click.option("--device", default="auto", help="cuda:N, cpu, or auto (CUDA when present, else CPU).")
@click.option("--model", type=click.Choice(["resnet18", "noop"]), default="resnet18",
              help="noop returns logits without running a network: measures transport and server overhead.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding resnet18-f37072fd.pth; without it, a seeded random init (never a download).")
@click.option("--compile/--no-compile", default=True, help="torch.compile the model (compiles per batch shape).")
@click.option("--compile-mode", type=click.Choice(["default", "reduce-overhead", "max-autotune"]), default="default")
@click.option("--num-workers", type=click.IntRange(0, 64), default=2,
              help="Prediction threads. 0 runs the model on the I/O thread itself: the least overhead "
                   "per request, but no overlap of I/O and compute.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", help="Autocast precision.")
@click.option("--channels-last/--no-channels-last", default=False, help="NHWC memory format.")
@click.option("--max-batch-size", type=click.IntRange(0, 4096), default=0,
              help="Dynamic batching: stack requests up to this many rows (0 or 1 = off).")
@click.option("--batch-timeout-us", type=click.IntRange(0, 10_000_000), default=1000,
              help="Dynamic batching: longest a request waits for others.")
@click.option("--warmup-batch-sizes", callback=_int_list, default="",
              help="Batch sizes to run (and compile) once before serving, e.g. 1,32.")
@click.option("--warmup-image-size", type=click.IntRange(32, 4096), default=250)
@click.option("--warmup-dtype", type=click.Choice(["float32", "uint8", "float16", "bfloat16"]), default="float32")
@click.option("--threads", type=click.IntRange(0, 1024), default=0, help="torch intra-op threads (0 = torch's default).")
@click.option("--max-inflight", type=click.IntRange(1, 1_000_000), default=256,
              help="Requests accepted but not answered; more get OVERLOADED.")
@click.option("--max-inflight-bytes", type=click.IntRange(1), default=2 << 30,
              help="Input bytes accepted but not answered; more get OVERLOADED.")
@click.option("--max-message-bytes", type=click.IntRange(1024), default=Limits().max_frame_bytes,
              help="Largest frame accepted (ZMQ_MAXMSGSIZE); a peer sending more is disconnected.")
@click.option("--curve-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Enable CURVE: server.key_secret and authorized_clients/ (see infer-keygen).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write {endpoints, pid, instance} as JSON here once ready.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info")
def main(binds: tuple[str, ...], max_message_bytes: int, log_level: str, **kwargs: object) -> None:
    """Serve ResNet-18 inference over ZeroMQ (ROUTER socket, msgpack header + raw tensor frames)."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started_at = float(os.environ.pop(STARTED_AT_ENV, "0")) or _process_start_time()
    config = ServerConfig(bind=binds, limits=Limits(max_frame_bytes=max_message_bytes), **kwargs)  # type: ignore[arg-type]
    try:
        new_config = serve(config, started_at)
    except click.ClickException:
        raise
    except Exception as exc:
        import zmq

        from common.security import KeyFileError
        from server.model import DeviceError

        if isinstance(exc, (DeviceError, KeyFileError, zmq.ZMQError, ValueError, OSError)):
            raise click.ClickException(str(exc)) from None
        raise
    if new_config is not None:
        log.info("reloading with new settings: re-executing")
        os.environ[STARTED_AT_ENV] = str(time.time())
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "server", *new_config.to_argv()])


def keep_large_buffers_in_heap() -> bool:
    """Let glibc reuse freed large blocks instead of mapping fresh pages for each.

    libzmq allocates every received message anew; above glibc's mmap threshold
    each one gets fresh pages whose first touch runs at ~1.3 GB/s on our VMs
    against 16-39 GB/s for a memcpy into warm memory (see the NOTES). Raising
    the threshold to its maximum (32 MiB on 64-bit) and not trimming the heap
    keeps requests up to 32 MiB (batch 32 at 3x250x250 float32) in reused memory:
    +40% noop throughput at batch 32 (1232 -> 1739 and 1351 -> 1891 samples/s,
    A/B interleaved), no measurable change at batch 1. Peak heap is still
    bounded by --max-inflight-bytes. No-op on a libc without mallopt.

    One arena: libzmq's I/O thread allocates the messages it receives, so by
    default they come from that thread's own arena, whose heaps are mmap'd
    64 MiB at a time and unmapped as soon as one is empty, whatever the trim
    threshold says (glibc's heap_trim). A 24 MiB request that needed a heap of
    its own then gets fresh pages every time: seen twice in one day, a noop
    server at batch 32 over ipc spent 14-19 ms of CPU per request instead of
    6-8 and served 50-64 instead of ~110 requests/s, for the life of that process.
    With M_ARENA_MAX = 1 every thread allocates from the main heap, which the
    two settings above govern.
    """
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's <malloc.h> parameter numbers
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (
        bool(mallopt(m_mmap_threshold, 32 << 20))
        and bool(mallopt(m_trim_threshold, 1 << 30))
        and bool(mallopt(m_arena_max, 1))
    )


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


def serve(config: ServerConfig, started_at: float) -> ServerConfig | None:
    """Load, warm up, bind, serve. Returns the new configuration if a reload was requested."""
    import torch

    from server.loop import Server
    from server.model import ModelRunner, build_model, resolve_device

    device = resolve_device(config.device)
    log.info("device %s (requested %s)", device, config.device)
    if not keep_large_buffers_in_heap():
        log.info("mallopt not available: large requests use fresh pages each time")
    if config.threads:
        torch.set_num_threads(config.threads)
    model, load = build_model(config.model, device, config.model_dir)
    log.info("model %s loaded from %s in %.3f s", config.model, load.source, load.load_s)
    cuda_graphs = config.compile and config.compile_mode != "default"
    runner = ModelRunner(
        model,
        device,
        compile=config.compile,
        compile_mode=config.compile_mode,
        precision=config.precision,
        channels_last=config.channels_last,
        serialize_calls=cuda_graphs and config.num_workers > 1,
    )
    compile_s = 0.0
    if config.warmup_batch_sizes:
        dtype = getattr(torch, config.warmup_dtype)  # from a click.Choice, not from the wire
        compile_s = runner.warm_up(list(config.warmup_batch_sizes), config.warmup_image_size, dtype)
        log.info("warmed up batch sizes %s in %.3f s", config.warmup_batch_sizes, compile_s)
    info = {
        "model": config.model,
        "model_source": load.source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "gpu_uuid": _gpu_uuid(device),
        "torch_load_time": load.load_s,
        # Seconds spent running the warm-up shapes before serving, which is where
        # torch.compile really compiles (torch.compile() itself is lazy). Without
        # warm-up shapes it is 0 and compilation lands in the first request.
        "m_compile_time": compile_s,
        "warmup_batch_sizes": list(config.warmup_batch_sizes),
        "torch_threads": torch.get_num_threads(),
    }
    server = Server(config, runner, info)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    info["startup_s"] = time.time() - started_at
    log.info(
        "ready: %s on %s at %s (load %.3f s, warm-up/compile %.3f s, start to ready %.3f s)",
        config.model, device, " ".join(server.endpoints), load.load_s, compile_s, info["startup_s"],
    )
    if config.ready_file is not None:
        tmp = config.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"endpoints": server.endpoints, "pid": os.getpid(), "instance": server.instance}))
        tmp.replace(config.ready_file)
    print("ready " + " ".join(server.endpoints), flush=True)
    return server.run()


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _gpu_uuid(device: object) -> str | None:
    import torch

    if getattr(device, "type", None) != "cuda":
        return None
    try:
        return f"GPU-{torch.cuda.get_device_properties(device).uuid}"
    except Exception:
        return None
