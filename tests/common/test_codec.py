"""Codec round trips and rejections (no sockets needed)."""

from __future__ import annotations

import msgpack
import pytest
import torch

from common import codec
from common.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    MsgType,
    ProtocolError,
    check_request_id,
    check_timestamps,
    read_tensor_desc,
)


def roundtrip(*tensors: torch.Tensor) -> codec.Message:
    frames = codec.encode(MsgType.INFER, {"id": 7, "ts": [1, 2]}, tensors)
    return codec.decode([bytes(f) for f in frames])


@pytest.mark.parametrize("dtype", list(codec.TORCH_DTYPES.values()), ids=list(codec.TORCH_DTYPES))
def test_roundtrip_every_allowed_dtype(dtype: torch.dtype) -> None:
    t = (torch.arange(60) % 7).reshape(3, 4, 5).to(dtype)
    msg = roundtrip(t)
    assert msg.msg_type == MsgType.INFER
    assert msg.header["id"] == 7 and msg.header["ts"] == [1, 2]
    (out,) = msg.tensors
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, t)


def test_non_contiguous_input_is_sent_as_its_logical_values() -> None:
    base = torch.randn(4, 6, 8)
    views = [base.transpose(0, 2), base[:, ::2, 1:], base.permute(1, 0, 2)]
    msg = roundtrip(*views)
    for sent, got in zip(views, msg.tensors):
        assert not sent.is_contiguous()
        assert torch.equal(sent, got)


def test_large_and_small_and_empty_tensors() -> None:
    large = torch.randn(8, 3, 250, 250)  # 6 MB, well above ZeroMQ's copy threshold
    small = torch.tensor([1.5])
    empty = torch.empty(0, 3, dtype=torch.int64)
    scalar = torch.tensor(3, dtype=torch.int32)
    msg = roundtrip(large, small, empty, scalar)
    for sent, got in zip((large, small, empty, scalar), msg.tensors):
        assert got.shape == sent.shape and torch.equal(sent, got)


def test_decoded_tensor_is_a_view_of_the_received_buffer() -> None:
    t = torch.randn(64, 64)
    frames = [bytes(f) for f in codec.encode(MsgType.INFER, {"id": 1}, (t,))]
    buf = bytearray(frames[2])
    msg = codec.decode([*frames[:2], buf])
    buf[0:4] = torch.tensor([42.0]).numpy().tobytes()
    assert msg.tensors[0][0, 0].item() == 42.0  # no copy was made


def test_misaligned_buffer_still_decodes() -> None:
    t = torch.arange(16, dtype=torch.float32)
    raw = bytearray(1) + bytearray(t.numpy().tobytes())
    view = memoryview(raw)[1:]
    out = codec.buffer_to_tensor(view, "float32", [16])
    assert torch.equal(out, t)


def _frames(header: object, *tensor_frames: bytes, msg_type: int = MsgType.INFER, version: int = PROTOCOL_VERSION):
    return [bytes((version, msg_type)), msgpack.packb(header), *tensor_frames]


