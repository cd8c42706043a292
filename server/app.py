"""infer-server's start-up: check what can fail cheaply, then load, warm up, serve, re-exec on reload.

The order matters to whoever starts a server: a taken port, unreadable CURVE keys
or an unwritable ready file are reported in a moment, before the model loads
(and, with --compile, long before it has compiled).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

from common.options import check_writable_file
from server.config import ServerConfig

log = logging.getLogger("infer.server")

STARTED_AT_ENV = "INFER_SERVER_STARTED_AT"  # carries the start time across a reload's exec


class StartupError(Exception):
    """The server cannot start; the message is one line for the user."""


def run(config: ServerConfig) -> None:
    """Serve `config` until stopped; on a CONTROL reload, re-execute this process with the new settings."""
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started_at = float(os.environ.pop(STARTED_AT_ENV, "0") or 0) or _process_start_time()
    try:
        new_config = serve(config, started_at)
    except Exception as exc:
        if _is_startup_failure(exc):
            raise StartupError(str(exc)) from None
        raise
    if new_config is not None:
        reexec(new_config)


def _is_startup_failure(exc: Exception) -> bool:
    """Errors that are the machine's or the user's, reported as one line rather than a traceback."""
    import zmq

    from common.security import KeyFileError
    from server.model import DeviceError

    return isinstance(exc, (StartupError, DeviceError, KeyFileError, zmq.ZMQError, ValueError, OSError))


def reexec(config: ServerConfig) -> None:
    """Replace this process by `infer-server` with `config`: same pid, fresh interpreter and model."""
    log.info("reloading with new settings: re-executing")
    os.environ[STARTED_AT_ENV] = str(time.time())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "server", *config.to_argv()])


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


# -- checks before the model loads ----------------------------------------------------


def preflight(config: ServerConfig) -> None:
    """Fail now, not after loading and compiling, on what would fail at bind or ready time."""
    if config.ready_file is not None:
        try:
            check_writable_file(config.ready_file)
        except ValueError as exc:
            raise StartupError(f"--ready-file: {exc}") from None
    check_binds_and_keys(config)


def check_binds_and_keys(config: ServerConfig) -> None:
    """Load the CURVE keys and bind each fixed tcp port once, on a throwaway socket.

    Wildcard ports cannot be taken, and ipc paths are left alone (binding one
    replaces whatever socket file was there).
    """
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    auth = None
    try:
        if config.curve_dir is not None:
            from common.security import start_server_auth

            auth = start_server_auth(ctx, sock, config.curve_dir)
        for endpoint in config.bind:
            port = endpoint.rpartition(":")[2]
            if endpoint.startswith("tcp://") and port.isdigit():
                try:
                    sock.bind(endpoint)
                except zmq.ZMQError as exc:
                    raise StartupError(f"cannot bind {endpoint}: {exc}") from None
    finally:
        if auth is not None:
            auth.stop()
        sock.close(linger=0)
        ctx.term()


# -- start-up proper ------------------------------------------------------------------------


def serve(config: ServerConfig, started_at: float) -> ServerConfig | None:
    """Check, load, warm up, bind, serve. Returns the new configuration if a reload was requested."""
    preflight(config)
    from server.loop import Server

    runner, info = load(config)
    server = Server(config, runner, info)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    info["startup_s"] = time.time() - started_at
    log.info(
        "ready: %s on %s at %s (load %.3f s, warm-up/compile %.3f s, start to ready %.3f s)",
        config.model, info["device"], " ".join(server.endpoints), info["torch_load_time"],
        info["m_compile_time"], info["startup_s"],
    )
    if config.ready_file is not None:
        from common.fileio import write_atomic

        write_atomic(config.ready_file, json.dumps(
            {"endpoints": server.endpoints, "pid": os.getpid(), "instance": server.instance}))
    print("ready " + " ".join(server.endpoints), flush=True)
    return server.run()


def load(config: ServerConfig) -> tuple[Any, dict[str, Any]]:
    """The model on its device, wrapped and warmed up; and the start-up facts INFO reports."""
    import torch

    from common import host
    from server.alloc import keep_large_buffers_in_heap
    from server.model import build_model, resolve_device
    from server.runner import ModelRunner

    device = resolve_device(config.device)
    log.info("device %s (requested %s)", device, config.device)
    if not keep_large_buffers_in_heap():
        log.info("mallopt not available: large requests use fresh pages each time")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    model, loaded = build_model(
        config.model, device, config.model_dir, service_ms=config.service_ms,
        service_dist=config.service_dist, service_per_row=config.service_per_row,
    )
    log.info("model %s loaded from %s in %.3f s", config.model, loaded.source, loaded.load_s)
    cuda_graphs = config.compile and config.compile_mode != "default"
    runner = ModelRunner(
        model, device, compile=config.compile, compile_mode=config.compile_mode, precision=config.precision,
        channels_last=config.channels_last, serialize_calls=cuda_graphs and config.num_workers > 1,
    )
    compile_s = 0.0
    if config.warmup_batch_sizes:
        dtype = getattr(torch, config.warmup_dtype)  # a validated choice, never from the wire
        compile_s = runner.warm_up(list(config.warmup_batch_sizes), config.warmup_image_size, dtype)
        log.info("warmed up batch sizes %s in %.3f s", config.warmup_batch_sizes, compile_s)
    info = {
        "model": config.model,
        "model_source": loaded.source,
        "device": str(device),
        "device_name": host.device_name(device),
        "gpu_uuid": host.gpu_uuid(device),
        "torch_load_time": loaded.load_s,
        # Seconds spent running the warm-up shapes before serving, which is where
        # torch.compile really compiles (torch.compile() itself is lazy). Without
        # warm-up shapes it is 0 and compilation lands in the first request.
        "m_compile_time": compile_s,
        "warmup_batch_sizes": list(config.warmup_batch_sizes),
        "torch_threads": torch.get_num_threads(),
    }
    return runner, info
