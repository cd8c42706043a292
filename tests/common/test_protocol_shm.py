"""The shared-memory additions to the protocol: their schema, the codec's references, and the document."""

from __future__ import annotations

import pytest
import torch

from common import codec
from common import protocol as p
from tests.support import PROTOCOL_DOC, undocumented

KEY = b"k" * p.SHM_KEY_BYTES[0]


def test_every_shm_key_and_type_is_documented() -> None:
    headers = [
        p.ShmRegisterHeader("/infer-x", 4096, KEY, 1, 2).to_wire(),
        p.ShmRegisteredHeader(1, 1, 4096, False).to_wire(),
        p.ShmUnregisterHeader(1, handle=1).to_wire(),
        p.ShmUnregisterHeader(1, all_regions=True).to_wire(),
        p.ShmUnregisteredHeader(1, 1).to_wire(),
        p.shm_tensor_desc("uint8", [1], 1, 0, 1),
        p.shm_tensor_desc("uint8", [1], 1, 0, 1)["shm"],
        p.ShmInfo().to_wire(),
        p.ShmUsage().to_wire(),
        p.InfoHeader().to_wire(),
        p.StatsReplyHeader().to_wire(),
        p.ServerCounters().to_wire(),
    ]
    keys = {key for header in headers for key in header}
    keys |= {"max_regions_per_peer", "max_regions", "max_bytes_per_peer", "max_bytes"}  # ShmLimits' fields
    assert undocumented(keys) == []
    for t in (p.MsgType.SHM_REGISTER, p.MsgType.SHM_UNREGISTER, p.MsgType.SHM_REGISTERED, p.MsgType.SHM_UNREGISTERED):
        assert f"| {t.name} | `0x{int(t):02x}` |" in PROTOCOL_DOC


def test_register_header_round_trips_and_checks_its_fields() -> None:
    header = p.ShmRegisterHeader("/infer-x", 8192, KEY, "r1", 42)
    assert p.ShmRegisterHeader.from_wire(header.to_wire()) == header
    wire = header.to_wire()
    for bad, fragment in [
        ({"name": 7}, "name"), ({"name": ""}, "name"), ({"size": True}, "size"), ({"size": 0}, "size"),
        ({"key": "text"}, "key"), ({"key": b"short"}, "key"), ({"key": b"k" * 65}, "key"),
        ({"pid": 0}, "pid"), ({"pid": 1.5}, "pid"),
    ]:
        with pytest.raises(p.ProtocolError) as info:
            p.ShmRegisterHeader.from_wire({**wire, **bad})
        assert info.value.code == p.ErrorCode.BAD_REQUEST and fragment in info.value.message
    small = p.ShmRegisterHeader("/infer-x", 20, b"k" * 21).to_wire()  # a key longer than the region
    with pytest.raises(p.ProtocolError, match="key"):
        p.ShmRegisterHeader.from_wire(small)


def test_unregister_names_one_region_or_all() -> None:
    assert p.ShmUnregisterHeader.from_wire({"id": 1, "handle": 3}) == p.ShmUnregisterHeader(1, 3, False)
    assert p.ShmUnregisterHeader.from_wire({"id": 1, "all": True}) == p.ShmUnregisterHeader(1, None, True)
    for bad in ({}, {"handle": 1, "all": True}, {"all": 1}, {"handle": -1}, {"handle": True}):
        with pytest.raises(p.ProtocolError):
            p.ShmUnregisterHeader.from_wire(bad)


class Resolver:
    """Stands in for the registry: one region of bytes, bounds checked the way the registry words it."""

    def __init__(self, data: torch.Tensor):
        self.data = data.view(torch.uint8)

    def __call__(self, region, offset, nbytes, dtype, dims):
        if region != 1:
            raise p.ProtocolError(p.ErrorCode.BAD_REQUEST, f"region handle {region} is not registered by this client")
        raw = self.data[offset: offset + nbytes]
        return raw.view(codec.TORCH_DTYPES[dtype]).view(dims)


def test_shm_descriptions_resolve_and_frames_count_only_inline_tensors() -> None:
    x = torch.arange(24, dtype=torch.float32)
    inline = torch.ones(2, dtype=torch.int64)
    descs = [p.shm_tensor_desc("float32", [2, 3], 1, 8 * 4, 24), p.tensor_desc("int64", [2], 0)]
    frames = [memoryview(inline.numpy()).cast("B")]
    out = codec.decode_tensors(descs, frames, resolve_shm=Resolver(x))
    assert torch.equal(out[0], x[8:14].view(2, 3)) and torch.equal(out[1], inline)
    assert codec.decode_tensors([descs[0]], [], resolve_shm=Resolver(x))[0].shape == (2, 3)


@pytest.mark.parametrize(
    "desc, fragment",
    [
        ({"dtype": "float32", "shape": [2], "frame": 0, "shm": {"region": 1, "offset": 0, "nbytes": 8}}, "both"),
        ({"dtype": "float32", "shape": [2], "shm": [1, 0, 8]}, "must be a map"),
        ({"dtype": "float32", "shape": [2], "shm": {"region": 1, "offset": 0, "nbytes": 12}}, "shm.nbytes is 12"),
        ({"dtype": "float32", "shape": [2], "shm": {"region": 1, "offset": 0}}, "nbytes must be an integer"),
        ({"dtype": "float32", "shape": [2], "shm": {"region": 9, "offset": 0, "nbytes": 8}}, "tensors[0].shm: region"),
    ],
)
def test_bad_shm_descriptions_are_bad_requests(desc: dict, fragment: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        codec.decode_tensors([desc], [b"\x00" * 8] if "frame" in desc else [], resolve_shm=Resolver(torch.zeros(4)))
    assert info.value.code == p.ErrorCode.BAD_REQUEST and fragment in info.value.message


def test_without_a_resolver_shm_is_refused_and_a_reply_never_resolves() -> None:
    desc = p.shm_tensor_desc("float32", [2], 1, 0, 8)
    with pytest.raises(p.ProtocolError, match="does not accept"):
        codec.decode_tensors([desc], [])
    frames = codec.encode(p.MsgType.INFER, p.InferHeader([desc], 1).to_wire())
    with pytest.raises(p.ProtocolError, match="does not accept"):
        codec.decode(frames)


def test_check_int_is_the_codecs_and_the_registrys() -> None:
    from server import shm_registry

    assert shm_registry.check_int is codec.check_int
    with pytest.raises(p.ProtocolError, match="integer"):
        codec.check_int(True, "x", 0, 1)