@pytest.mark.parametrize(
    "frames, code, fragment",
    [
        ([b"\x01"], ErrorCode.BAD_REQUEST, "control frame"),
        ([bytes((9, MsgType.INFER)), b"\x80"], ErrorCode.UNSUPPORTED_VERSION, "version 9"),
        ([bytes((PROTOCOL_VERSION, 0x42)), b"\x80"], ErrorCode.BAD_REQUEST, "unknown message type"),
        ([bytes((PROTOCOL_VERSION, MsgType.INFER))], ErrorCode.BAD_REQUEST, "needs a header"),
        ([bytes((PROTOCOL_VERSION, MsgType.INFER)), b"\xc1garbage"], ErrorCode.BAD_REQUEST, "not valid msgpack"),
        (_frames([1, 2, 3]), ErrorCode.BAD_REQUEST, "must be a map"),
        (_frames({"tensors": "x"}), ErrorCode.BAD_REQUEST, "must be a list"),
        (_frames({"tensors": [{"dtype": "float32", "shape": [2], "frame": 0}]}), ErrorCode.BAD_REQUEST, "0 frames"),
        (_frames({"tensors": [{"dtype": "float32", "shape": [3], "frame": 0}]}, b"\x00" * 8), ErrorCode.BAD_REQUEST, "12 bytes"),
        (_frames({"tensors": [{"dtype": "object", "shape": [1], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "not in"),
        (_frames({"tensors": [{"dtype": "__class__", "shape": [1], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "not in"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [-1], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "outside"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [2**62, 2**62], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "outside"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [1] * 9, "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "at most 8"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [1.5], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "integer"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [True], "frame": 0}]}, b"\x00"), ErrorCode.BAD_REQUEST, "integer"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [1], "frame": 3}]}, b"\x00"), ErrorCode.BAD_REQUEST, "frame"),
        (_frames({"tensors": [{"dtype": "uint8", "shape": [1], "frame": 0}] * 2}, b"\x00", b"\x00"), ErrorCode.BAD_REQUEST, "two tensors"),
        (_frames({}, *[b""] * 20), ErrorCode.BAD_REQUEST, "frames, limit"),
    ],
)
def test_malformed_messages_raise_protocol_errors(frames: list, code: ErrorCode, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames)
    assert info.value.code == code
    assert fragment in info.value.message


def test_oversized_header_is_rejected_before_parsing() -> None:
    header = msgpack.packb({"pad": "x" * 100})
    with pytest.raises(ProtocolError, match="limit 64"):
        codec.unpack_header(header, Limits(max_header_bytes=64))


def test_non_string_map_keys_are_rejected_with_the_id_and_ts_they_hold() -> None:
    with pytest.raises(ProtocolError, match="map keys must be MessagePack str, not int") as info:
        codec.unpack_header(msgpack.packb({"id": 3, "ts": [1], "nested": {1: 2}}))
    assert (info.value.request_id, info.value.ts) == (3, [1])
    array_key = b"\x82\xa2id\x03\x92\x01\x02\x03"  # {"id": 3, [1, 2]: 3}: a key msgpack cannot hash
    with pytest.raises(ProtocolError, match="not array") as info:
        codec.unpack_header(array_key)
    assert info.value.request_id == 3


def test_bytes_after_the_header_map_are_rejected_with_its_id() -> None:
    with pytest.raises(ProtocolError, match="2 bytes follow") as info:
        codec.unpack_header(msgpack.packb({"id": "x", "ts": [2.5]}) + b"\x00\x01")
    assert (info.value.request_id, info.value.ts) == ("x", [2.5])
    with pytest.raises(ProtocolError, match="not valid msgpack") as info:
        codec.unpack_header(b"\x01\xc1")  # an int, then garbage: no map to read
    assert info.value.request_id is None


def test_request_id_and_timestamps_are_bounded() -> None:
    assert check_request_id(5) == 5 and check_request_id("abc") == "abc"
    for bad in (True, 1.5, "x" * 65, [1], {"a": 1}):
        with pytest.raises(ProtocolError):
            check_request_id(bad)
    assert check_timestamps([1, 2.5]) == [1, 2.5]
    for bad in ("now", [1] * 17, ["a"], [True]):
        with pytest.raises(ProtocolError):
            check_timestamps(bad)


@pytest.mark.parametrize(
    "shape, dtype, fragment",
    [
        ((2, 3, 64), torch.float32, "rank 3"),
        ((2, 4, 64, 64), torch.float32, "3 channels"),
        ((0, 3, 64, 64), torch.float32, "batch size 0"),
        ((1, 3, 16, 64), torch.float32, "image size"),
        ((1, 3, 64, 64), torch.int64, "not accepted"),
        ((1, 3, 64, 64), torch.float64, "not accepted"),
    ],
)
def test_image_batch_checks(shape: tuple, dtype: torch.dtype, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        codec.check_image_batch(torch.zeros(shape, dtype=dtype))


def test_image_batch_accepts_allowed_inputs() -> None:
    for dtype in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
        codec.check_image_batch(torch.zeros(2, 3, 64, 48, dtype=dtype))


def test_tensor_description_names_its_frame() -> None:
    desc, buf = codec.tensor_to_buffer(torch.zeros(2, 3), frame=1)
    assert read_tensor_desc(desc) == ("float32", [2, 3], 1) and len(buf) == 24
    assert read_tensor_desc(codec.tensor_to_buffer(torch.zeros(1))[0])[2] == 0


def test_a_reply_header_reads_as_unpack_header_reads_it() -> None:
    """codec.unpack_reply (the client's, msgspec) gives what unpack_header gives, and refuses alike."""
    from common.protocol import ResultHeader, ServerTimes, tensor_desc

    header = ResultHeader(7, [1, 2**62], [tensor_desc("float32", [2, 1000])], ServerTimes(compute_ns=5)).to_wire()
    header["extra"] = {"nested": [1.5, None, True, b"raw", "é" * 40]}
    packed = codec.pack(header)
    assert codec.unpack_reply(packed) == codec.unpack_header(packed) == header
    for bad, why in ((b"\xc1", "not valid msgpack"), (codec.pack([1, 2]), "must be a map"),
                     (codec.pack({"x": "y" * 70_000}), "limit")):
        with pytest.raises(ProtocolError, match=why):
            codec.unpack_reply(bad)
        with pytest.raises(ProtocolError, match=why):
            codec.unpack_header(bad)
