"""Framing of the inference protocol: message types, error codes, limits, control frames.

The frame layout of a message is described in the package docstring (`common.protocol`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PROTOCOL_VERSION = 1

# Message types are single bytes so the control frame can be dispatched without
# decoding anything else (as vLLM's engine core does).


class MsgType(enum.IntEnum):
    # requests (client -> server)
    HELLO = 0x01  # HelloHeader -> INFO
    INFER = 0x02  # InferHeader + tensor frames -> RESULT
    STATS = 0x03  # StatsHeader -> STATS_REPLY
    CONTROL = 0x04  # ControlHeader -> CONTROL_REPLY
    SHM_REGISTER = 0x05  # ShmRegisterHeader -> SHM_REGISTERED
    SHM_UNREGISTER = 0x06  # ShmUnregisterHeader -> SHM_UNREGISTERED
    # replies (server -> client)
    INFO = 0x81  # InfoHeader
    RESULT = 0x82  # ResultHeader + the logits' frame
    STATS_REPLY = 0x83  # StatsReplyHeader
    CONTROL_REPLY = 0x84  # ControlReplyHeader
    SHM_REGISTERED = 0x85  # ShmRegisteredHeader
    SHM_UNREGISTERED = 0x86  # ShmUnregisteredHeader
    ERROR = 0xE0  # ErrorHeader
    DEAD = 0xFF  # single frame: the server is going away and will not answer


REQUEST_TYPES = frozenset({
    MsgType.HELLO, MsgType.INFER, MsgType.STATS, MsgType.CONTROL, MsgType.SHM_REGISTER, MsgType.SHM_UNREGISTER,
})


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    OVERLOADED = 3
    SHUTTING_DOWN = 4
    INTERNAL = 5
    UNAUTHORIZED = 6


# dtype names on the wire -> itemsize. Nothing from the wire is ever used to look
# up an attribute: a name not in this table is rejected.
WIRE_DTYPES: dict[str, int] = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8,
}

# dtypes the image models accept as input. uint8 means raw pixels (0..255) that
# the server converts and normalises on its device.
IMAGE_DTYPES = frozenset({"uint8", "float16", "bfloat16", "float32"})


@dataclass(frozen=True)
class Limits:
    """Size limits on everything read from the wire (documented in PROTOCOL.md)."""

    # ZMQ_MAXMSGSIZE: libzmq drops the peer above it. The largest request the tools send
    # is the seed's batch 256 of float32 [3, 250, 250] (192,000,000 bytes, sweep.py's GPU
    # grid); 256 MiB leaves a third more, and a frame that never ends can hold no more.
    max_frame_bytes: int = 256 << 20
    max_header_bytes: int = 64 * 1024
    max_tensors: int = 8
    max_rank: int = 8
    max_batch: int = 4096
    max_image_side: int = 4096
    max_id_len: int = 64  # bytes/characters of a request id when it is a str/bytes
    max_ts_items: int = 16

    @property
    def max_frames(self) -> int:
        return 2 + self.max_tensors


DEFAULT_LIMITS = Limits()


class ProtocolError(Exception):
    """A message that does not follow the protocol; carries the code to answer with."""

    def __init__(self, code: ErrorCode, message: str, request_id: object = None, ts: object = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # echoed in the ERROR reply: set it whenever it was readable
        self.ts = ts  # the request's ts, echoed likewise

    def echo(self, request_id: object, header: dict, limits: Limits) -> None:
        """Name the request this error answers: its (valid) id, and its ts when valid, unless already set."""
        self.request_id = request_id
        if self.ts is None:
            self.ts = readable_ts(header, limits)


def control_frame(msg_type: MsgType, version: int = PROTOCOL_VERSION) -> bytes:
    return bytes((version, int(msg_type)))


def parse_control(frame: bytes | memoryview) -> tuple[int, MsgType]:
    """Return (version, type) or raise ProtocolError."""
    if len(frame) != 2:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"control frame must be 2 bytes, got {len(frame)}")
    version, raw_type = frame[0], frame[1]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})",
        )
    try:
        return version, MsgType(raw_type)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown message type 0x{raw_type:02x}") from None


DEAD_FRAME = control_frame(MsgType.DEAD)


# -- checks on the fields every request header may carry ------------------------


def check_int(value: object, what: str, lo: int, hi: int) -> int:
    """An integer from the wire within [lo, hi], or ProtocolError BAD_REQUEST naming `what`."""
    # bool is an int in Python; on the wire it is a different type.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} = {value} outside [{lo}, {hi}]")
    return value


def check_request_id(value: object, limits: Limits = DEFAULT_LIMITS) -> object:
    """Request ids are echoed back, so bound them: int, str or bytes of modest size, or nil."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64):
        return value
    if isinstance(value, (str, bytes)) and len(value) <= limits.max_id_len:
        return value
    raise ProtocolError(
        ErrorCode.BAD_REQUEST, f"id must be an integer, or a str/bin of at most {limits.max_id_len} bytes"
    )


_NUMBERS = frozenset({int, float})


def check_timestamps(value: object, limits: Limits = DEFAULT_LIMITS) -> object:
    """The client's timestamps are opaque but echoed, so only numbers in a short list."""
    if value is None:
        return None
    # Types as msgpack decodes them (exact: bool is an int in Python, not on the wire), checked in one pass.
    if type(value) is list and len(value) <= limits.max_ts_items and _NUMBERS.issuperset(map(type, value)):
        return value
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"ts must be a list of at most {limits.max_ts_items} numbers")


def readable_ts(header: dict, limits: Limits = DEFAULT_LIMITS) -> object:
    """The ts to echo in an ERROR about this header: its ts if valid, else nil (whatever else was wrong)."""
    try:
        return check_timestamps(header.get("ts"), limits)
    except ProtocolError:
        return None


_WIRE_TYPES = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", list: "array", tuple: "array",
               dict: "map", type(None): "nil"}


def wire_type(value: object) -> str:
    """The MessagePack type a decoded value came from, for error messages."""
    return _WIRE_TYPES.get(type(value), "ext")

