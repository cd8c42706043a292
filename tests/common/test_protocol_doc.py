"""docs/PROTOCOL.md names every key the code sends, so the document cannot drift from the code.

The keys come from two sides: the schema's dataclasses (what the code can send)
and a real noop server's replies (what it does send, including keys put there
from outside the schema). A key counts as documented when it appears in
backticks in the document, or a nested map's keys in a backticked `{a, b, c}`.
The document's recipes (infer-client's inputs, random-init weights) are run here
against the code they describe.
"""

from __future__ import annotations

import inspect
import re

import msgpack
import pytest
import torch

from client import loadgen
from common import codec
from common import protocol as p
from server.config import RELOADABLE
from tests.conformance.client import documented_python
from tests.support import DOCUMENTED, PROTOCOL_DOC, REPLY_TIMEOUT_MS, ask, dealer_socket, undocumented


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


def documented_maps() -> list[set[str]]:
    """The key sets the document spells as a backticked `{a, b, c}`."""
    return [set(re.split(r",\s*", text[1:-1])) for text in DOCUMENTED if text.startswith("{") and text.endswith("}")]


@pytest.mark.parametrize(("batch", "shape", "dtype", "seed"), [
    (2, (3, 40, 40), "float32", 0), (3, (3, 33, 35), "uint8", 7), (1, (5,), "float32", 3),
])
def test_the_documented_inputs_are_infer_clients_bit_for_bit(batch, shape, dtype, seed, monkeypatch) -> None:
    recipe = documented_python("infer_client_batches")["infer_client_batches"]
    defaults = inspect.signature(recipe).parameters
    assert defaults["pool_bytes"].default == loadgen.POOL_BYTES
    assert defaults["distinct"].default == inspect.signature(loadgen.InputPool).parameters["distinct"].default
    assert defaults["seed"].default == 0 and defaults["wire_dtype"].default == "float32"
    for pool_bytes in (loadgen.POOL_BYTES, 2 * batch * 3 * 40 * 40):  # 4 batches; fewer when they are large
        monkeypatch.setattr(loadgen, "POOL_BYTES", pool_bytes)
        want = loadgen.InputPool(batch, shape, dtype, seed).batches
        got = recipe(batch, shape, dtype, seed, pool_bytes=pool_bytes)
        assert len(got) == len(want) and all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))


def test_the_documented_random_init_is_the_servers() -> None:
    from server.models import zoo

    documented = documented_python("random_init")["random_init"]("resnet18").state_dict()
    served = zoo.random_init("resnet18", 0).state_dict()
    assert documented.keys() == served.keys()
    assert all(torch.equal(documented[k], served[k]) for k in served)


@pytest.mark.integration
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
    assert set(info.header["thread_split"]) in documented_maps()
    assert info.header["shm"] is None or set(info.header["shm"]) in documented_maps()
    assert undocumented(stats.header) == []
    assert undocumented(stats.header["counters"]) == []
    assert undocumented(error.header) == []
    assert undocumented(control.header) == []
    assert error.header["id"] == 3 and error.header["ts"] == [1]
    assert control.header["instance"] == info.header["instance"]
