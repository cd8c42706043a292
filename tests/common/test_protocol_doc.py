"""docs/PROTOCOL.md names every key the code sends, so the document cannot drift from the code.

The keys come from two sides: the schema's dataclasses (what the code can send)
and a real noop server's replies (what it does send, including keys put there
from outside the schema). A key counts as documented when it appears in
backticks in the document.
"""

from __future__ import annotations

import msgpack

from common import codec
from common import protocol as p
from server.config import RELOADABLE
from tests.common.conftest import PROTOCOL_DOC, undocumented
from tests.conftest import REPLY_TIMEOUT_MS, ask, dealer_socket


def frames(msg_type: p.MsgType, header: dict) -> list[bytes]:
    return [bytes((p.PROTOCOL_VERSION, msg_type)), msgpack.packb(header, use_bin_type=True)]


def test_every_schema_key_is_documented() -> None:
    headers = [
        p.InferHeader([p.tensor_desc("uint8", [1])]).to_wire(),
        p.ResultHeader(1, [1], [p.tensor_desc("float32", [1, 1000])], p.ServerTimes()).to_wire(),
        p.ServerTimes().to_wire(),
        p.ErrorHeader(1, "BAD_REQUEST", "m").to_wire(),
        p.HelloHeader(1).to_wire(),
        p.ControlHeader("reload", 1, {}).to_wire(),
        p.ControlReplyHeader(1, True, "i").to_wire(),
        p.InfoHeader().to_wire(),
        p.StatsReplyHeader().to_wire(),
        p.ServerCounters().to_wire(),
        p.tensor_desc("uint8", [1]),
    ]
    assert undocumented({key for header in headers for key in header}) == []


def test_every_code_action_and_reloadable_setting_is_documented() -> None:
    assert [code.name for code in p.ErrorCode if f"| {int(code)} | {code.name} |" not in PROTOCOL_DOC] == []
    assert undocumented(["shutdown", "reload", "01 ff"]) == []
    assert undocumented(RELOADABLE) == []


def test_every_key_a_live_server_sends_is_documented(server_factory) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    with dealer_socket(server.endpoint) as sock:
        info = ask(sock, frames(p.MsgType.HELLO, p.HelloHeader(1).to_wire()))
        stats = ask(sock, frames(p.MsgType.STATS, p.HelloHeader(2).to_wire()))
        error = ask(sock, frames(p.MsgType.INFER, {"id": 3, "ts": [1], "tensors": "no"}))
        # Not `ask`: after the reply to shutdown the server announces DEAD, which may already be here.
        sock.send_multipart(frames(p.MsgType.CONTROL, p.ControlHeader("shutdown", 4).to_wire()))
        assert sock.poll(REPLY_TIMEOUT_MS), "no reply to shutdown"
        control = codec.decode(sock.recv_multipart())
    assert [m.msg_type for m in (info, stats, error, control)] == [
        p.MsgType.INFO, p.MsgType.STATS_REPLY, p.MsgType.ERROR, p.MsgType.CONTROL_REPLY]
    assert undocumented(info.header) == []
    assert undocumented(stats.header) == []
    assert undocumented(stats.header["counters"]) == []
    assert undocumented(error.header) == []
    assert undocumented(control.header) == []
    assert error.header["id"] == 3 and error.header["ts"] == [1]
    assert control.header["instance"] == info.header["instance"]
