"""The wire schema: every message's header as a typed dataclass.

Every key of every header is spelled in this module and nowhere else: producers
build a dataclass and send `to_wire()`, consumers read `from_wire(d)`. Readers
of requests validate (the server trusts nothing); readers of replies only
convert, so the client's hot path is a handful of dict lookups. Unknown keys are
ignored when validating and kept in `extra` where a header has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.protocol.core import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    ProtocolError,
    check_request_id,
    check_timestamps,
)

BREAKDOWN: tuple[str, ...] = ("queue", "decode", "h2d", "compute", "d2h", "encode")
"""The server's stages in order; on the wire each is the key f"{stage}_ns" of RESULT's `server` map."""
MODEL_STAGE = "compute"  # the model itself; the other stages are the server's own work


@dataclass(slots=True)
class ServerTimes:
    """RESULT's `server` map: the server's own durations for one request (ns), and where it ran."""

    queue_ns: int = 0
    decode_ns: int = 0
    h2d_ns: int = 0
    compute_ns: int = 0
    d2h_ns: int = 0
    encode_ns: int = 0
    batch_rows: int = 0
    worker: int = 0

    def to_wire(self) -> dict[str, int]:
        # A literal, not a loop over the fields: this runs once per reply.
        return {"queue_ns": self.queue_ns, "decode_ns": self.decode_ns, "h2d_ns": self.h2d_ns,
                "compute_ns": self.compute_ns, "d2h_ns": self.d2h_ns, "encode_ns": self.encode_ns,
                "batch_rows": self.batch_rows, "worker": self.worker}

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> ServerTimes:
        """Missing keys read as 0; a value that is not a number raises ProtocolError."""
        if not d:
            return cls()
        if not isinstance(d, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"server must be a map, got {type(d).__name__}")
        g = d.get
        try:
            return cls(
                int(g("queue_ns", 0)), int(g("decode_ns", 0)), int(g("h2d_ns", 0)), int(g("compute_ns", 0)),
                int(g("d2h_ns", 0)), int(g("encode_ns", 0)), int(g("batch_rows", 0)), int(g("worker", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"server durations must be integers: {exc}") from None

    def stage_ns(self, stage: str) -> int:
        """Duration of one of BREAKDOWN's stages."""
        return getattr(self, stage + "_ns")

    @property
    def total_ns(self) -> int:
        """The server's time for this request: the sum of the stages."""
        return self.queue_ns + self.decode_ns + self.h2d_ns + self.compute_ns + self.d2h_ns + self.encode_ns


assert tuple(f"{s}_ns" for s in BREAKDOWN) == ServerTimes.__slots__[: len(BREAKDOWN)] and MODEL_STAGE in BREAKDOWN


def read_request_id(d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """A request header's id, checked. The error for an id under a bin key still carries it."""
    request_id = d.get("id")
    if request_id is None and b"id" in d:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "header keys must be MessagePack str, not bin", readable_id(d, limits)
        )
    return check_request_id(request_id, limits)


