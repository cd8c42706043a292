"""The wire schema: every message's header as a typed dataclass.

Every key of every header is spelled in this module and nowhere else: producers
build a dataclass and send `to_wire()`, consumers read `from_wire(d)`. Readers
of requests validate (the server trusts nothing); readers of replies only
convert, so the client's hot path is a handful of dict lookups. Unknown keys are
ignored when validating and kept in `extra` where a header has one. INFO's and
STATS_REPLY's headers are in the sibling module `status`, the shared-memory
requests' in `shm_headers`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from common.protocol.core import (
    DEFAULT_LIMITS,
    ErrorCode,
    Limits,
    ProtocolError,
    check_request_id,
    check_timestamps,
    readable_ts,
    wire_type,
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
        return self.wire(self.queue_ns, self.decode_ns, self.h2d_ns, self.compute_ns, self.d2h_ns, self.encode_ns,
                         self.batch_rows, self.worker)

    @staticmethod
    def wire(queue_ns: int, decode_ns: int, h2d_ns: int, compute_ns: int, d2h_ns: int, encode_ns: int,
             batch_rows: int, worker: int) -> dict[str, int]:
        """`to_wire` without the object: a server builds one per reply."""
        # A literal, not a loop over the fields: this runs once per reply.
        return {"queue_ns": queue_ns, "decode_ns": decode_ns, "h2d_ns": h2d_ns, "compute_ns": compute_ns,
                "d2h_ns": d2h_ns, "encode_ns": encode_ns, "batch_rows": batch_rows, "worker": worker}

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
        return _STAGE_GETTERS[stage](self)  # a client reads six per reply: no name built each time

    @property
    def total_ns(self) -> int:
        """The server's time for this request: the sum of the stages."""
        return self.queue_ns + self.decode_ns + self.h2d_ns + self.compute_ns + self.d2h_ns + self.encode_ns


assert tuple(f"{s}_ns" for s in BREAKDOWN) == ServerTimes.__slots__[: len(BREAKDOWN)] and MODEL_STAGE in BREAKDOWN
_STAGE_GETTERS = {stage: operator.attrgetter(f"{stage}_ns") for stage in BREAKDOWN}


_UNREAD: Any = object()  # a request id not read yet


def read_request_id(d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Any:
    """A request header's id, checked, and its keys: all str. An error carries the id and ts it could read
    (an id under a bin key included)."""
    for key in d:
        if key.__class__ is not str:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"map keys must be MessagePack str, not {wire_type(key)}",
                                readable_id(d, limits), readable_ts(d, limits))
    try:
        return check_request_id(d.get("id"), limits)
    except ProtocolError as err:
        err.ts = readable_ts(d, limits)
        raise


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


def shm_tensor_desc(dtype: str, shape: list[int], region: int, offset: int, nbytes: int) -> dict[str, Any]:
    """A `tensors` entry whose bytes are [offset, offset + nbytes) of shared-memory region `region`
    (the handle SHM_REGISTERED returned), instead of a frame."""
    return {"dtype": dtype, "shape": shape, "shm": {"region": region, "offset": offset, "nbytes": nbytes}}


def read_shm_ref(d: dict[str, Any]) -> tuple[Any, Any, Any] | None:
    """(region, offset, nbytes) of a `tensors` entry in shared memory, as sent; None for one in a frame."""
    ref = d.get("shm")
    if ref is None:
        return None
    if not isinstance(ref, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a tensor's 'shm' must be a map {region, offset, nbytes}")
    return ref.get("region"), ref.get("offset"), ref.get("nbytes")


@dataclass(slots=True)
class InferHeader:
    """INFER's header. `tensors` holds the tensor descriptions ({dtype, shape, frame} or {dtype, shape, shm})."""

    tensors: list[dict[str, Any]]
    id: Any = None
    ts: list[int | float] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "tensors": self.tensors}

    @classmethod
    def from_wire(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS, request_id: Any = _UNREAD) -> InferHeader:
        """Validate id and ts, and that `tensors` is a list (codec.decode_tensors checks its items).

        `request_id`: the id as `read_request_id` returned it, when the caller has read it already.
        An error raised after `ts` was read carries it, so the ERROR reply can echo it.
        """
        if request_id is _UNREAD:
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
        return self.wire(self.id, self.ts, self.tensors, self.server.to_wire())

    @staticmethod
    def wire(request_id: Any, ts: Any, tensors: list[dict[str, Any]], server: dict[str, int]) -> dict[str, Any]:
        """`to_wire` without the objects (`server` as ServerTimes.wire gives it): a server builds one per reply."""
        return {"id": request_id, "ts": ts, "tensors": tensors, "server": server}

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

CONTROL_ACTIONS = ("shutdown", "reload", "profile_start", "profile_stop")
MAX_PROFILE_DIR = 4096  # characters of profile_start's `dir`


@dataclass(slots=True)
class ControlHeader:
    """CONTROL's header: `action` (CONTROL_ACTIONS); `reload` carries `settings` by option name,
    `profile_start` the server-side `dir` its trace is written to."""

    action: str
    id: Any = None
    settings: dict[str, Any] | None = None
    dir: str | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "action": self.action}
        if self.settings is not None:
            d["settings"] = self.settings
        if self.dir is not None:
            d["dir"] = self.dir
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
        directory = d.get("dir") if action == "profile_start" else None
        if action == "profile_start" and not (isinstance(directory, str) and 0 < len(directory) <= MAX_PROFILE_DIR):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"profile_start needs 'dir', a path of 1 to "
                                f"{MAX_PROFILE_DIR} characters", request_id)
        return cls(action, request_id, settings if action == "reload" else None, directory)


@dataclass(slots=True)
class ControlReplyHeader:
    """CONTROL_REPLY's header; `instance` is the answering process's (a reload's new one differs);
    `trace` the path profile_stop wrote (in its reply only)."""

    id: Any
    accepted: bool
    instance: str | None = None
    trace: str | None = None

    def to_wire(self) -> dict[str, Any]:
        d = {"id": self.id, "accepted": self.accepted, "instance": self.instance}
        if self.trace is not None:  # profile_stop's only: the other replies keep their three keys
            d["trace"] = self.trace
        return d

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ControlReplyHeader:
        trace = d.get("trace")
        return cls(d.get("id"), bool(d.get("accepted")), d.get("instance"), trace if isinstance(trace, str) else None)
