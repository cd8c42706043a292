"""What an infer-client run is configured with: one frozen object, built by the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.transport import CurveKeys

DEFAULT_SERVER = "tcp://127.0.0.1:5555"


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...] = (DEFAULT_SERVER,)
    batch_size: int = 32
    image_size: int = 250
    wire_dtype: str = "float32"
    num_iters: int | None = 100  # measured requests (warm-up excluded); None with duration_s
    duration_s: float | None = None
    warmup: int = 1
    concurrency: int = 1  # requests in flight; 0 = unbounded (the seed's flood)
    request_rate: float | None = None  # requests/s: open loop
    arrival: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    timeout_s: float = 30.0  # no reply for this long: the server is lost
    reconnect_timeout_s: float = 0.0  # > 0: probe a lost server this long and use it again if it returns
    warmup_timeout_s: float = 900.0  # the first request may compile the model
    slo_ms: float | None = None
    window_s: float | None = None
    max_windows: int = 10
    stability_windows: int = 3
    stability_tolerance: float = 0.10
    trace_file: Path | None = None
    gpu_source: str = "auto"
    gpu_interval_s: float = 0.1
    processes: int = 1
    curve: CurveKeys | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["servers"] = list(self.servers)
        d["trace_file"] = str(self.trace_file) if self.trace_file else None
        d["curve"] = self.curve is not None
        return d

    @property
    def run_until_stable(self) -> bool:
        return bool(self.window_s) and self.num_iters is None and self.duration_s is None

    def part(self, index: int, parts: int) -> ClientConfig:
        """This configuration's share for client process `index` of `parts`."""

        def share(total: int) -> int:
            return total // parts + (1 if index < total % parts else 0)

        return dataclasses.replace(
            self,
            num_iters=share(self.num_iters) if self.num_iters is not None else None,
            request_rate=self.request_rate / parts if self.request_rate else None,
            concurrency=max(1, share(self.concurrency)) if self.concurrency else 0,
            seed=self.seed + index,
            trace_file=self.trace_file.with_suffix(f".{index}{self.trace_file.suffix}") if self.trace_file else None,
            processes=1,
        )
