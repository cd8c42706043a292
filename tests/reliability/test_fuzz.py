"""Property-based fuzzing of a live server: every hostile message gets exactly one reply.

Messages start from valid ones built with common.codec and are mutated
(truncated/dropped/added frames, wrong-typed header fields, bad sizes, NaN/Inf
pixels, enormous dims, random bytes). After each, a valid request must succeed,
and the server's RSS must stay bounded over the whole run.
"""

from __future__ import annotations

import math

import msgpack
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec
from common.protocol import (
    IMAGE_DTYPES,
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    ErrorHeader,
    HelloHeader,
    InferHeader,
    MsgType,
    ProtocolError,
    ResultHeader,
    StatsReplyHeader,
    check_request_id,
    check_timestamps,
    tensor_desc,
)
from tests.support import ask, check_counters, counters_add_up, dealer_socket, record_figures

pytestmark = pytest.mark.integration  # every test here starts a process

MAX_EXAMPLES = 250
RSS_GROWTH_LIMIT = 100 * 1024 * 1024
COUNT = {"inputs": 0, "errors": 0, "results": 0}

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same inputs in CI every time
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.fixture(scope="module")
def dealer(noop_server):
    with dealer_socket(noop_server.endpoint) as sock:
        yield sock


def stats(sock: zmq.Socket) -> StatsReplyHeader:
    reply = ask(sock, [bytes(f) for f in codec.encode(MsgType.STATS, HelloHeader("stats").to_wire())])
    assert reply.msg_type == MsgType.STATS_REPLY
    return StatsReplyHeader.from_wire(reply.header)


def valid_frames(batch: int = 1, dtype: torch.dtype = torch.float32, request_id: object = 7) -> list[bytes]:
    x = torch.zeros(batch, 3, 32, 32).to(dtype)
    return [bytes(f) for f in codec.encode(MsgType.INFER, InferHeader([], request_id, [1, 2]).to_wire(), (x,))]


def assert_still_serving(sock: zmq.Socket) -> None:
    reply = ask(sock, valid_frames(request_id="check"))
    assert reply.msg_type == MsgType.RESULT and ResultHeader.from_wire(reply.header).id == "check"


def valid_or_none(check, value: object) -> object:
    try:
        return check(value)
    except ProtocolError:
        return None


def same(a: object, b: object) -> bool:
    """Equal as sent on the wire (NaN timestamps included)."""
    return msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True)


# -- strategies --------------------------------------------------------------

wire_values = st.recursive(
    # Integers span msgpack's whole range (-2**63 .. 2**64-1): beyond it nothing can be packed.
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=80)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=12,
)
dims = st.one_of(st.integers(-5, 70), st.sampled_from([-(2**63), 2**31, 2**40, 2**63 - 1]), wire_values)


@st.composite
def mutated_infer(draw) -> tuple[list[bytes], bool]:
    """A valid INFER with some fields replaced; returns (frames, could_be_valid)."""
    dtype_name = draw(st.sampled_from(["float32", "uint8", "float16", "bfloat16", "float64", "int64", "bool"]))
    shape = draw(st.sampled_from([[1, 3, 32, 32], [2, 3, 32, 33]]))
    desc: dict = tensor_desc(dtype_name, shape)
    header: dict = {"id": 5, "ts": [1.0, 2.0]}
    changed = False
    for key in draw(st.lists(st.sampled_from(["dtype", "shape", "frame", "id", "ts", "tensors", "dim"]),
                             max_size=3, unique=True)):
        changed = True
        if key == "dtype":
            desc["dtype"] = draw(st.sampled_from(["complex64", "object", "__class__", "float32 ", ""]) | wire_values)
        elif key == "shape":
            desc["shape"] = draw(st.lists(dims, max_size=10) | wire_values)
        elif key == "dim":
            shape = list(shape)
            shape[draw(st.integers(0, 3))] = draw(dims)
            desc["shape"] = shape
        elif key == "frame":
            desc["frame"] = draw(dims)
        elif key == "id":
            header["id"] = draw(wire_values)
        elif key == "ts":
            header["ts"] = draw(wire_values)
        elif key == "tensors":
            header["tensors"] = draw(wire_values)
    header.setdefault("tensors", [desc])
    declared = desc["shape"]
    nbytes = 0
    if isinstance(declared, list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**16
                                          for d in declared) and dtype_name in WIRE_DTYPES:
        nbytes = math.prod(declared) * WIRE_DTYPES[dtype_name]
    size_delta = draw(st.sampled_from([0, 0, 0, -1, 1, -nbytes]))
    changed |= size_delta != 0
    fill = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f"]))  # 0x7fc0.. / 0xff.. are NaN/Inf-like floats
    payload = fill * max(0, min(nbytes + size_delta, 1 << 20))
    frames = [bytes((PROTOCOL_VERSION, MsgType.INFER)), msgpack.packb(header, use_bin_type=True), payload]
    return frames, not changed and dtype_name in IMAGE_DTYPES


