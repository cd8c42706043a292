"""The schema of what the server says about itself: INFO (reply to HELLO) and STATS_REPLY.

A sibling of `headers`, with the same rule: every key of these headers is spelled
here and nowhere else. Both replies may grow keys in later versions; readers keep
the ones they do not know in `extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.protocol.core import PROTOCOL_VERSION, ErrorCode


def _split(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for a dataclass with an `extra` field: known keys, the rest in `extra`."""
    names = cls.__slots__
    known = {k: v for k, v in d.items() if k in names and k != "extra"}
    known["extra"] = {k: v for k, v in d.items() if k not in names}
    return known


@dataclass(slots=True)
class InfoHeader:
    """INFO's header: what the server is, how it is set up, how long it took to start.

    `config` maps every server setting by option name; `extra` carries keys this
    version does not name (sent as they are, kept when read).
    """

    id: Any = None
    protocol_version: int = PROTOCOL_VERSION
    server_version: str | None = None
    instance: str | None = None
    state: str | None = None  # "ready" or "draining"
    model: str | None = None
    model_source: str | None = None
    device: str | None = None
    device_name: str | None = None
    gpu_uuid: str | None = None
    compile: bool | None = None
    compile_mode: str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    num_workers: int | None = None
    max_batch_size: int | None = None
    batch_timeout_us: int | None = None
    max_inflight: int | None = None
    max_frame_bytes: int | None = None
    max_frames: int | None = None
    warmup_batch_sizes: list[int] | None = None
    torch_version: str | None = None
    cuda_version: str | None = None
    torch_threads: int | None = None
    torch_load_time: float | None = None
    m_compile_time: float | None = None
    startup_s: float | None = None
    endpoints: list[str] | None = None
    hostname: str | None = None
    pid: int | None = None
    config: dict[str, Any] | None = None
    thread_split: dict[str, Any] | None = None  # how --threads was divided among the prediction threads
    backend: dict[str, Any] | None = None  # numerics flags and library versions (TF32, cuDNN, ...)
    warmup_first_call_s: list[dict[str, float]] | None = None  # per prediction thread: shape -> seconds
    input_shape: list[int | None] | None = None  # one sample's shape [C, H, W]; nil where any size goes
    input_min_side: int | None = None  # the smallest side a nil dimension takes
    input_dtypes: list[str] | None = None  # the input dtypes the model takes
    shm: dict[str, Any] | None = None  # ShmInfo.to_wire(), or nil: shared memory is not offered
    last_reload: dict[str, Any] | None = None  # ReloadOutcome.to_wire(): how this process came to run
    # The GPU's driver, CUDA, power limit, persistence/MIG/ECC modes, clocks and the CPU governor
    # (common/gpu_env.py); nil when the server watches no GPU.
    gpu_environment: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _INFO_KEYS}
        d.update(self.extra)
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> InfoHeader:
        return cls(**_split(cls, d))

    @classmethod
    def from_fields(cls, request_id: Any, fields: dict[str, Any]) -> InfoHeader:
        """From the server's description (a map of INFO keys), answering request `request_id`."""
        return cls(**{**_split(cls, fields), "id": request_id})


_INFO_KEYS = tuple(name for name in InfoHeader.__slots__ if name != "extra")


@dataclass(slots=True)
class ServerCounters:
    """STATS_REPLY's `counters`: monotonically increasing counts since the process started.

    docs/PROTOCOL.md defines each one and the invariants they keep (every message
    gets one reply; every accepted INFER is answered, refused or still in flight).
    Everything is counted by the I/O thread, so one STATS reads a consistent set.
    """

    received: int = 0  # every message that reached the I/O loop
    infer_received: int = 0  # INFERs whose prefix (control frame, frame count, header, id) was valid
    answered: int = 0  # RESULTs handed to libzmq
    errors_sent: int = 0  # ERRORs handed to libzmq, to any request; also by code, `error_<name>`
    infer_errors: int = 0  # the ERRORs among them that answer an INFER counted in infer_received
    replies_other: int = 0  # INFO, STATS_REPLY, CONTROL_REPLY, SHM_REGISTERED, SHM_UNREGISTERED
    replies_dropped: int = 0  # replies libzmq would not take: the sum of the three causes below
    replies_dropped_gone: int = 0  # EHOSTUNREACH: the peer's connection is gone
    replies_dropped_hwm: int = 0  # EAGAIN: the peer's queue is at SNDHWM messages
    replies_dropped_bytes: int = 0  # the peer's queued replies are at --max-queued-reply-bytes
    send_blocked: int = 0  # episodes of a peer's queue refusing replies (HWM or bytes)
    send_blocked_ns: int = 0  # their total duration, the open ones up to this STATS
    peers_connected: int = 0  # connections accepted (socket monitor)
    peers_disconnected: int = 0  # connections closed, by either side, for any reason
    handshakes_failed: int = 0  # connections whose ZMTP or CURVE handshake failed
    shm_infer_received: int = 0
    shm_registered: int = 0
    shm_unregistered: int = 0
    shm_peers_released: int = 0
    errors: dict[ErrorCode, int] = field(default_factory=lambda: dict.fromkeys(ErrorCode, 0))

    def to_wire(self) -> dict[str, int]:
        d = {name: getattr(self, name) for name in _COUNTER_KEYS}
        d.update({error_counter(code): n for code, n in self.errors.items()})
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> ServerCounters:
        d = d or {}
        errors = {code: int(d.get(error_counter(code), 0)) for code in ErrorCode}
        return cls(**{name: int(d.get(name, 0)) for name in _COUNTER_KEYS}, errors=errors)


def error_counter(code: ErrorCode) -> str:
    """The name under which STATS counts the ERRORs sent with `code`."""
    return f"error_{code.name.lower()}"


