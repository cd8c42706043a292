"""The wire schema's round trips and the request-prefix validator (no sockets needed)."""

from __future__ import annotations

import msgpack
import pytest

from common import codec
from common import protocol as p


def wire(header: object) -> dict:
    """What a peer decodes: the header through msgpack and back."""
    return msgpack.unpackb(msgpack.packb(header, use_bin_type=True), raw=False)


def test_breakdown_names_the_server_times_fields_in_order() -> None:
    times = p.ServerTimes(1, 2, 3, 4, 5, 6, batch_rows=7, worker=8)
    assert [times.stage_ns(s) for s in p.BREAKDOWN] == [1, 2, 3, 4, 5, 6]
    assert list(times.to_wire())[: len(p.BREAKDOWN)] == [f"{s}_ns" for s in p.BREAKDOWN]
    assert times.total_ns == 21 and p.MODEL_STAGE in p.BREAKDOWN


def test_server_times_round_trip_and_missing_keys_read_as_zero() -> None:
    times = p.ServerTimes(10, 20, 30, 40, 50, 60, 2, 1)
    assert p.ServerTimes.from_wire(wire(times.to_wire())) == times
    assert p.ServerTimes.from_wire(None) == p.ServerTimes() == p.ServerTimes.from_wire({})
    assert p.ServerTimes.from_wire({"compute_ns": 5}).total_ns == 5
    for bad in ({"queue_ns": [1]}, "fast"):
        with pytest.raises(p.ProtocolError):
            p.ServerTimes.from_wire(bad)


def test_result_header_round_trip() -> None:
    result = p.ResultHeader("r1", [1, 2], [p.tensor_desc("float32", [2, 1000])], p.ServerTimes(compute_ns=9, worker=3))
    assert p.ResultHeader.from_wire(wire(result.to_wire())) == result
    assert p.ResultHeader.from_wire({}) == p.ResultHeader(None, None, [], p.ServerTimes())


def test_infer_header_round_trip_and_validation() -> None:
    infer = p.InferHeader([p.tensor_desc("uint8", [1, 3, 32, 32])], id=7, ts=[1, 2.5])
    assert p.InferHeader.from_wire(wire(infer.to_wire())) == infer
    # id and ts may be omitted; tensors may not.
    assert p.InferHeader.from_wire({"tensors": []}) == p.InferHeader([])
    with pytest.raises(p.ProtocolError, match="'tensors' must be a list"):
        p.InferHeader.from_wire({"id": 3})
    for bad in ({"id": True, "tensors": []}, {"id": 1.5, "tensors": []}, {"ts": [True], "tensors": []},
                {"ts": "now", "tensors": []}, {"ts": [1] * 17, "tensors": []}):
        with pytest.raises(p.ProtocolError):
            p.InferHeader.from_wire(bad)


def test_infer_header_errors_carry_what_was_readable() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.InferHeader.from_wire({"id": 4, "ts": [1, 2], "tensors": "x"})
    assert info.value.request_id == 4 and info.value.ts == [1, 2]
    with pytest.raises(p.ProtocolError) as info:
        p.InferHeader.from_wire({"id": 4, "ts": "bad"})
    assert info.value.request_id == 4 and info.value.ts is None


def test_tensor_desc_round_trip() -> None:
    assert p.read_tensor_desc(wire(p.tensor_desc("float16", [2, 3], 1))) == ("float16", [2, 3], 1)
    assert p.read_tensor_desc({}) == (None, None, None)


def test_error_header_round_trip_and_from_error() -> None:
    err = p.ErrorHeader(int(p.ErrorCode.OVERLOADED), "OVERLOADED", "busy", id=5, ts=[1, 2])
    assert p.ErrorHeader.from_wire(wire(err.to_wire())) == err
    from_exc = p.ErrorHeader.from_error(p.ProtocolError(p.ErrorCode.BAD_REQUEST, "x" * 5000, "id", [3]))
    assert (from_exc.code, from_exc.name, from_exc.id, from_exc.ts) == (1, "BAD_REQUEST", "id", [3])
    assert len(from_exc.message) == 1000
    # A reader copes with an ERROR that omits its name or carries an unknown code.
    assert p.ErrorHeader.from_wire({"code": 3}).name == "OVERLOADED"
    assert p.ErrorHeader.from_wire({"code": 99}).name == "ERROR_99"
    assert p.ErrorHeader.from_wire({}).code == p.ErrorCode.INTERNAL


def test_control_headers_round_trip_and_validation() -> None:
    reload = p.ControlHeader("reload", id=1, settings={"num_workers": 2})
    assert p.ControlHeader.from_wire(wire(reload.to_wire())) == reload
    shutdown = p.ControlHeader("shutdown", id=2)
    assert "settings" not in shutdown.to_wire() and p.ControlHeader.from_wire(shutdown.to_wire()) == shutdown
    with pytest.raises(p.ProtocolError, match="unknown control action") as info:
        p.ControlHeader.from_wire({"id": 9, "action": "format-disk"})
    assert info.value.request_id == 9
    with pytest.raises(p.ProtocolError, match="settings"):
        p.ControlHeader.from_wire({"id": 9, "action": "reload"})
    reply = p.ControlReplyHeader(1, True, "abc")
    assert p.ControlReplyHeader.from_wire(wire(reply.to_wire())) == reply


