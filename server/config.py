"""What an infer-server is configured with: one frozen object that validates itself.

Each option is declared once, as a field below; the click command (server/cli.py),
the argv a reload re-executes with (`to_argv`), the settings a CONTROL reload may
change (`RELOADABLE`, `from_settings`) and the INFO reply's `config` all derive
from these fields. Whoever builds a ServerConfig (the CLI, a reload, sweep.py, the
benchmarks, tests) gets the same checks: ValueError naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import options
from common.options import format_bytes, option
from common.protocol import WIRE_DTYPES, Limits
from server.models import build as models  # torch-free at import
from server.models.spec import SERVICE_DISTS

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_METRICS_HOST = "127.0.0.1"
METRICS_TLS_FILES = ("server.crt", "server.key", "client_ca.crt")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that capture CUDA graphs
PRECISIONS = ("fp32", "bf16", "fp16")
INPUT_DTYPES = ("float32", "uint8", "float16", "bfloat16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
CHANNELS = 3  # the image models take [B, 3, S, S]


@dataclass(frozen=True)
class ServerConfig:
    bind: tuple[str, ...] = option(
        (DEFAULT_BIND,), kind="strs",
        help="Endpoint to bind (repeatable): tcp://HOST:PORT (PORT * = any free port) or ipc://PATH. "
             "Loopback by default; bind 0.0.0.0 only on a trusted network or with --curve-dir.")
    device: str = option("auto", kind="str", help="cuda:N, cpu, or auto (CUDA when present, else CPU).")
    model: str = option(
        "resnet18", kind="str", reloadable=True,
        help="resnet18 (torchvision's ResNet-18) or any other torchvision "
             "classification model (--list-models); noop returns logits without running a network "
             "(transport and server overhead only); sleep waits --service-ms per call (a model with a known "
             "service time); package.module:factory imports and runs your own (with --input-shape).")
    model_dir: Path | None = option(
        None, kind="path", file_okay=False,
        help="Directory holding the model's checkpoint under torchvision's file name (--list-models), e.g. "
             "resnet18-f37072fd.pth; a missing one is an error unless --allow-random-init. Without it, a seeded "
             "random init (never a download).")
    allow_random_init: bool = option(
        False, kind="bool", reloadable=True,
        help="With --model-dir: serve seeded random weights when the checkpoint is missing, instead of failing.")
    input_shape: tuple[int, ...] = option(
        (), kind="ints", min=1, max=1 << 20, reloadable=True,
        help="--model package.module:factory: one sample's shape, e.g. 3,224,224 (requests are [B, *shape]).")
    input_dtype: str = option("float32", kind="str", choices=INPUT_DTYPES, reloadable=True,
                              help="--model package.module:factory: the input dtype the model takes, passed "
                                   "to it unchanged.")
    compile: bool = option(True, kind="bool", reloadable=True,
                           help="torch.compile the model (compiles once per input shape).")
    compile_mode: str = option("default", kind="str", choices=COMPILE_MODES, reloadable=True,
                               help="torch.compile mode; ignored with --no-compile.")
    num_workers: int | None = option(
        None, kind="int", min=0, max=64, reloadable=True, show_default="1 on CPU, 2 on CUDA",
        help="Prediction threads. 0 runs the model on the I/O thread itself: the least overhead "
             "per request, but no overlap of I/O and compute. Unset: 1 on CPU (all of --threads in one "
             "forward pass), 2 on CUDA (each with its own stream), 1 with a CUDA-graph --compile-mode.")
    precision: str = option("fp32", kind="str", choices=PRECISIONS, reloadable=True, help="Autocast precision.")
    channels_last: bool = option(False, kind="bool", reloadable=True, help="NHWC memory format.")
    max_batch_size: int = option(0, kind="int", min=0, max=4096, reloadable=True,
                                 help="Dynamic batching: stack requests up to this many rows (0 or 1 = off).")
    batch_timeout_us: int = option(1000, kind="int", min=0, max=10_000_000, reloadable=True,
                                   help="Dynamic batching: longest a request waits for others while a worker is free, "
                                        "in microseconds (while every worker is busy, batches keep growing).")
    warmup_batch_sizes: tuple[int, ...] = option(
        (), kind="ints", min=1, max=4096, reloadable=True,
        help="Batch sizes to run (and compile) once before serving, e.g. 1,32. The largest may hold at most "
             "--max-message-bytes of input: a bigger batch could never arrive over the wire.")
    warmup_image_size: int = option(250, kind="int", min=32, max=4096, reloadable=True,
                                    help="Side S of the warm-up inputs [B, 3, S, S], in pixels (a model with a "
                                         "fixed input size, e.g. ViT, or a user model warms up at its own).")
    warmup_dtype: str = option("float32", kind="str", choices=INPUT_DTYPES, reloadable=True,
                               help="dtype of the warm-up inputs (uint8: raw pixels, as --wire-dtype uint8 sends; "
                                    "a user model warms up with its --input-dtype).")
    threads: int = option(
        0, kind="int", min=0, max=1024, reloadable=True,
        help="torch intra-op threads for the whole server, divided among the prediction threads "
             "(0 = on CPU the cores torch sees; on CUDA, where they only copy inputs to pinned memory, one each).")
    max_inflight: int = option(256, kind="int", min=1, max=1_000_000,
                               help="Requests accepted but not answered; more get OVERLOADED.")
    max_inflight_bytes: int = option(
        2 << 30, kind="bytes", min=1,
        help="Input bytes of the requests accepted but not answered (e.g. 2GiB); more get OVERLOADED. Not counted: "
             "requests libzmq has received and the server not yet read, refused ones, replies (docs/reliability.md).")
    max_queued_reply_bytes: int = option(
        64 << 20, kind="bytes", min=1 << 20,
        help="Bytes of large replies (64 KiB or more) one client may have queued, sent but not yet read; "
             "beyond it a reply is dropped and counted (a client that is not reading). An idle client always "
             "takes one reply.")
    peer_timeout_s: float = option(
        60.0, kind="float", min=0, max=86_400,
        help="Close a connection silent this long (no frame, no heartbeat answer; heartbeats every third of it), "
             "freeing what it held: an unfinished message, queued replies. 0 = never (TCP keep-alive only).")
    io_threads: int = option(
        1, kind="int", min=1, max=16,
        help="libzmq I/O threads, which move the bytes. One connection is always served by one of them, "
             "so more help only with several clients (docs/performance.md has the measurements).")
    limits: Limits = options.composite(
        default_factory=Limits, help="Limits on what is read from the wire.",
        parts=(("max_frame_bytes", options.Opt(
            kind="bytes", flag="--max-message-bytes", min=1024,
            help="Largest frame accepted (ZMQ_MAXMSGSIZE), e.g. 512MiB; a peer sending more is disconnected. "
                 "The default holds the largest request the tools send (batch 256 of float32 3x250x250, 192 MB).")),))
    curve_dir: Path | None = option(
        None, kind="path", file_okay=False,
        help="Enable CURVE: server.key_secret and authorized_clients/ (see infer-keygen).")
    ready_file: Path | None = option(None, kind="path", dir_okay=False,
                                     help="Write {endpoints, pid, instance} as JSON here once ready.")
    service_ms: float = option(10.0, kind="float", min=0, max=600_000, reloadable=True,
                               help="--model sleep: service time of one call, in milliseconds.")
    service_dist: str = option("fixed", kind="str", choices=SERVICE_DISTS, reloadable=True,
                               help="--model sleep: fixed service time, or exponential with mean --service-ms.")
    service_per_row: bool = option(False, kind="bool", reloadable=True,
                                   help="--model sleep: multiply the service time by the batch's rows.")
    cudnn_benchmark: bool = option(False, kind="bool", reloadable=True,
                                   help="Let cuDNN time its convolution algorithms per shape (CUDA only).")
    log_level: str = option("info", kind="str", choices=("debug", "info", "warning"), help="Server log level.")
    metrics_port: int | None = option(
        None, kind="int", min=0, max=65535, show_default="off",
        help="Serve Prometheus metrics at http://--metrics-host:PORT/metrics (0 = any free port, logged and in "
             "--ready-file). docs/server.md lists the metrics.")
    metrics_host: str = option(
        DEFAULT_METRICS_HOST, kind="str",
        help="Address the metrics endpoint binds. Loopback by default; plain HTTP elsewhere only where STATS "
             "itself answers anyone (no --curve-dir, a non-loopback --bind), else give --metrics-tls-dir.")
    metrics_tls_dir: Path | None = option(
        None, kind="path", file_okay=False,
        help="Serve the metrics over HTTPS to clients with a certificate: server.crt, server.key and "
             "client_ca.crt (the CA that signs scrapers' certificates) in this directory.")

    def __post_init__(self) -> None:
        options.check_fields(self)
        if not self.bind:
            raise ValueError("bind (--bind): at least one endpoint is needed")
        for endpoint in self.bind:
            try:
                options.check_endpoint(endpoint, bind=True)
            except ValueError as exc:
                raise ValueError(f"bind (--bind): {exc}") from None
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device (--device): expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        self._check_model()
        self._check_warmup_fits()
        self._check_cuda_graph_threads()
        self._check_metrics()

    def _check_metrics(self) -> None:
        """The metrics endpoint shows what STATS shows, so it may reach only whom STATS answers.

        STATS needs no credentials unless --curve-dir, and is reachable from other hosts
        only on a non-loopback --bind. Anything beyond that needs client certificates.
        """
        if self.metrics_port is None:
            if self.metrics_host != DEFAULT_METRICS_HOST or self.metrics_tls_dir is not None:
                flag = "tls_dir (--metrics-tls-dir)" if self.metrics_tls_dir is not None else "host (--metrics-host)"
                raise ValueError(f"metrics_{flag} applies only with --metrics-port")
            return
        if not re.fullmatch(r"[A-Za-z0-9.:_-]+", self.metrics_host):
            raise ValueError(f"metrics_host (--metrics-host): expected an address or host name, got "
                             f"{self.metrics_host!r}")
        if self.metrics_tls_dir is not None:
            return
        if self.curve_dir is not None:
            raise ValueError("metrics_port (--metrics-port): with --curve-dir STATS answers only authorised "
                             "clients; give --metrics-tls-dir so that the metrics need a client certificate too")
        if self.loopback_only and not _is_loopback_host(self.metrics_host):
            raise ValueError(f"metrics_host (--metrics-host): {self.metrics_host} is reachable from other hosts, "
                             "which this loopback server's STATS is not; give --metrics-tls-dir (client "
                             "certificates) or keep the metrics on loopback")

    def _check_cuda_graph_threads(self) -> None:
        """CUDA graphs are captured and replayed on the thread that warmed them up, and assert under
        concurrent calls (pytorch#123177): those modes get one thread that runs the model."""
        if self.compile and self.compile_mode in CUDA_GRAPH_MODES and (self.num_workers or 0) > 1:
            raise ValueError(
                f"compile_mode (--compile-mode): {self.compile_mode} replays CUDA graphs on the one thread that "
                f"captured them; use --num-workers 1 or 0 (not {self.num_workers}), or --compile-mode default")

    def _check_model(self) -> None:
        """The model's name, and the options only a user model takes (cheap: nothing is imported).

        Whether torchvision knows a name, and whether its checkpoint is there, is
        checked before the model loads (server.models.build.check_model).
        """
        try:
            models.check_model_syntax(self.model)
        except ValueError as exc:
            raise ValueError(f"model (--model): {exc}") from None
        user = models.is_user_model(self.model)
        if not user and (self.input_shape or self.input_dtype != "float32"):
            flag = "input_shape (--input-shape)" if self.input_shape else "input_dtype (--input-dtype)"
            raise ValueError(f"{flag} applies to a user model (--model package.module:factory) only")
        if user and not self.input_shape:
            raise ValueError(f"input_shape (--input-shape): --model {self.model} needs one sample's shape, "
                             "e.g. 3,224,224")
        if user and self.model_dir is not None:
            raise ValueError("model_dir (--model-dir) holds torchvision checkpoints; a user model's factory "
                             "loads its own weights")

    def _check_warmup_fits(self) -> None:
        """A warm-up batch is bounded by what one request may carry, so a typo cannot ask for 800 GB."""
        if not self.warmup_batch_sizes:
            return
        rows, side = max(self.warmup_batch_sizes), self.warmup_image_size
        if models.is_user_model(self.model):  # it warms up with its own input (InputSpec.warmup_dtype)
            shape, dtype = self.input_shape, self.input_dtype
        else:
            shape, dtype = (CHANNELS, side, side), self.warmup_dtype
        need = rows * math.prod(shape) * WIRE_DTYPES[dtype]
        if need > self.limits.max_frame_bytes:
            raise ValueError(
                f"warmup_batch_sizes (--warmup-batch-sizes): batch {rows} of {list(shape)} "
                f"{dtype} is {need / 1e9:.3g} GB of input, more than one request may carry "
                f"(--max-message-bytes {format_bytes(self.limits.max_frame_bytes)})"
            )

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """The infer-server arguments that recreate this configuration (used to re-exec)."""
        return options.to_argv(self)

    def to_json(self) -> dict[str, Any]:
        """Every option by field name, as JSON-able values."""
        return options.to_json(self)

    @classmethod
    def from_settings(cls, base: ServerConfig, settings: Mapping[str, Any]) -> ServerConfig:
        """`base` with a CONTROL reload's settings applied, checked as the command line would check them.

        ValueError names the setting: unknown, not reloadable, of the wrong type, out of range,
        or contradicting another option. A model that could not be built is refused here, so that
        the re-executed server does not fail to start; and a user model (which runs code named by the
        setting) only as the one the server was started with.
        """
        new = options.apply_settings(base, settings)
        if new.model != base.model and models.is_user_model(new.model):
            raise ValueError(
                f"model: a CONTROL reload cannot choose the user model {new.model!r}: it would run code named "
                "over the wire; give package.module:factory on the server's command line")
        if (new.model, new.model_dir, new.allow_random_init) != (base.model, base.model_dir, base.allow_random_init):
            try:
                models.check_model(new.model, new.model_dir, new.allow_random_init)
            except ValueError as exc:
                raise ValueError(f"model: {exc}") from None
        return new

    @property
    def loopback_only(self) -> bool:
        """True when no bound endpoint is reachable from another host."""
        return all(_is_local_endpoint(e) for e in self.bind)


RELOADABLE: tuple[str, ...] = options.reloadable(ServerConfig)


def _is_local_endpoint(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if endpoint.startswith("tcp://"):
        return _is_loopback_host(endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]"))
    return False


def _is_loopback_host(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
