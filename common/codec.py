"""Encode and decode protocol messages: msgpack headers plus raw tensor frames.

Tensors travel as their raw bytes, one frame each, and are rebuilt on the
receiving side as views over the received buffer (`torch.frombuffer`), so a
request is never copied between the socket and the model's first copy to its
device. No pickle: the header is msgpack with strict limits, and dtypes come
from an allow-list.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgspec
import torch

from common.protocol import (
    DEFAULT_LIMITS,
    IMAGE_DTYPES,
    REQUEST_TYPES,
    WIRE_DTYPES,
    ErrorCode,
    ErrorHeader,
    Limits,
    MsgType,
    ProtocolError,
    check_int,
    control_frame,
    header_tensors,
    parse_control,
    read_request_id,
    read_shm_ref,
    read_tensor_desc,
    readable_id,
    readable_ts,
    tensor_desc,
    wire_type,
    with_tensors,
)

# Decoded tensors are read-only views of the received frame; nothing writes into
# them, so torch's warning about non-writable buffers is noise on the hot path.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
# dtypes whose non-empty tensors torch can view as numpy arrays (numpy has no bfloat16).
_NUMPY_DTYPES = frozenset(TORCH_DTYPES.values()) - {torch.bfloat16}
assert set(TORCH_DTYPES) == set(WIRE_DTYPES)

Buffer = bytes | memoryview
# Resolves a tensor description's shared-memory reference: (region, offset, nbytes,
# dtype name, shape) -> a tensor over those bytes, or ProtocolError for a bad one.
# The server's is its registry, bound to the peer that sent the request.
ShmResolver = Callable[[object, object, int, str, list[int]], torch.Tensor]


@dataclass
class Message:
    """A decoded message: its type, header map and (for INFER/RESULT) tensors."""

    msg_type: MsgType
    header: dict[str, Any]
    tensors: list[torch.Tensor] = field(default_factory=list)


def _as_base_type(obj: object) -> object:
    """What msgpack packs a subclass of a type it knows as (msgspec only takes the exact types)."""
    for base in (str, bytes, bool, int, float, dict, list, tuple):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[call-overload]
    raise TypeError(f"cannot pack an object of type {type(obj).__name__}")


# msgspec writes the same bytes as msgpack.packb(use_bin_type=True) at a third of its cost (a header
# is packed per request and per reply); decoding stays with msgpack, whose strict_map_key refuses the
# integer keys a crafted header could collide in a dict.
_encode = msgspec.msgpack.Encoder(enc_hook=_as_base_type).encode


def pack(header: dict[str, Any]) -> bytes:
    return _encode(header)


def unpack_header(buf: Buffer, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    if len(buf) > limits.max_header_bytes:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"header is {len(buf)} bytes, limit {limits.max_header_bytes}"
        )
    try:
        # Length checked above; msgpack then bounds every container by the buffer size.
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise _undecodable(buf, exc, limits) from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header must be a map, got {type(header).__name__}")
    return header


def _undecodable(buf: Buffer, exc: Exception, limits: Limits) -> ProtocolError:
    """The error for a header the strict decoder refused: with its id and ts when it is a readable map
    after all, whose fault is a key of another type than str or bytes after the map."""
    others: list[str] = []

    def pairs(items: list) -> dict:  # any key type, even an unhashable array or map
        others.extend(wire_type(k) for k, _ in items if k.__class__ is not str)
        return {k: v for k, v in items if isinstance(k, (str, bytes))}

    extra = 0
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=False, object_pairs_hook=pairs)
    except msgpack.ExtraData as trailing:
        header, extra = trailing.unpacked, len(trailing.extra)
    except Exception:
        header = None
    if not isinstance(header, dict) or not (others or extra):
        return ProtocolError(ErrorCode.BAD_REQUEST, f"header is not valid msgpack: {exc}")
    problem = f"map keys must be MessagePack str, not {others[0]}" if others else f"{extra} bytes follow the header map"
    return ProtocolError(ErrorCode.BAD_REQUEST, problem, readable_id(header, limits), readable_ts(header, limits))


_decode_reply = msgspec.msgpack.Decoder().decode


def unpack_reply(buf: Buffer, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A reply's header, as `unpack_header` reads it (the same limit and checks) at half its cost: a
    client reads one per reply. msgspec, which also takes integer keys: harmless here (CPython hashes
    an int to itself, so no set of 64-bit keys collides in a dict), and the server keeps refusing them."""
    if len(buf) > limits.max_header_bytes:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"header is {len(buf)} bytes, limit {limits.max_header_bytes}"
        )
    try:
        header = _decode_reply(buf)
    except Exception as exc:  # DecodeError, or a recursion too deep
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header must be a map, got {type(header).__name__}")
    return header