def readable_id(d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """The id to echo in an ERROR about this header: its id if valid (under a str or bin key), else nil."""
    try:
        return check_request_id(d.get("id", d.get(b"id")), limits)
    except ProtocolError:
        return None


def header_tensors(d: dict[str, Any]) -> Any:
    """The `tensors` list of a header, as sent (nil when absent)."""
    return d.get("tensors")


def with_tensors(d: dict[str, Any], descs: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of header `d` that describes `descs`."""
    return {**d, "tensors": descs}


def tensor_desc(dtype: str, shape: list[int], frame: int = 0) -> dict[str, Any]:
    """One entry of a header's `tensors` list: a tensor whose bytes are frame `frame` after the header."""
    return {"dtype": dtype, "shape": shape, "frame": frame}


def read_tensor_desc(d: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(dtype, shape, frame) of one `tensors` entry, as sent: codec.decode_tensors checks them."""
    return d.get("dtype"), d.get("shape"), d.get("frame")


@dataclass(slots=True)
class InferHeader:
    """INFER's header. `tensors` holds the tensor descriptions ({dtype, shape, frame})."""

    tensors: list[dict[str, Any]]
    id: Any = None
    ts: list[int | float] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "tensors": self.tensors}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> InferHeader:
        """Validate id and ts, and that `tensors` is a list (codec.decode_tensors checks its items).

        An error raised after `ts` was read carries it, so the ERROR reply can echo it.
        """
        request_id = read_request_id(d, limits)
        try:
            ts = check_timestamps(d.get("ts"), limits)
        except ProtocolError as err:
            err.request_id = request_id
            raise
        tensors = d.get("tensors")
        if not isinstance(tensors, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "header field 'tensors' must be a list", request_id, ts)
        return cls(tensors, request_id, ts)

    @classmethod
    def unchecked(cls, d: dict[str, Any]) -> InferHeader:
        """For a reader that trusts its peer and checks nothing (the benchmarks' floor server)."""
        return cls(d["tensors"], d.get("id"), d.get("ts"))


@dataclass(slots=True)
class ResultHeader:
    """RESULT's header: the request's id and ts echoed, the logits' description, the server's times."""

    id: Any
    ts: Any
    tensors: list[dict[str, Any]]
    server: ServerTimes

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "tensors": self.tensors, "server": self.server.to_wire()}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ResultHeader:
        return cls(d.get("id"), d.get("ts"), d.get("tensors") or [], ServerTimes.from_wire(d.get("server")))


MAX_ERROR_MESSAGE = 1000  # characters of an ERROR's message


@dataclass(slots=True)
class ErrorHeader:
    """ERROR's header. `id` whenever the request's id was readable; `ts` echoed for INFER when readable."""

    code: int
    name: str
    message: str
    id: Any = None
    ts: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "name": self.name, "message": self.message, "ts": self.ts}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ErrorHeader:
        """A code that is not an integer reads as INTERNAL; a missing name as the code's name."""
        code = d.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = int(ErrorCode.INTERNAL)
        name = d.get("name")
        if not isinstance(name, str) or not name:
            name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"ERROR_{code}"
        return cls(code, name, str(d.get("message", "")), d.get("id"), d.get("ts"))

    @classmethod
    def from_error(cls, err: ProtocolError) -> ErrorHeader:
        return cls(int(err.code), err.code.name, err.message[:MAX_ERROR_MESSAGE], err.request_id, err.ts)


@dataclass(slots=True)
class IdHeader:
    """HELLO's and STATS's header: only the request id."""

    id: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> IdHeader:
        return cls(read_request_id(d, limits))


HelloHeader = IdHeader
StatsHeader = IdHeader

CONTROL_ACTIONS = ("shutdown", "reload")


@dataclass(slots=True)
class ControlHeader:
    """CONTROL's header: `action` (CONTROL_ACTIONS); `reload` carries `settings` by option name."""

    action: str
    id: Any = None
    settings: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "action": self.action}
        if self.settings is not None:
            d["settings"] = self.settings
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> ControlHeader:
        request_id = read_request_id(d, limits)
        action = d.get("action")
        if not isinstance(action, str) or action not in CONTROL_ACTIONS:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown control action {action!r}", request_id)
        settings = d.get("settings")
        if action == "reload" and not isinstance(settings, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "reload needs a 'settings' map", request_id)
        return cls(action, request_id, settings if action == "reload" else None)


@dataclass(slots=True)
class ControlReplyHeader:
    """CONTROL_REPLY's header; `instance` is the answering process's (a reload's new one differs)."""

    id: Any
    accepted: bool
    instance: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "accepted": self.accepted, "instance": self.instance}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ControlReplyHeader:
        return cls(d.get("id"), bool(d.get("accepted")), d.get("instance"))


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

    received: every message that reached the I/O loop; infer_received: the INFER ones;
    answered: RESULTs sent; errors_sent: ERRORs sent, also counted by code as
    `error_<name in lower case>`; replies_dropped: replies the server could not deliver.
    """

    received: int = 0
    infer_received: int = 0
    answered: int = 0
    errors_sent: int = 0
    replies_dropped: int = 0
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
