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
from server.config import CUDA_GRAPH_MODES, ServerConfig

log = logging.getLogger("infer.server")

STARTED_AT_ENV = "INFER_SERVER_STARTED_AT"  # carries the start time across a reload's exec


class StartupError(Exception):
    """The server cannot start; the message is one line for the user."""


def run(config: ServerConfig) -> None:
    """Serve `config` until stopped; on a CONTROL reload, re-execute this process with the new settings."""
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from server.alloc import keep_large_buffers_in_heap

    if not keep_large_buffers_in_heap():  # first, before anything starts a thread: see server/alloc.py
        log.info("mallopt not available: large requests use fresh pages each time")
    started_at = float(os.environ.pop(STARTED_AT_ENV, "0") or 0) or _process_start_time()
    sleeping_openmp_threads()
    from server import reload

    reload.take_from_environment()
    try:
        new_config = serve(config, started_at)
    except Exception as exc:
        # A reload that fails before ready brings back the settings from before it (server/reload.py).
        reload.fall_back(exc, exec_server)
        if _is_startup_failure(exc):
            raise StartupError(str(exc)) from None
        raise
    if new_config is not None:
        reexec(new_config)


def _is_startup_failure(exc: Exception) -> bool:
    """Errors that are the machine's or the user's, reported as one line rather than a traceback."""
    import zmq

    from common.security import KeyFileError
    from server.models.build import DeviceError

    return isinstance(exc, (StartupError, DeviceError, KeyFileError, zmq.ZMQError, ValueError, OSError))


def reexec(config: ServerConfig) -> None:
    """Replace this process by `infer-server` with `config`: same pid, fresh interpreter and model."""
    log.info("reloading with new settings: re-executing")
    exec_server(config.to_argv())


def exec_server(argv: list[str]) -> None:
    """Replace this process by `infer-server argv` (does not return)."""
    os.environ[STARTED_AT_ENV] = str(time.time())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "server", *argv])


def _process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()


def sleeping_openmp_threads() -> None:
    """Let OpenMP threads sleep between parallel regions, unless the user chose a wait policy.

    libgomp spins a team's threads for milliseconds after each parallel region when
    its threads fit the cores (and barely at all when they do not), as the default
    one worker with every core does. Between a forward pass's operators that keeps
    every core busy: the I/O thread and a co-located client wait for a core, and the
    server's CPU time per request (STATS, and so every result) counts the spinning.
    Sleeping costs a wake-up per region instead; benchmarks/cpu_defaults.py measures
    both. libgomp reads this when torch loads it, so it is set before torch is imported.
    """
    if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


# -- checks before the model loads ----------------------------------------------------


def preflight(config: ServerConfig) -> None:
    """Fail now, not after loading and compiling, on what would fail at bind or ready time."""
    if config.ready_file is not None:
        try:
            check_writable_file(config.ready_file)
        except ValueError as exc:
            raise StartupError(f"--ready-file: {exc}") from None
    check_binds_and_keys(config)
    if config.metrics_port is not None:
        from server import metrics_endpoint

        try:
            metrics_endpoint.preflight(config)
        except ValueError as exc:
            raise StartupError(str(exc)) from None


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
    """Check, load, bind, warm up, serve. Returns the new configuration if a reload was requested."""
    preflight(config)
    from server import reload
    from server.loop import Server

    runner, config, info = load(config)
    server = Server(config, runner, info)
    info.update(warm_up(server, config, info["torch_threads"]))
    info["last_reload"] = reload.ready()  # from here on a failure no longer brings back the old settings
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.request_stop())
    info["startup_s"] = time.time() - started_at
    metrics = start_metrics(config, server)
    try:
        announce_ready(config, server, info, metrics.url if metrics is not None else None)
        return server.run()
    finally:
        if metrics is not None:
            metrics.stop()


def start_metrics(config: ServerConfig, server: Any) -> Any:
    """The Prometheus endpoint (server/metrics_endpoint.py), or None without --metrics-port."""
    if config.metrics_port is None:
        return None
    from server.metrics_endpoint import MetricsEndpoint

    try:
        return MetricsEndpoint(config, server)
    except OSError as exc:  # the port was taken since the preflight check
        raise StartupError(f"--metrics-port: cannot serve on {config.metrics_host}:{config.metrics_port}: "
                           f"{exc.strerror or exc}") from None


