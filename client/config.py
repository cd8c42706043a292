"""What an infer-client run is configured with: one frozen object that validates itself.

Each option is declared once, as a field below; the click command (client/cli.py)
and `to_argv` derive from these fields. Whoever builds a ClientConfig (the CLI,
sweep.py, the benchmarks, tests) gets the same checks, contradictions included:
ValueError naming the options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.schedule import check_load_options
from common import options
from common.options import option

DEFAULT_SERVER = "tcp://127.0.0.1:5555"
DEFAULT_NUM_ITERS = 100  # when neither --duration nor --window-s says how long to run
ARRIVALS = ("constant", "poisson", "gamma")  # open-loop inter-arrival distributions (client/loadgen.py)
TRANSPORTS = ("zmq", "shm")


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE client's key files: its own secret key and the server's public key."""

    client_secret: Path
    server_public: Path


@dataclass(frozen=True)
class ClientConfig:
    servers: tuple[str, ...] = option(
        (DEFAULT_SERVER,), kind="strs", flag="--server", endpoint="connect",
        help="infer-server endpoint: tcp://HOST:PORT, ipc://PATH (repeatable: requests go to the least-loaded "
             "live server).")
    batch_size: int = option(32, kind="int", min=1, max=4096, help="Samples per request.")
    image_size: int = option(250, kind="int", min=32, max=4096, help="Inputs are [B, 3, S, S]; S in pixels.")
    input_shape: tuple[int, ...] = option(
        (), kind="ints", min=1, max=1 << 20,
        help="One sample's shape for a model that does not take images (a server's --input-shape), e.g. 16 or "
             "1,20,30: requests are [B, *shape] and --image-size is unused.")
    wire_dtype: str = option("float32", kind="str", choices=("float32", "uint8"),
                             help="uint8 sends raw pixels (4x fewer bytes); the server normalises them on its device.")
    num_iters: int | None = option(
        None, kind="int", min=1, show_default=f"{DEFAULT_NUM_ITERS} unless --duration or --window-s",
        help="Measured requests, warm-up excluded.")
    duration_s: float | None = option(None, kind="float", flag="--duration", min=0, min_open=True,
                                      help="Send for this many seconds instead of --num-iters.")
    warmup: int = option(1, kind="int", min=0, help="Unmeasured requests sent first, one at a time.")
    concurrency: int | None = option(
        None, kind="int", min=0, show_default="1; with --request-rate 0",
        help="Requests in flight (closed loop); 0 = no cap: every request sent at once. With --request-rate: "
             "a cap on requests in flight (0 = none).")
    request_rate: float | None = option(
        None, kind="float", min=0, min_open=True,
        help="Open loop: requests/s on a seeded schedule; latency counts from each scheduled time.")
    arrival: str = option("poisson", kind="str", choices=ARRIVALS, help="Open-loop inter-arrival times.")
    burstiness: float = option(1.0, kind="float", min=0, min_open=True,
                               help="Gamma shape for --arrival gamma (1 = Poisson; < 1 burstier).")
    schedule_file: Path | None = option(
        None, kind="path", dir_okay=False, exists=True,
        help="Open loop: replay these send times, one offset in seconds per line, or the JSON lines of a "
             "--trace-file (its scheduled times, from the first). Sends as many requests as it lists.")
    ramp_s: float | None = option(
        None, kind="float", min=0, min_open=True,
        help="Ramp linearly over this many seconds from --ramp-start to --request-rate (open loop) or to "
             "--concurrency (closed loop), then hold; --window-s windows show where throughput stops rising.")
    ramp_start: float | None = option(
        None, kind="float", min=0, show_default="1",
        help="--ramp-s: the rate in requests/s (open loop) or the requests in flight (closed loop) it starts at.")
    seed: int = option(0, kind="int", help="Seeds the inputs and the arrival schedule.")
    timeout_s: float = option(
        30.0, kind="float", flag="--timeout", min=0, min_open=True,
        help="Seconds without a reply before a server counts as lost (and for the HELLO handshake).")
    reconnect_timeout_s: float = option(
        0.0, kind="float", flag="--reconnect-timeout", min=0,
        help="Keep probing a lost server this many seconds; if it comes back (e.g. restarted on the "
             "same endpoint) use it again and report the recovery time. 0 = lost for good.")
    warmup_timeout_s: float = option(
        900.0, kind="float", flag="--warmup-timeout", min=0, min_open=True,
        help="Seconds to wait for a warm-up reply (the first request may compile the model).")
    slo_ms: float | None = option(None, kind="float", min=0, min_open=True,
                                  help="Latency objective in ms: report goodput, the rate of requests at or under it.")
    window_s: float | None = option(
        None, kind="float", min=0, min_open=True,
        help="Measurement window length in seconds; reports stability. Alone, run until stable or --max-windows.")
    max_windows: int = option(10, kind="int", min=3, help="Most windows a run-until-stable run measures.")
    stability_windows: int = option(3, kind="int", min=2,
                                    help="Stable: the last this many windows agree within --stability-tolerance.")
    stability_tolerance: float = option(0.10, kind="float", min=0, min_open=True, max=1,
                                        help="Stable: windows' throughput within this fraction of their mean.")
    trace_file: Path | None = option(
        None, kind="path", dir_okay=False,
        help="Write one JSON line per request (scheduled/sent/received ns, server durations).")
    gpu_source: str = option("auto", kind="str", choices=("auto", "local", "server", "off"),
                             help="Where GPU figures come from: this host's NVML, or the server's STATS.")
    gpu_interval_s: float = option(0.1, kind="float", flag="--gpu-interval", min=0.01, max=60,
                                   help="Seconds between GPU and CPU samples.")
    processes: int = option(1, kind="int", min=1, max=256,
                            help="Client processes sharing the load; their histograms are merged exactly.")
    curve: CurveKeys | None = options.composite(
        None, cls=CurveKeys, help="CURVE keys",
        parts=(
            ("client_secret", options.Opt(kind="path", flag="--curve-client-key", exists=True, dir_okay=False,
                                          help="CURVE: this client's .key_secret file (needs --curve-server-key).")),
            ("server_public", options.Opt(kind="path", flag="--curve-server-key", exists=True, dir_okay=False,
                                          help="CURVE: the server's public .key file.")),
        ))
    transport: str = option("zmq", kind="str", choices=TRANSPORTS,
                            help="How tensors travel: zmq frames, or shared memory (a server on this host).")
    shm_refresh: bool = option(False, kind="bool",
                               help="--transport shm: rewrite the input region before every request.")
    label: str | None = option(None, kind="str", help="A free-text label recorded with the results.")
    profile_dir: Path | None = option(
        None, kind="path", file_okay=False,
        help="Directory ON THE SERVER'S HOST for a torch.profiler trace of the measured window (absolute path; "
             "the server writes it).")

    def __post_init__(self) -> None:
        options.check_fields(self)
        if not self.servers:
            raise ValueError("servers (--server): at least one endpoint is needed")
        self._resolve_defaults()
        self._check_contradictions()

    def _resolve_defaults(self) -> None:
        """Defaults that depend on other options (as the command line has always applied them)."""
        scheduled = check_load_options(self)  # --schedule-file and --ramp-* (client/schedule.py)
        if scheduled is not None and self.num_iters is None:
            object.__setattr__(self, "num_iters", scheduled)
        if self.num_iters is None and self.duration_s is None and self.window_s is None:
            object.__setattr__(self, "num_iters", DEFAULT_NUM_ITERS)
        if self.concurrency is None:
            # Open loop: a default cap of 1 in flight would quietly turn it back into a closed loop.
            object.__setattr__(self, "concurrency", 0 if self.request_rate or self.schedule_file else 1)

    def _check_contradictions(self) -> None:
        if self.num_iters is not None and self.duration_s is not None:
            raise ValueError("num_iters (--num-iters) and duration_s (--duration): give one, not both")
        if self.num_iters is not None and self.num_iters < self.processes:
            raise ValueError(
                f"num_iters (--num-iters) {self.num_iters} is fewer than processes (--processes) {self.processes}:"
                " every process needs a request to send"
            )
        if self.stability_windows > self.max_windows:
            raise ValueError(
                f"stability_windows (--stability-windows) {self.stability_windows} is more than "
                f"max_windows (--max-windows) {self.max_windows}"
            )
        if self.shm_refresh and self.transport != "shm":
            raise ValueError("shm_refresh (--shm-refresh) needs transport (--transport) shm")
        if self.profile_dir is not None and not self.profile_dir.is_absolute():
            raise ValueError(f"profile_dir (--profile-dir) must be an absolute path on the server's host: "
                             f"{str(self.profile_dir)!r}")
        if self.profile_dir is not None and self.processes > 1:
            # One window per server, opened and closed around one measured phase: N processes have N phases.
            raise ValueError("profile_dir (--profile-dir) needs processes (--processes) 1")

    def to_argv(self) -> list[str]:
        """The infer-client arguments that recreate this configuration."""
        return options.to_argv(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["servers"] = list(self.servers)
        d["trace_file"] = str(self.trace_file) if self.trace_file else None
        d["schedule_file"] = str(self.schedule_file) if self.schedule_file else None
        d["profile_dir"] = str(self.profile_dir) if self.profile_dir else None
        d["curve"] = self.curve is not None
        return d

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample of every request: --input-shape, else a [3, S, S] image."""
        return self.input_shape or (3, self.image_size, self.image_size)

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
            ramp_start=None if self.ramp_start is None else (
                self.ramp_start / parts if self.request_rate else max(1, share(int(self.ramp_start)))),
            seed=self.seed + index,
            trace_file=self.trace_file.with_suffix(f".{index}{self.trace_file.suffix}") if self.trace_file else None,
            processes=1,
        )
