"""The inference protocol's wire types (docs/PROTOCOL.md is the normative text).

A message is a ZeroMQ multipart message:

    frame 0  control: 2 bytes, protocol version (u8) then message type (u8)
    frame 1  header:  a msgpack map (absent in the single-frame DEAD message)
    frame 2+ tensors: one raw, C-contiguous buffer per tensor described in the header

The ROUTER socket on the server adds/strips the peer identity frame; it is not
part of the protocol seen by a DEALER client.

`core` holds the framing (message types, error codes, limits, control frames);
`headers`, `status` and `shm_headers` the schema of every header (`status`: INFO
and STATS_REPLY; `shm_headers`: the shared-memory requests), the one place their
keys are spelled. Import any of them from here.
"""

from common.protocol.core import (
    DEAD_FRAME,
    DEFAULT_LIMITS,
    IMAGE_DTYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    WIRE_DTYPES,
    ErrorCode,
    Limits,
    MsgType,
    ProtocolError,
    check_int,
    check_request_id,
    check_timestamps,
    control_frame,
    parse_control,
    readable_ts,
    wire_type,
)
from common.protocol.headers import (
    BREAKDOWN,
    CONTROL_ACTIONS,
    MODEL_STAGE,
    ControlHeader,
    ControlReplyHeader,
    ErrorHeader,
    HelloHeader,
    IdHeader,
    InferHeader,
    ResultHeader,
    ServerTimes,
    StatsHeader,
    header_tensors,
    read_request_id,
    read_shm_ref,
    read_tensor_desc,
    readable_id,
    shm_tensor_desc,
    tensor_desc,
    with_tensors,
)
from common.protocol.shm_headers import (
    SHM_KEY_BYTES,
    ShmRegisteredHeader,
    ShmRegisterHeader,
    ShmUnregisteredHeader,
    ShmUnregisterHeader,
)
from common.protocol.status import (
    BACKPRESSURE_COUNTERS,
    RELOAD_OUTCOMES,
    Backpressure,
    InfoHeader,
    ReloadOutcome,
    ServerCounters,
    ShmInfo,
    ShmUsage,
    StatsReplyHeader,
    backpressure_window,
    error_counter,
)

__all__ = [
    "BACKPRESSURE_COUNTERS", "backpressure_window", "BREAKDOWN", "CONTROL_ACTIONS", "DEAD_FRAME", "SHM_KEY_BYTES", "MODEL_STAGE", "DEFAULT_LIMITS", "IMAGE_DTYPES", "PROTOCOL_VERSION",
    "RELOAD_OUTCOMES", "REQUEST_TYPES", "WIRE_DTYPES", "Backpressure", "ReloadOutcome", "ControlHeader", "ControlReplyHeader", "ErrorCode", "ErrorHeader",
    "HelloHeader", "IdHeader", "InferHeader", "InfoHeader", "Limits", "MsgType", "ProtocolError",
    "ResultHeader", "ServerCounters", "ServerTimes", "ShmInfo", "ShmRegisteredHeader", "ShmRegisterHeader",
    "ShmUnregisteredHeader", "ShmUnregisterHeader", "ShmUsage", "StatsHeader", "StatsReplyHeader",
    "check_int", "check_request_id", "check_timestamps", "control_frame", "parse_control",
    "error_counter", "header_tensors", "read_request_id", "read_shm_ref", "read_tensor_desc", "readable_id", "readable_ts",
    "shm_tensor_desc", "tensor_desc", "wire_type", "with_tensors",
]