def tensor_to_buffer(t: torch.Tensor, frame: int = 0) -> tuple[dict[str, Any], memoryview]:
    """Describe a tensor (as sent in frame `frame` after the header) and expose its bytes.

    No copy when the tensor is already contiguous on the CPU.
    """
    dtype = t.dtype
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise TypeError(f"dtype {dtype} cannot be sent; allowed: {sorted(WIRE_DTYPES)}")
    desc = tensor_desc(name, list(t.shape), frame)
    if t.is_cpu and dtype in _NUMPY_DTYPES and t.numel() and t.is_contiguous():
        # The common case in few and cheap calls: every torch call counts at batch 1.
        return desc, memoryview((t.detach() if t.requires_grad else t).numpy()).cast("B")
    # .contiguous() matters: a strided view's buffer would send the wrong bytes.
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    # numpy has no bfloat16: send every dtype as its bytes. The numpy array keeps
    # the tensor's storage alive for as long as ZeroMQ holds the frame.
    raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
    return desc, memoryview(raw.numpy())


def encode(
    msg_type: MsgType, header: dict[str, Any], tensors: Sequence[torch.Tensor] = ()
) -> list[Buffer]:
    """Frames of one message (without any ROUTER identity)."""
    frames: list[Buffer] = [control_frame(msg_type), b""]
    if tensors:
        descs = []
        for i, t in enumerate(tensors):
            desc, buf = tensor_to_buffer(t, i)
            descs.append(desc)
            frames.append(buf)
        header = with_tensors(header, descs)
    frames[1] = pack(header)
    return frames


def error_reply(err: ProtocolError) -> list[Buffer]:
    """The ERROR message answering `err`: its id and ts echoed where they were readable."""
    return [control_frame(MsgType.ERROR), pack(ErrorHeader.from_error(err).to_wire())]


def buffer_to_tensor(buf: Buffer, dtype_name: str, shape: Sequence[int]) -> torch.Tensor:
    """A tensor over buf's bytes (a copy only if buf is misaligned for the dtype).

    The caller has checked that len(buf) is the product of shape times the itemsize.
    """
    dtype = TORCH_DTYPES[dtype_name]
    if len(buf) == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    t = torch.frombuffer(buf, dtype=dtype)
    if t.data_ptr() % WIRE_DTYPES[dtype_name]:
        # ZeroMQ may hand us a buffer at any offset; keep typed access aligned.
        t = torch.frombuffer(buf, dtype=torch.uint8).clone().view(dtype)
    # Dimensions as arguments: torch parses a list argument at about twice the cost.
    return t.view(*shape) if shape else t.view(())


def decode_tensors(
    descs: object, frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS, resolve_shm: ShmResolver | None = None
) -> list[torch.Tensor]:
    """Rebuild the tensors a header's `tensors` list describes from the frames after the header.

    A description with `shm` instead of `frame` is resolved by `resolve_shm`;
    without one (a reply, or a server that offers no shared memory) it is refused.
    """
    if not isinstance(descs, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header field 'tensors' must be a list")
    if len(descs) > limits.max_tensors:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{len(descs)} tensors, limit {limits.max_tensors}")
    used: set[int] = set()
    tensors = []
    for i, desc in enumerate(descs):
        if not isinstance(desc, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"tensors[{i}] must be a map")
        dtype_name, shape, frame = read_tensor_desc(desc)
        if not isinstance(dtype_name, str) or dtype_name not in WIRE_DTYPES:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"tensors[{i}].dtype {dtype_name!r} not in {sorted(WIRE_DTYPES)}"
            )
        if not isinstance(shape, list) or len(shape) > limits.max_rank:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"tensors[{i}].shape must be a list of at most {limits.max_rank} ints"
            )
        dims = [check_int(d, f"tensors[{i}].shape[{j}]", 0, limits.max_frame_bytes) for j, d in enumerate(shape)]
        nbytes = math.prod(dims) * WIRE_DTYPES[dtype_name]
        ref = read_shm_ref(desc)
        if ref is not None:
            tensors.append(_shm_tensor(i, ref, frame, nbytes, dtype_name, dims, resolve_shm))
            continue
        index = check_int(frame, f"tensors[{i}].frame", 0, limits.max_frames)
        if index >= len(frames):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"tensors[{i}].frame = {index} but {len(frames)} frames follow the header"
            )
        if index in used:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {index} is used by two tensors")
        used.add(index)
        got = len(frames[index])
        if nbytes != got:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"tensors[{i}] declares {dtype_name}{dims} = {nbytes} bytes but its frame has {got}",
            )
        tensors.append(buffer_to_tensor(frames[index], dtype_name, dims))
    if len(used) != len(frames):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"header describes {len(used)} tensors in frames but {len(frames)} frames follow"
        )
    return tensors