@st.composite
def frame_level(draw) -> list[bytes]:
    """Structural mutations: truncation, dropped/added frames, bad control frames, random bytes."""
    frames = valid_frames()
    kind = draw(st.sampled_from(["truncate", "drop", "add", "control", "header", "random", "not_map", "type"]))
    if kind == "truncate":
        i = draw(st.integers(0, len(frames) - 1))
        frames[i] = frames[i][: draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif kind == "drop":
        del frames[draw(st.integers(0, len(frames) - 1))]
        if not frames:
            frames = [b""]
    elif kind == "add":
        frames += draw(st.lists(st.binary(max_size=64), min_size=1, max_size=12))
    elif kind == "control":
        frames[0] = draw(st.binary(max_size=4))
    elif kind == "header":
        frames[1] = draw(st.binary(max_size=200))
    elif kind == "random":
        frames = draw(st.lists(st.binary(max_size=200), min_size=1, max_size=12))
    elif kind == "not_map":
        frames[1] = msgpack.packb(draw(wire_values.filter(lambda v: not isinstance(v, dict))), use_bin_type=True)
    else:  # every message type byte, including replies and unknown ones, with any version byte
        frames[0] = bytes((draw(st.sampled_from([PROTOCOL_VERSION, 0, 2, 255])), draw(st.integers(0, 255))))
    return frames


def check_reply(sock: zmq.Socket, frames: list[bytes], could_be_valid: bool) -> codec.Message:
    COUNT["inputs"] += 1
    reply = ask(sock, frames)
    if reply.msg_type == MsgType.ERROR:
        COUNT["errors"] += 1
        error = ErrorHeader.from_wire(reply.header)
        assert error.code in (1, 2), reply.header  # BAD_REQUEST / UNSUPPORTED_VERSION, never INTERNAL
        if error.id is not None:  # an id comes back only from a header that held it
            sent = msgpack.unpackb(frames[1], raw=False)
            assert same(error.id, sent.get("id", sent.get(b"id"))), (error, sent)
    else:
        COUNT["results"] += 1
        assert reply.msg_type in (MsgType.RESULT, MsgType.INFO, MsgType.STATS_REPLY, MsgType.CONTROL_REPLY)
    if could_be_valid:
        assert reply.msg_type == MsgType.RESULT, reply.header
    assert_still_serving(sock)
    return reply


@pytest.fixture(scope="module")
def rss_before(dealer):
    assert_still_serving(dealer)
    return stats(dealer)


@FUZZ_SETTINGS
@given(case=mutated_infer())
def test_fuzz_infer_fields(dealer, rss_before, case):
    frames, could_be_valid = case
    reply = check_reply(dealer, frames, could_be_valid)
    # The prefix is valid here, so an ERROR echoes the id whenever it is valid, and
    # the ts whenever that is valid, whatever the id (PROTOCOL.md R12, R13).
    if reply.msg_type == MsgType.ERROR:
        sent = msgpack.unpackb(frames[1], raw=False)
        error = ErrorHeader.from_wire(reply.header)
        id_ok = sent.get("id") is None or valid_or_none(check_request_id, sent["id"]) is not None
        want_ts = valid_or_none(check_timestamps, sent.get("ts"))
        assert same(error.id, sent.get("id") if id_ok else None) and same(error.ts, want_ts), (error, sent)


@FUZZ_SETTINGS
@given(frames=frame_level())
def test_fuzz_frames(dealer, rss_before, frames):
    if frames[0][:2] == bytes((PROTOCOL_VERSION, MsgType.CONTROL)):
        frames[0] = bytes((PROTOCOL_VERSION, MsgType.HELLO))  # a CONTROL could legitimately stop the server
    check_reply(dealer, frames, could_be_valid=False)


@FUZZ_SETTINGS
@given(values=st.lists(st.sampled_from([0.0, math.nan, math.inf, -math.inf, 1e38]), min_size=1, max_size=8),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_fuzz_nan_inf_pixels(dealer, rss_before, values, dtype):
    x = torch.tensor(values * (3 * 32 * 32 // len(values) + 1))[: 3 * 32 * 32].reshape(1, 3, 32, 32).to(dtype)
    frames = [bytes(f) for f in codec.encode(MsgType.INFER, {"id": 3}, (x,))]
    check_reply(dealer, frames, could_be_valid=True)


def test_fuzz_memory_bounded_and_figures(dealer, rss_before):
    """Runs after the fuzz tests (file order): the server is still fine and its RSS bounded."""
    assert_still_serving(dealer)
    after = stats(dealer)
    growth = after.rss_bytes - rss_before.rss_bytes
    counters = after.counters
    record_figures(
        "fuzz",
        inputs_tried=COUNT["inputs"],
        error_replies=COUNT["errors"],
        ok_replies=COUNT["results"],
        server_received=counters.received,
        server_errors_sent=counters.errors_sent,
        server_answered=counters.answered,
        replies_dropped=counters.replies_dropped,
        rss_before_mb=round(rss_before.rss_bytes / 2**20, 1),
        rss_after_mb=round(after.rss_bytes / 2**20, 1),
    )
    assert COUNT["inputs"] >= 3 * MAX_EXAMPLES // 2
    assert counters.replies_dropped == 0
    counters_add_up(after.to_wire())
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew {growth / 2**20:.1f} MB"


def test_oversized_message_drops_only_that_peer(server_factory):
    """Above --max-message-bytes libzmq disconnects the sender (no reply is possible); others are served."""
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--max-message-bytes", "4096")
    ctx = zmq.Context()
    offender, bystander = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for sock in (offender, bystander):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)
        offender.send_multipart(valid_frames())  # 12 KiB frame > 4 KiB limit
        assert not offender.poll(2000), "an oversized message must not be answered"
        hello = ask(bystander, [bytes(f) for f in codec.encode(MsgType.HELLO, {"id": 1})])
        assert hello.msg_type == MsgType.INFO
        # The offender's DEALER reconnects by itself and a well-sized request works again.
        again = ask(offender, [bytes(f) for f in codec.encode(MsgType.HELLO, {"id": 2})])
        assert again.msg_type == MsgType.INFO
        COUNT["oversized"] = COUNT.get("oversized", 0) + 1
        # The disconnect is seen (as a connection closed: libzmq gives no reason) and nothing was received.
        counters = check_counters(server.endpoint)
        assert counters["peers_disconnected"] >= 1 and counters["received"] == 3, counters
    finally:
        offender.close()
        bystander.close()
        ctx.term()
