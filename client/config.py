"""What an infer-client run is configured with: one frozen object that validates itself.

Each option is declared once, as a field below; the click command (client/cli.py)
and `to_argv` derive from these fields. Whoever builds a ClientConfig (the CLI,
sweep.py, the benchmarks, tests) gets the same checks, contradictions included:
ValueError naming the options.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
        None, kind="int", min=0, show_default="1 (in a fleet: 1 per rank); with --request-rate 0",
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
                            help="Client processes sharing the load, started together; their histograms are merged "
                                 "exactly.")
    rank: int | None = option(
        None, kind="int", min=0, show_default="from the launcher's environment (docs/distributed.md)",
        help="This client's rank in a fleet of client hosts started together (rank 0 coordinates and reports).")
    world_size: int | None = option(
        None, kind="int", min=1, show_default="from the launcher's environment",
        help="Client ranks in the fleet, rank 0 included (a Kubernetes Indexed Job needs it given).")
    coordinator: str | None = option(
        None, kind="str", endpoint="connect", show_default="MASTER_ADDR:MASTER_PORT, or Slurm's first node",
        help="tcp://HOST:PORT where rank 0 binds the fleet's rendezvous: HOST is rank 0's host, as the other "
             "ranks reach it.")
    fleet_timeout_s: float = option(
        60.0, kind="float", flag="--fleet-timeout", min=0, min_open=True,
        help="Seconds for every rank to arrive at the rendezvous: a rank missing then is named, nothing is measured.")
    fleet_curve_dir: Path | None = option(
        None, kind="path", file_okay=False, exists=True,
        help="CURVE for the rendezvous: an infer-keygen directory (rank 0 reads server.key_secret and "
             "authorized_clients/, the others client.key_secret and server.key).")
    load_per_rank: bool = option(
        False, kind="bool",
        help="In a fleet, --num-iters, --request-rate, --concurrency and --ramp-start are each rank's, not the "
             "fleet's total split across the ranks.")
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
            # A fleet's default is one in flight per rank.
            ranks = self.world_size if self.world_size and self.rank is not None and not self.load_per_rank else 1
            object.__setattr__(self, "concurrency", 0 if self.request_rate or self.schedule_file else ranks)

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
        self._check_fleet()

    def _check_fleet(self) -> None:
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("rank (--rank) and world_size (--world-size) go together")
        if self.rank is None or self.world_size is None:
            return
        if self.rank >= self.world_size:
            raise ValueError(f"rank (--rank) {self.rank} is not below world_size (--world-size) {self.world_size}")
        if self.world_size == 1:
            return
        if self.coordinator is None:
            raise ValueError(f"a fleet of {self.world_size} ranks needs coordinator (--coordinator tcp://HOST:PORT),"
                             " the address where rank 0 listens")
        if not self.coordinator.startswith(("tcp://", "ipc://")):
            raise ValueError(f"coordinator (--coordinator): {self.coordinator!r} is not tcp://HOST:PORT")
        for name, flag, given in (("processes", "--processes", self.processes > 1),
                                  ("profile_dir", "--profile-dir", self.profile_dir is not None),
                                  ("schedule_file", "--schedule-file", self.schedule_file is not None)):
            if given:
                raise ValueError(f"{name} ({flag}) cannot go with a fleet of ranks (world_size {self.world_size})")
        if self.load_per_rank:
            return
        for name, flag, total in (("num_iters", "--num-iters", self.num_iters),
                                  ("concurrency", "--concurrency", self.concurrency)):
            if total and total < self.world_size:
                raise ValueError(f"{name} ({flag}) {total} is the fleet's total, fewer than its {self.world_size}"
                                 " ranks: give at least one per rank, or --load-per-rank")

    def to_argv(self) -> list[str]:
        """The infer-client arguments that recreate this configuration."""
        return options.to_argv(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["servers"] = list(self.servers)
        d["trace_file"] = str(self.trace_file) if self.trace_file else None
        d["schedule_file"] = str(self.schedule_file) if self.schedule_file else None
        d["profile_dir"] = str(self.profile_dir) if self.profile_dir else None
        d["fleet_curve_dir"] = str(self.fleet_curve_dir) if self.fleet_curve_dir else None
        d["curve"] = self.curve is not None
        return d

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample of every request: --input-shape, else a [3, S, S] image."""
        return self.input_shape or (3, self.image_size, self.image_size)

    @property
    def run_until_stable(self) -> bool:
        return bool(self.window_s) and self.num_iters is None and self.duration_s is None

    @property
    def is_fleet(self) -> bool:
        """One rank of several client processes started together by a launcher (client/fleet.py)."""
        return self.world_size is not None and self.world_size > 1

    def part(self, index: int, parts: int, name: str | None = None, split: bool = True) -> ClientConfig:
        """The configuration client process (or rank) `index` of `parts` runs.

        Split: request counts, concurrency and a closed loop's ramp start are divided in whole
        requests, the first `total % parts` parts taking one more; rates are divided evenly.
        Each part has its own seed (`part_seed`) and trace file (`name`, else the index, before
        the suffix). The part is a plain single-process run: no fleet options.
        """

        def share(total: int) -> int:
            return total // parts + (1 if index < total % parts else 0)

        trace = self.trace_file
        changes: dict[str, Any] = {
            "seed": part_seed(self.seed, index),
            "trace_file": trace.with_suffix(f".{name or index}{trace.suffix}") if trace else None,
            "processes": 1, "rank": None, "world_size": None, "coordinator": None, "load_per_rank": False,
        }
        if split:
            changes.update(
                num_iters=share(self.num_iters) if self.num_iters is not None else None,
                request_rate=self.request_rate / parts if self.request_rate else None,
                concurrency=max(1, share(self.concurrency)) if self.concurrency else 0,
                ramp_start=None if self.ramp_start is None else (
                    self.ramp_start / parts if self.request_rate else max(1, share(int(self.ramp_start)))),
            )
        return dataclasses.replace(self, **changes)

    def rank_part(self) -> ClientConfig:
        """What this fleet rank runs: its share of the fleet's load (or the whole of it, --load-per-rank)."""
        assert self.rank is not None and self.world_size is not None
        return self.part(self.rank, self.world_size, name=f"rank{self.rank}", split=not self.load_per_rank)


def part_seed(seed: int, index: int) -> int:
    """Part `index`'s seed: the run's own for part 0 (a fleet of one is a plain run), else a hash of both, so
    that no part of one run repeats another run's arrivals (as seed + index would for the next seed)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")
