"""A live infer-server answers every malformed request with an error and keeps serving."""

from __future__ import annotations

import msgpack
import pytest
import torch
import zmq

from client.transport import Backend
from common import codec
from common.protocol import (
    BREAKDOWN,
    PROTOCOL_VERSION,
    ControlHeader,
    ControlReplyHeader,
    ErrorCode,
    ErrorHeader,
    HelloHeader,
    InferHeader,
    InfoHeader,
    MsgType,
    ResultHeader,
    StatsReplyHeader,
    tensor_desc,
)
from tests.support import ask, dealer_socket, start_server

pytestmark = pytest.mark.integration  # every test here starts a process


@pytest.fixture(scope="module")
def inline_noop_server(tmp_path_factory: pytest.TempPathFactory):
    """No workers: the I/O thread's blocking-receive loop (`Server._run_inline`)."""
    s = start_server("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "0",
                     tmp_path=tmp_path_factory.mktemp("inline"))
    yield s
    s.kill()


@pytest.fixture(params=["noop_server", "inline_noop_server"], ids=["pool", "inline"])
def dealer(request):
    with dealer_socket(request.getfixturevalue(request.param).endpoint) as sock:
        yield sock


def valid_infer(request_id: object = 1, batch: int = 2) -> list:
    x = torch.arange(batch * 3 * 32 * 32, dtype=torch.float32).reshape(batch, 3, 32, 32)
    return [bytes(f) for f in codec.encode(MsgType.INFER, InferHeader([], request_id, [10, 20]).to_wire(), (x,))]


def header(d: object) -> bytes:
    return msgpack.packb(d)


def infer_header(dtype="float32", shape=(1, 3, 32, 32), frame=0, ts=None) -> bytes:
    return header(InferHeader([tensor_desc(dtype, list(shape), frame)], 99, ts).to_wire())


def hello(request_id: object = 99) -> bytes:
    return header(HelloHeader(request_id).to_wire())


CTRL = bytes((PROTOCOL_VERSION, MsgType.INFER))
F32_IMAGE = b"\x00" * (3 * 32 * 32 * 4)

MALFORMED = {
    "garbage bytes": [b"\xde\xad\xbe\xef\x00\x01"],
    "empty control": [b""],
    "only control": [CTRL],
    "wrong version": [bytes((77, MsgType.INFER)), hello()],
    "unknown type": [bytes((PROTOCOL_VERSION, 0x33)), hello()],
    "reply type sent as request": [bytes((PROTOCOL_VERSION, MsgType.RESULT)), hello()],
    "header not msgpack": [CTRL, b"\xc1\xc1\xc1"],
    "header not a map": [CTRL, header([1, 2])],
    "missing frame": [CTRL, infer_header()],
    "extra frame": [CTRL, infer_header(), F32_IMAGE, F32_IMAGE],
    "size mismatch": [CTRL, infer_header(), F32_IMAGE[:-4]],
    "dtype not allowed": [CTRL, infer_header(dtype="complex64"), F32_IMAGE],
    "dtype not an image dtype": [CTRL, infer_header(dtype="int32"), F32_IMAGE],
    "wrong rank": [CTRL, infer_header(shape=(3, 32, 32)), F32_IMAGE[: 3 * 32 * 32 * 4]],
    "wrong channels": [CTRL, infer_header(shape=(1, 4, 32, 24)), F32_IMAGE],
    "absurd shape": [CTRL, infer_header(shape=(2**40, 3, 2**40, 2**40)), F32_IMAGE],
    "negative dim": [CTRL, infer_header(shape=(-1, 3, 32, 32)), F32_IMAGE],
    "too many frames": [CTRL, hello(), *[b"x"] * 30],
    "bad id type": [CTRL, header({"id": [1, 2], "tensors": []})],
    "bad ts": [CTRL, header({"id": 99, "ts": "yesterday", "tensors": []})],
    "hello with frames": [bytes((PROTOCOL_VERSION, MsgType.HELLO)), hello(), b"x"],
    "unknown control": [bytes((PROTOCOL_VERSION, MsgType.CONTROL)), header(ControlHeader("format-disk", 99).to_wire())],
    "bin keys": [CTRL, msgpack.packb({b"id": 99, b"tensors": []}, use_bin_type=True)],
    "bool id": [CTRL, header({"id": True, "tensors": []})],
    "bool ts": [CTRL, header({"id": 99, "ts": [1, False], "tensors": []})],
}
# Requests whose id was readable (the header decoded and its id is valid): their ERROR names them.
ID_READABLE = {"wrong version", "unknown type", "reply type sent as request", "missing frame", "extra frame",
               "size mismatch", "dtype not allowed", "dtype not an image dtype", "wrong rank", "wrong channels",
               "absurd shape", "negative dim", "too many frames", "bad ts", "hello with frames",
               "unknown control", "bin keys", "bool ts"}



