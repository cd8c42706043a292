"""What an infer-server is configured with: one frozen object, built by the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from common.protocol import Limits

DEFAULT_BIND = "tcp://127.0.0.1:5555"

# Settings a CONTROL "reload" may change (the server re-executes itself with them).
RELOADABLE = (
    "compile",
    "compile_mode",
    "num_workers",
    "precision",
    "channels_last",
    "max_batch_size",
    "batch_timeout_us",
    "warmup_batch_sizes",
    "warmup_image_size",
    "model",
    "threads",
)


@dataclass(frozen=True)
class ServerConfig:
    bind: tuple[str, ...] = (DEFAULT_BIND,)
    device: str = "auto"
    model: str = "resnet18"
    model_dir: Path | None = None
    compile: bool = True
    compile_mode: str = "default"
    num_workers: int = 2
    precision: str = "fp32"
    channels_last: bool = False
    max_batch_size: int = 0  # dynamic batching off
    batch_timeout_us: int = 1000
    warmup_batch_sizes: tuple[int, ...] = ()
    warmup_image_size: int = 250
    warmup_dtype: str = "float32"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    max_inflight: int = 256
    max_inflight_bytes: int = 2 << 30
    limits: Limits = field(default_factory=Limits)
    curve_dir: Path | None = None  # server keys and authorised client keys
    ready_file: Path | None = None

    def replace(self, **changes: object) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """The infer-server arguments that recreate this configuration (used to re-exec)."""
        argv: list[str] = []
        for endpoint in self.bind:
            argv += ["--bind", endpoint]
        argv += ["--device", self.device, "--model", self.model]
        if self.model_dir is not None:
            argv += ["--model-dir", str(self.model_dir)]
        argv += ["--compile" if self.compile else "--no-compile", "--compile-mode", self.compile_mode]
        argv += ["--num-workers", str(self.num_workers), "--precision", self.precision]
        argv += ["--channels-last" if self.channels_last else "--no-channels-last"]
        argv += ["--max-batch-size", str(self.max_batch_size), "--batch-timeout-us", str(self.batch_timeout_us)]
        if self.warmup_batch_sizes:
            argv += ["--warmup-batch-sizes", ",".join(map(str, self.warmup_batch_sizes))]
        argv += ["--warmup-image-size", str(self.warmup_image_size), "--warmup-dtype", self.warmup_dtype]
        argv += ["--threads", str(self.threads), "--max-inflight", str(self.max_inflight)]
        argv += ["--max-inflight-bytes", str(self.max_inflight_bytes)]
        argv += ["--max-message-bytes", str(self.limits.max_frame_bytes)]
        if self.curve_dir is not None:
            argv += ["--curve-dir", str(self.curve_dir)]
        if self.ready_file is not None:
            argv += ["--ready-file", str(self.ready_file)]
        return argv

    @property
    def loopback_only(self) -> bool:
        """True when no bound endpoint is reachable from another host."""
        return all(_is_local_endpoint(e) for e in self.bind)


def _is_local_endpoint(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    return False