def _shm_tensor(
    i: int, ref: tuple, frame: object, nbytes: int, dtype_name: str, dims: list[int], resolve: ShmResolver | None
) -> torch.Tensor:
    """tensors[i], whose bytes are in shared memory: the description checked, the bounds left to `resolve`."""
    if frame is not None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"tensors[{i}] names both a frame and shm")
    if resolve is None:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"tensors[{i}] is in shared memory, which this server does not accept"
        )
    region, offset, declared = ref
    check_int(declared, f"tensors[{i}].shm.nbytes", 0, 2**63 - 1)
    if declared != nbytes:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"tensors[{i}] declares {dtype_name}{dims} = {nbytes} bytes but shm.nbytes is {declared}",
        )
    try:
        return resolve(region, offset, nbytes, dtype_name, dims)
    except ProtocolError as err:
        err.message = f"tensors[{i}].shm: {err.message}"
        raise


# The control frames of valid requests: one dict lookup checks length, version and type.
_REQUEST_CONTROLS = {control_frame(t): t for t in REQUEST_TYPES}


def _message_type(frames: Sequence[Buffer], limits: Limits) -> MsgType:
    """The checks every message passes before its header is read: frame count, control frame."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message")
    if len(frames) > limits.max_frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{len(frames)} frames, limit {limits.max_frames}")
    control = bytes(frames[0])
    msg_type = _REQUEST_CONTROLS.get(control)
    return msg_type if msg_type is not None else parse_control(control)[1]


def _needs_header(frames: Sequence[Buffer], msg_type: MsgType) -> None:
    if len(frames) < 2:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{msg_type.name} needs a header frame")


def parse_request(
    frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS
) -> tuple[MsgType, dict[str, Any], object]:
    """Check a request's prefix: frame count, control frame, request type, header, id.

    Returns (type, header, id). Frames may be bytes, memoryviews or zmq.Frames.
    A ProtocolError carries the request's id whenever the header could be decoded
    and the id in it is valid, so even an UNSUPPORTED_VERSION reply names the
    request it answers.
    """
    # A valid request's prefix in one lookup: a header frame, not too many frames, a request's control frame.
    msg_type = _REQUEST_CONTROLS.get(bytes(frames[0])) if 2 <= len(frames) <= limits.max_frames else None
    if msg_type is None:
        try:
            msg_type = _message_type(frames, limits)
            if msg_type not in REQUEST_TYPES:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"{msg_type.name} is not a request type")
            _needs_header(frames, msg_type)
        except ProtocolError as err:
            err.request_id, err.ts = _readable_fields(frames, limits)
            raise
    header = unpack_header(frames[1], limits)
    return msg_type, header, read_request_id(header, limits)


def _readable_fields(frames: Sequence[Buffer], limits: Limits) -> tuple[object, object]:
    """The id and ts of a request refused before its header was read, each if the header holds a valid one."""
    if len(frames) < 2:
        return None, None
    try:
        header = unpack_header(frames[1], limits)
    except ProtocolError as err:  # a map with a bad key or trailing bytes still names its id and ts
        return err.request_id, err.ts
    return readable_id(header, limits), readable_ts(header, limits)


def decode(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode a whole message of any type, tensors included (what a DEALER receives)."""
    msg_type = _message_type(frames, limits)
    if msg_type == MsgType.DEAD:
        return Message(msg_type, {})
    _needs_header(frames, msg_type)
    header = unpack_header(frames[1], limits)
    descs = header_tensors(header)
    try:
        tensors = decode_tensors(descs, frames[2:], limits) if descs is not None or len(frames) > 2 else []
    except ProtocolError as exc:
        exc.request_id = readable_id(header, limits)
        raise
    return Message(msg_type, header, tensors)


def check_image_batch(t: torch.Tensor, limits: Limits = DEFAULT_LIMITS) -> None:
    """An image model's input: [B, 3, H, W] of an image dtype, within the size limits."""
    name = DTYPE_NAMES[t.dtype]
    if name not in IMAGE_DTYPES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"input dtype {name} not accepted; use one of {sorted(IMAGE_DTYPES)}")
    if t.dim() != 4:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"input must be [B, 3, H, W], got rank {t.dim()}")
    b, c, h, w = t.shape
    if c != 3:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"input must have 3 channels, got {c}")
    if not 1 <= b <= limits.max_batch:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"batch size {b} outside [1, {limits.max_batch}]")
    # ResNet's stem and pools need a few pixels to produce a feature map at all.
    if not (32 <= h <= limits.max_image_side and 32 <= w <= limits.max_image_side):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"image size {h}x{w} outside [32, {limits.max_image_side}]"
        )