def announce_ready(config: ServerConfig, server: Any, info: dict[str, Any], metrics_url: str | None) -> None:
    """The log line, the ready file and the `ready` line on stdout, in that order."""
    log.info(
        "ready: %s on %s at %s (load %.3f s, warm-up/compile %.3f s, start to ready %.3f s)",
        config.model, info["device"], " ".join(server.endpoints), info["torch_load_time"],
        info["m_compile_time"], info["startup_s"],
    )
    if config.ready_file is not None:
        from common.fileio import write_atomic

        ready = {"endpoints": server.endpoints, "pid": os.getpid(), "instance": server.instance}
        if metrics_url is not None:
            ready["metrics"] = metrics_url
        write_atomic(config.ready_file, json.dumps(ready))
    print("ready " + " ".join(server.endpoints), flush=True)


def load(config: ServerConfig) -> tuple[Any, ServerConfig, dict[str, Any]]:
    """The model on its device, wrapped; the configuration with its device's defaults filled in
    (so INFO, and a reload, say what runs); and the start-up facts INFO reports."""
    import torch

    from common import host
    from server.models.build import build_model, resolve_device
    from server.runner import ModelRunner, backend_facts
    from server.workers import default_workers, threads_per_worker

    device = resolve_device(config.device)
    log.info("device %s (requested %s)", device, config.device)
    cuda_graphs = config.compile and config.compile_mode in CUDA_GRAPH_MODES
    if config.num_workers is None:
        config = config.replace(num_workers=default_workers(device.type, cuda_graphs))
    cores = torch.get_num_threads()  # torch's default: the cores it sees
    threads_each = threads_per_worker(device.type, config.num_workers, config.threads, cores)
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    model, loaded = build_model(
        config.model, device, config.model_dir, service_ms=config.service_ms,
        service_dist=config.service_dist, service_per_row=config.service_per_row,
        allow_random_init=config.allow_random_init, input_shape=config.input_shape, input_dtype=config.input_dtype,
    )
    log.info("model %s loaded from %s in %.3f s", config.model, loaded.source, loaded.load_s)
    runner = ModelRunner(
        model, device, compile=config.compile, compile_mode=config.compile_mode, precision=config.precision,
        channels_last=config.channels_last, raw_input=loaded.input.raw,
    )
    info = {
        **loaded.input.to_info(),
        "model": config.model,
        "model_source": loaded.source,
        "device": str(device),
        "device_name": host.device_name(device),
        "gpu_uuid": host.gpu_uuid(device),
        "torch_load_time": loaded.load_s,
        "warmup_batch_sizes": list(config.warmup_batch_sizes),
        "torch_threads": threads_each,  # intra-op threads of each forward pass
        # How --threads was divided: each of `workers` prediction threads (the I/O thread
        # when there are none) runs with `threads_each`.
        "thread_split": {"workers": config.num_workers, "threads_each": threads_each,
                         "threads": config.threads, "cores": cores,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                         "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")},
        "backend": backend_facts(device),
    }
    return runner, config, info


def warm_up(server: Any, config: ServerConfig, threads_each: int) -> dict[str, Any]:
    """Start the worker pool, `threads_each` intra-op threads per prediction thread: every warm-up
    shape through every one of them, on its own stream, before the server says it is ready."""
    import torch

    from server.models.spec import InputSpec

    spec = InputSpec.from_info(server.info)
    dtype = getattr(torch, spec.warmup_dtype(config.warmup_dtype))  # a validated choice, never from the wire
    sample = spec.sample_shape(config.warmup_image_size)
    inputs = [(dtype, (rows, *sample)) for rows in config.warmup_batch_sizes]
    start = time.perf_counter()
    try:
        server.pool.start(inputs, threads=threads_each)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    compile_s = time.perf_counter() - start if inputs else 0.0
    if inputs:
        log.info("warmed up batch sizes %s on %d prediction threads in %.3f s",
                 config.warmup_batch_sizes, max(1, config.num_workers), compile_s)
    return {
        # Seconds spent running the warm-up shapes before serving, which is where
        # torch.compile really compiles (torch.compile() itself is lazy). Without
        # warm-up shapes it is 0 and compilation lands in the first request.
        "m_compile_time": compile_s,
        # Per prediction thread (index = worker), its first call of each warm-up shape in seconds.
        "warmup_first_call_s": server.pool.warmup_s,
    }