def test_info_header_keeps_keys_it_does_not_name() -> None:
    info = p.InfoHeader.from_fields("h1", {"model": "noop", "instance": "i", "future_key": [1]})
    sent = wire(info.to_wire())
    assert sent["id"] == "h1" and sent["model"] == "noop" and sent["future_key"] == [1]
    assert sent["protocol_version"] == p.PROTOCOL_VERSION
    assert p.InfoHeader.from_wire(sent) == info


def test_stats_reply_round_trip_with_counters() -> None:
    counters = p.ServerCounters(received=5, infer_received=4, answered=3, errors_sent=1)
    counters.errors[p.ErrorCode.OVERLOADED] = 1
    stats = p.StatsReplyHeader(id="s", counters=counters, inflight=1, rss_bytes=10, extra={"new": 1})
    sent = wire(stats.to_wire())
    assert sent["counters"]["error_overloaded"] == 1 and sent["counters"]["received"] == 5
    assert set(sent["counters"]) >= {p.error_counter(code) for code in p.ErrorCode}
    assert p.StatsReplyHeader.from_wire(sent) == stats


# -- the request-prefix validator -------------------------------------------------


def request(header: object, msg_type: int = p.MsgType.INFER, version: int = p.PROTOCOL_VERSION, extra: int = 0) -> list:
    return [bytes((version, msg_type)), msgpack.packb(header, use_bin_type=True), *[b""] * extra]


def refused(frames: list) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        codec.parse_request(frames)
    return info.value


def test_parse_request_returns_type_header_and_id() -> None:
    msg_type, header, request_id = codec.parse_request(request({"id": "a", "tensors": []}, extra=1))
    assert (msg_type, header, request_id) == (p.MsgType.INFER, {"id": "a", "tensors": []}, "a")
    assert codec.parse_request(request({}, p.MsgType.HELLO))[2] is None  # the id may be omitted


@pytest.mark.parametrize(
    "frames, code, fragment",
    [
        (request({"id": 5}, version=9), p.ErrorCode.UNSUPPORTED_VERSION, "version 9"),
        (request({"id": 5}, msg_type=0x33), p.ErrorCode.BAD_REQUEST, "unknown message type"),
        (request({"id": 5}, msg_type=p.MsgType.RESULT), p.ErrorCode.BAD_REQUEST, "not a request type"),
        (request({"id": 5}, extra=20), p.ErrorCode.BAD_REQUEST, "frames, limit"),
        (request({b"id": 5, b"tensors": []}), p.ErrorCode.BAD_REQUEST, "not bin"),
    ],
)
def test_prefix_errors_carry_the_id_when_the_header_was_readable(frames: list, code: p.ErrorCode, fragment: str) -> None:
    err = refused(frames)
    assert err.code == code and fragment in err.message
    assert err.request_id == 5


@pytest.mark.parametrize(
    "frames, fragment",
    [
        ([], "empty"),
        ([b"\x01"], "control frame"),
        ([bytes((p.PROTOCOL_VERSION, p.MsgType.INFER))], "needs a header"),
        ([bytes((p.PROTOCOL_VERSION, p.MsgType.INFER)), b"\xc1"], "not valid msgpack"),
        (request([1, 2]), "must be a map"),
        (request({"id": [1, 2]}), "id must be"),
        (request({"id": True}), "id must be"),
        (request({"id": "x" * 65}), "id must be"),
    ],
)
def test_prefix_errors_without_a_readable_id(frames: list, fragment: str) -> None:
    err = refused(frames)
    assert err.code == p.ErrorCode.BAD_REQUEST and fragment in err.message
    assert err.request_id is None


def test_error_reply_echoes_id_and_ts() -> None:
    frames = codec.error_reply(p.ProtocolError(p.ErrorCode.OVERLOADED, "busy", 12, [1, 2]))
    msg = codec.decode(frames)
    assert msg.msg_type == p.MsgType.ERROR
    assert p.ErrorHeader.from_wire(msg.header) == p.ErrorHeader(3, "OVERLOADED", "busy", 12, [1, 2])


def test_hello_header_round_trip() -> None:
    assert p.HelloHeader.from_wire(wire(p.HelloHeader(3).to_wire())) == p.HelloHeader(3)
    with pytest.raises(p.ProtocolError) as info:
        p.HelloHeader.from_wire({b"id": 3})
    assert info.value.request_id == 3


def test_backpressure_window_is_the_counters_growth_within_one_process() -> None:
    from common.protocol import BACKPRESSURE_COUNTERS, backpressure_window

    first = p.StatsReplyHeader(counters=p.ServerCounters(replies_dropped=2, replies_dropped_hwm=2, peers_connected=1),
                             uptime_s=10.0)
    last = p.StatsReplyHeader.from_wire(wire(p.StatsReplyHeader(
        counters=p.ServerCounters(replies_dropped=7, replies_dropped_hwm=3, replies_dropped_bytes=2,
                                send_blocked=1, send_blocked_ns=5, peers_connected=4), uptime_s=12.0).to_wire()))
    window = backpressure_window(first, last)
    assert set(window) == set(BACKPRESSURE_COUNTERS)
    assert (window["replies_dropped"], window["replies_dropped_hwm"], window["replies_dropped_bytes"]) == (5, 1, 2)
    assert (window["send_blocked_ns"], window["peers_connected"]) == (5, 3)
    restarted = p.StatsReplyHeader(counters=p.ServerCounters(), uptime_s=1.0)
    assert backpressure_window(first, restarted) is None and backpressure_window(None, last) is None
