"""A live infer-server answers every malformed request with an error and keeps serving."""

from __future__ import annotations

import msgpack
import pytest
import torch
import zmq

from client.transport import Backend
from common import codec
from common.protocol import PROTOCOL_VERSION, ErrorCode, MsgType
from tests.conftest import ask, dealer_socket, start_server


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
    return [bytes(f) for f in codec.encode(MsgType.INFER, {"id": request_id, "ts": [10, 20]}, (x,))]


def header(d: object) -> bytes:
    return msgpack.packb(d)


def infer_header(dtype="float32", shape=(1, 3, 32, 32), frame=0, **extra) -> bytes:
    return header({"id": 99, "tensors": [{"dtype": dtype, "shape": list(shape), "frame": frame}], **extra})


CTRL = bytes((PROTOCOL_VERSION, MsgType.INFER))
F32_IMAGE = b"\x00" * (3 * 32 * 32 * 4)

MALFORMED = {
    "garbage bytes": [b"\xde\xad\xbe\xef\x00\x01"],
    "empty control": [b""],
    "only control": [CTRL],
    "wrong version": [bytes((77, MsgType.INFER)), header({"id": 99})],
    "unknown type": [bytes((PROTOCOL_VERSION, 0x33)), header({"id": 99})],
    "reply type sent as request": [bytes((PROTOCOL_VERSION, MsgType.RESULT)), header({"id": 99})],
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
    "too many frames": [CTRL, header({"id": 99}), *[b"x"] * 30],
    "bad id type": [CTRL, header({"id": [1, 2], "tensors": []})],
    "bad ts": [CTRL, header({"id": 99, "ts": "yesterday", "tensors": []})],
    "hello with frames": [bytes((PROTOCOL_VERSION, MsgType.HELLO)), header({"id": 99}), b"x"],
    "unknown control": [bytes((PROTOCOL_VERSION, MsgType.CONTROL)), header({"id": 99, "action": "format-disk"})],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_error_and_server_keeps_serving(dealer, name: str) -> None:
    reply = ask(dealer, MALFORMED[name])
    assert reply.msg_type == MsgType.ERROR
    assert reply.header["code"] in {ErrorCode.BAD_REQUEST, ErrorCode.UNSUPPORTED_VERSION}
    assert reply.header["name"] == ErrorCode(reply.header["code"]).name
    assert reply.header["message"]
    ok = ask(dealer, valid_infer(request_id=f"after-{name}"))
    assert ok.msg_type == MsgType.RESULT
    assert ok.header["id"] == f"after-{name}"


def test_error_reply_carries_the_request_id_when_known(dealer) -> None:
    reply = ask(dealer, [CTRL, infer_header(dtype="int32"), F32_IMAGE])
    assert reply.header["id"] == 99


def test_result_echoes_id_and_timestamps_and_reports_durations(dealer) -> None:
    reply = ask(dealer, valid_infer(request_id="abc", batch=3))
    assert reply.msg_type == MsgType.RESULT
    assert reply.header["id"] == "abc" and reply.header["ts"] == [10, 20]
    (logits,) = reply.tensors
    assert logits.shape == (3, 1000) and logits.dtype == torch.float32
    server = reply.header["server"]
    for key in ("queue_ns", "decode_ns", "h2d_ns", "compute_ns", "d2h_ns", "encode_ns"):
        assert isinstance(server[key], int) and server[key] >= 0


def test_hello_describes_the_server(noop_server) -> None:
    ctx = zmq.Context()
    b = Backend(ctx, noop_server.endpoint)
    try:
        info = b.hello(10)
        stats = b.stats()
    finally:
        b.close()
        ctx.term()
    for key in ("protocol_version", "server_version", "model", "device", "compile", "num_workers",
                "torch_version", "cuda_version", "torch_load_time", "m_compile_time", "startup_s"):
        assert key in info
    assert info["model"] == "noop" and info["device"] == "cpu" and info["compile"] is False
    assert info["protocol_version"] == PROTOCOL_VERSION
    assert stats["counters"]["received"] >= 1 and stats["rss_bytes"] > 0
    assert stats["gpu"] is None and stats["gpu_reason"]