_COUNTER_KEYS = tuple(name for name in ServerCounters.__slots__ if name != "errors")


@dataclass(slots=True)
class StatsReplyHeader:
    """STATS_REPLY's header: counters, the process's CPU and memory, the device's GPU figures."""

    id: Any = None
    counters: ServerCounters = field(default_factory=ServerCounters)
    inflight: int = 0
    inflight_peak: int = 0
    inflight_bytes: int = 0  # input bytes of the requests in flight (against --max-inflight-bytes)
    workers_busy: int = 0  # prediction threads running a job now
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    rss_bytes: int = 0
    uptime_s: float = 0.0
    mono_ns: int = 0
    gpu: dict[str, Any] | None = None
    gpu_source: str = "unavailable"
    gpu_reason: str | None = None
    first_call_s: dict[str, float] = field(default_factory=dict)
    compiled_graphs: int = 0
    shm: dict[str, Any] | None = None  # ShmUsage.to_wire(), or nil: shared memory is not offered
    backpressure: dict[str, int] | None = None  # Backpressure.to_wire(): the reply queues now
    last_reload: dict[str, Any] | None = None  # as in INFO
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _STATS_KEYS}
        d["counters"] = self.counters.to_wire()
        d.update(self.extra)
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> StatsReplyHeader:
        kwargs = _split(cls, d)
        kwargs["counters"] = ServerCounters.from_wire(kwargs.get("counters"))
        return cls(**kwargs)


_STATS_KEYS = tuple(name for name in StatsReplyHeader.__slots__ if name != "extra")


@dataclass(slots=True)
class ShmInfo:
    """INFO's `shm`: where the server's /dev/shm is (common.shm.host_identity) and its region limits."""

    hostname: str | None = None
    boot_id: str | None = None
    shm_dev: int | None = None
    limits: dict[str, int] = field(default_factory=dict)  # the ShmLimits fields by name
    pinned: bool = False  # regions are page-locked for the device (a CUDA server)

    def to_wire(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "boot_id": self.boot_id, "shm_dev": self.shm_dev,
                "limits": self.limits, "pinned": self.pinned}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ShmInfo:
        return cls(d.get("hostname"), d.get("boot_id"), d.get("shm_dev"), d.get("limits") or {},
                   bool(d.get("pinned")))


@dataclass(slots=True)
class ShmUsage:
    """STATS_REPLY's `shm`: the regions attached now (gauges, unlike the counters)."""

    regions: int = 0
    peers: int = 0
    mapped_bytes: int = 0  # released regions still read by a request in flight included
    pinned_regions: int = 0

    def to_wire(self) -> dict[str, int]:
        return {"regions": self.regions, "peers": self.peers, "mapped_bytes": self.mapped_bytes,
                "pinned_regions": self.pinned_regions}

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> ShmUsage:
        d = d or {}
        return cls(int(d.get("regions", 0)), int(d.get("peers", 0)), int(d.get("mapped_bytes", 0)),
                   int(d.get("pinned_regions", 0)))


@dataclass(slots=True)
class Backpressure:
    """STATS_REPLY's `backpressure`: the state of the replies queued in libzmq now (gauges)."""

    connections: int = 0  # open now: peers_connected - peers_disconnected
    blocked_peers: int = 0  # peers whose last reply was refused because their queue was full
    queued_reply_bytes: int = 0  # bytes of large replies handed to libzmq and not yet written out
    queued_reply_peers: int = 0  # peers those bytes belong to
    queued_reply_bytes_peak: int = 0  # the most one peer has had queued since the start
    max_queued_reply_bytes: int = 0  # the per-peer budget (--max-queued-reply-bytes)

    def to_wire(self) -> dict[str, int]:
        return {"connections": self.connections, "blocked_peers": self.blocked_peers,
                "queued_reply_bytes": self.queued_reply_bytes, "queued_reply_peers": self.queued_reply_peers,
                "queued_reply_bytes_peak": self.queued_reply_bytes_peak,
                "max_queued_reply_bytes": self.max_queued_reply_bytes}

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> Backpressure:
        d = d or {}
        return cls(**{name: int(d.get(name, 0)) for name in cls.__slots__})


RELOAD_OUTCOMES = ("applied", "failed")


@dataclass(slots=True)
class ReloadOutcome:
    """INFO's and STATS_REPLY's `last_reload`: what became of the CONTROL reload this process follows.

    `applied`: this process runs the new settings. `failed`: the process that was to
    run them did not become ready (`reason` says why) and this one runs the settings
    from before the reload. `accepted_by` is the instance whose CONTROL_REPLY accepted it.
    """

    outcome: str
    settings: dict[str, Any]
    accepted_by: str | None = None
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "settings": self.settings, "accepted_by": self.accepted_by,
                "reason": self.reason}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ReloadOutcome:
        return cls(str(d.get("outcome")), dict(d.get("settings") or {}), d.get("accepted_by"), d.get("reason"))


BACKPRESSURE_COUNTERS = (
    "replies_dropped", "replies_dropped_gone", "replies_dropped_hwm", "replies_dropped_bytes", "send_blocked",
    "send_blocked_ns", "peers_connected", "peers_disconnected", "handshakes_failed",
)


def backpressure_window(first: StatsReplyHeader | None, last: StatsReplyHeader | None) -> dict[str, int] | None:
    """How much each of BACKPRESSURE_COUNTERS grew between two STATS of one server process (a run's
    window); None when either is missing or the process changed in between (a restart or reload)."""
    if first is None or last is None or last.uptime_s < first.uptime_s:
        return None
    return {name: getattr(last.counters, name) - getattr(first.counters, name) for name in BACKPRESSURE_COUNTERS}