@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_error_and_server_keeps_serving(dealer, name: str) -> None:
    reply = ask(dealer, MALFORMED[name])
    assert reply.msg_type == MsgType.ERROR
    error = ErrorHeader.from_wire(reply.header)
    assert error.code in {ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION}
    assert error.name == ErrorCode(error.code).name
    assert error.message
    assert error.id == (99 if name in ID_READABLE else None)
    ok = ask(dealer, valid_infer(request_id=f"after-{name}"))
    assert ok.msg_type == MsgType.RESULT
    assert ResultHeader.from_wire(ok.header).id == f"after-{name}"


def test_unsupported_version_names_the_request(dealer) -> None:
    error = ErrorHeader.from_wire(ask(dealer, [bytes((2, MsgType.INFER)), infer_header(ts=[1, 2]), F32_IMAGE]).header)
    assert error.code == ErrorCode.UNSUPPORTED_VERSION and error.id == 99


def test_error_reply_to_infer_echoes_id_and_ts(dealer) -> None:
    error = ErrorHeader.from_wire(ask(dealer, [CTRL, infer_header(dtype="int32", ts=[5, 6.5]), F32_IMAGE]).header)
    assert error.code == ErrorCode.BAD_REQUEST and error.id == 99 and error.ts == [5, 6.5]
    # A ts that is not readable is not echoed; the id still is.
    error = ErrorHeader.from_wire(ask(dealer, [CTRL, infer_header(ts="soon"), F32_IMAGE]).header)
    assert error.id == 99 and error.ts is None


def test_result_echoes_id_and_timestamps_and_reports_durations(dealer) -> None:
    reply = ask(dealer, valid_infer(request_id="abc", batch=3))
    assert reply.msg_type == MsgType.RESULT
    result = ResultHeader.from_wire(reply.header)
    assert result.id == "abc" and result.ts == [10, 20]
    (logits,) = reply.tensors
    assert logits.shape == (3, 1000) and logits.dtype == torch.float32
    assert set(reply.header["server"]) == set(result.server.to_wire())  # nothing sent that the schema lacks
    for stage in BREAKDOWN:
        assert isinstance(reply.header["server"][f"{stage}_ns"], int) and result.server.stage_ns(stage) >= 0
    assert result.server.batch_rows == 3


def test_id_and_ts_may_be_omitted(dealer) -> None:
    x = torch.zeros(1, 3, 32, 32)
    reply = ask(dealer, [bytes(f) for f in codec.encode(MsgType.INFER, {}, (x,))])
    assert reply.msg_type == MsgType.RESULT
    assert ResultHeader.from_wire(reply.header).id is None and reply.header["ts"] is None


def test_hello_describes_the_server(noop_server) -> None:
    ctx = zmq.Context()
    b = Backend(ctx, noop_server.endpoint)
    try:
        info = b.hello(10)
        stats = b.stats()
    finally:
        b.close()
        ctx.term()
    hello_info = InfoHeader.from_wire(info)
    assert not hello_info.extra, f"INFO keys the schema does not name: {sorted(hello_info.extra)}"
    assert hello_info.model == "noop" and hello_info.device == "cpu" and hello_info.compile is False
    assert hello_info.protocol_version == PROTOCOL_VERSION and hello_info.state == "ready"
    assert hello_info.startup_s > 0 and hello_info.instance
    reply = StatsReplyHeader.from_wire(stats)
    assert not reply.extra and reply.counters.received >= 1 and reply.rss_bytes > 0
    assert reply.gpu is None and reply.gpu_reason


def test_shutdown_is_accepted_with_the_instance(server_factory) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    with dealer_socket(server.endpoint) as sock:
        info = InfoHeader.from_wire(ask(sock, [bytes((PROTOCOL_VERSION, MsgType.HELLO)), hello(1)]).header)
        sock.send_multipart([bytes((PROTOCOL_VERSION, MsgType.CONTROL)), header(ControlHeader("shutdown", 2).to_wire())])
        assert sock.poll(10_000)
        reply = codec.decode(sock.recv_multipart())  # not ask(): DEAD may follow at once
        assert reply.msg_type == MsgType.CONTROL_REPLY
        assert ControlReplyHeader.from_wire(reply.header) == ControlReplyHeader(2, True, info.instance)
        assert sock.poll(30_000) and codec.decode(sock.recv_multipart()).msg_type == MsgType.DEAD
    assert server.proc.wait(60) == 0
