"""docs/PROTOCOL.md names every key the code sends, so the document cannot drift from the code.

The keys come from two sides: the schema's dataclasses (what the code can send)
and a real noop server's replies (what it does send, including keys put there
from outside the schema). A key counts as documented when it appears in
backticks in the document.
"""

from __future__ import annotations

import re

import msgpack

from common.protocol import (
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
    ServerCounters,
    ServerTimes,
    StatsReplyHeader,
    tensor_desc,
)
from server.config import RELOADABLE
from tests.conftest import ROOT, ask, dealer_socket

DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", DOC))


def undocumented(keys) -> list[str]:
    return sorted(k for k in keys if k not in DOCUMENTED)


def frames(msg_type: MsgType, header: dict) -> list[bytes]:
    return [bytes((PROTOCOL_VERSION, msg_type)), msgpack.packb(header, use_bin_type=True)]


def test_every_schema_key_is_documented() -> None:
    headers = [
        InferHeader([tensor_desc("uint8", [1])]).to_wire(),
        ResultHeader(1, [1], [tensor_desc("float32", [1, 1000])], ServerTimes()).to_wire(),
        ServerTimes().to_wire(),
        ErrorHeader(1, "BAD_REQUEST", "m").to_wire(),
        HelloHeader(1).to_wire(),
        ControlHeader("reload", 1, {}).to_wire(),
        ControlReplyHeader(1, True, "i").to_wire(),
        InfoHeader().to_wire(),
        StatsReplyHeader().to_wire(),
        ServerCounters().to_wire(),
        tensor_desc("uint8", [1]),
    ]
    assert undocumented({key for header in headers for key in header}) == []


def test_every_code_action_and_reloadable_setting_is_documented() -> None:
    assert [code.name for code in ErrorCode if f"| {int(code)} | {code.name} |" not in DOC] == []
    assert undocumented(["shutdown", "reload", "01 ff"]) == []
    assert undocumented(RELOADABLE) == []


def test_every_key_a_live_server_sends_is_documented(server_factory) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    with dealer_socket(server.endpoint) as sock:
        info = ask(sock, frames(MsgType.HELLO, HelloHeader(1).to_wire()))
        stats = ask(sock, frames(MsgType.STATS, HelloHeader(2).to_wire()))
        error = ask(sock, frames(MsgType.INFER, {"id": 3, "ts": [1], "tensors": "no"}))
        control = ask(sock, frames(MsgType.CONTROL, ControlHeader("shutdown", 4).to_wire()))
    assert [m.msg_type for m in (info, stats, error, control)] == [
        MsgType.INFO, MsgType.STATS_REPLY, MsgType.ERROR, MsgType.CONTROL_REPLY]
    assert undocumented(info.header) == []
    assert undocumented(stats.header) == []
    assert undocumented(stats.header["counters"]) == []
    assert undocumented(error.header) == []
    assert undocumented(control.header) == []
    assert error.header["id"] == 3 and error.header["ts"] == [1]
    assert control.header["instance"] == info.header["instance"]
