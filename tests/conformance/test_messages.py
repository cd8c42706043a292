"""PROTOCOL.md: Transport, Message layout, Tensors and Header fields (R1-R14, R55-R57)."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from tests.conformance.client import control, images, pack, peers, tensor

pytestmark = pytest.mark.integration  # every test here starts a process


def infer_frames(header: dict, *frames: bytes) -> list[bytes]:
    return [control("INFER"), pack(header), *frames]


def valid_image(**header: object) -> list[bytes]:
    desc, frame = tensor(images())
    return infer_frames({**header, "tensors": [desc]}, frame)


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A MessagePack map of already packed keys and values, as given: any key type, duplicates kept."""
    assert len(pairs) < 16
    return bytes((0x80 | len(pairs),)) + b"".join(key + value for key, value in pairs)


def test_r1_replies_are_matched_by_id_with_many_in_flight(peer):
    sent = {f"hello-{i}" for i in range(4)} | {f"infer-{i}" for i in range(4)}
    for request_id in sorted(sent):
        if request_id.startswith("hello"):
            peer.send([control("HELLO"), pack({"id": request_id})])
        else:
            peer.send(valid_image(id=request_id))
    replies = [peer.recv() for _ in sent]
    assert {r.header["id"] for r in replies} == sent
    assert {r.kind for r in replies if r.header["id"].startswith("infer")} == {"RESULT"}


def test_r2_every_request_gets_exactly_one_reply_and_the_server_goes_on(peer):
    hostile = [[b"\x01"], [b"\x01\x02\x03", pack({"id": 1})], [control("INFER"), b"\xc1"],
               [control("STATS"), pack({"id": 2}), b"extra"], [control("INFER"), pack({"id": 3, "tensors": 5})]]
    for frames in hostile:
        assert peer.ask(frames).kind == "ERROR"
    # Had any of them been answered twice, this reply would be a stale one.
    reply = peer.request("HELLO", {"id": "after"})
    assert reply.kind == "INFO" and reply.header["id"] == "after"


def test_r3_bad_control_frames_and_types_are_bad_requests(peer):
    for frames in ([b"\x01\x01\x00", pack({"id": 1})], [b"\x01", pack({"id": 1})],
                   [control(0x07), pack({"id": 1})], [control(0x81), pack({"id": 1})],
                   [control(0xFF), pack({"id": 1})]):
        assert peer.ask(frames).error == "BAD_REQUEST", frames[0]


def test_r4_another_version_is_unsupported(peer):
    reply = peer.ask([control("HELLO", version=2), pack({"id": 7})])
    assert reply.error == "UNSUPPORTED_VERSION" and reply.header["code"] == 2


def test_r5_a_header_missing_not_msgpack_or_not_a_map_is_a_bad_request(peer):
    for frames in ([control("HELLO")], [control("HELLO"), b"\xc1"], [control("HELLO"), pack([1, 2])]):
        reply = peer.ask(frames)
        assert reply.error == "BAD_REQUEST" and reply.header["id"] is None


def test_r7_dtypes_shapes_and_the_tensors_list_are_checked(peer):
    x = images()
    _, frame = tensor(x)
    for desc in ({"dtype": "float128", "shape": [1, 3, 32, 32], "frame": 0},
                 {"dtype": "float32", "shape": [1] * 9, "frame": 0},
                 {"dtype": "float32", "shape": [1, 3, -32, 32], "frame": 0},
                 {"dtype": "float32", "shape": "1,3,32,32", "frame": 0}):
        assert peer.ask(infer_frames({"id": 1, "tensors": [desc]}, frame)).error == "BAD_REQUEST", desc
    for tensors in ("x", [1], None):
        assert peer.ask(infer_frames({"id": 1, "tensors": tensors}, frame)).error == "BAD_REQUEST", tensors
    # Each dimension is in [0, 268435456]: one past it is refused for the bound, whatever else is wrong.
    desc = {"dtype": "uint8", "shape": [1, 3, 32, 268435457], "frame": 0}
    reply = peer.ask(infer_frames({"id": 1, "tensors": [desc]}, b""))
    assert reply.error == "BAD_REQUEST" and "268435456" in reply.header["message"], reply.header


def test_r8_booleans_are_not_integers(peer):
    _, frame = tensor(images())
    for desc in ({"dtype": "float32", "shape": [True, 3, 32, 32], "frame": 0},
                 {"dtype": "float32", "shape": [1, 3, 32, 32], "frame": False}):
        assert peer.ask(infer_frames({"id": 1, "tensors": [desc]}, frame)).error == "BAD_REQUEST", desc


def test_r9_a_frame_holds_exactly_its_elements_little_endian(peer):
    desc, frame = tensor(images())
    for wrong in (frame[:-1], frame + b"\x00", b""):
        assert peer.ask(infer_frames({"id": 1, "tensors": [desc]}, wrong)).error == "BAD_REQUEST"
    x = images(2)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.5, -2.0  # little-endian float32 read back as these values (R18)
    reply = peer.infer(x)
    assert reply.kind == "RESULT"
    logits = np.frombuffer(reply.frames[0], dtype="<f4").reshape(2, 1000)
    assert (logits[0] == 1.5).all() and (logits[1] == -2.0).all()


def test_r10_each_frame_belongs_to_exactly_one_tensor(peer):
    desc, frame = tensor(images())
    cases = [
        infer_frames({"id": 1, "tensors": [desc]}, frame, frame),  # a frame nobody names
        infer_frames({"id": 1, "tensors": [{**desc, "frame": 1}]}, frame),  # past the last frame
        infer_frames({"id": 1, "tensors": [desc, desc]}, frame),  # named twice
        infer_frames({"id": 1, "tensors": [{**desc, "shm": {"region": 0, "offset": 0, "nbytes": len(frame)}}]},
                     frame),  # both a frame and shm
    ]
    for frames in cases:
        assert peer.ask(frames).error == "BAD_REQUEST"


def test_r11_ids_are_echoed_and_bad_ones_refused(peer):
    for request_id in (None, 0, -(2**63), 2**64 - 1, "s" * 64, b"b" * 64, "é"):
        reply = peer.request("HELLO", {"id": request_id})
        assert reply.kind == "INFO" and reply.header["id"] == request_id, request_id
    assert peer.request("HELLO", {}).header["id"] is None  # absent = nil
    for request_id in (True, 1.5, [1], {"a": 1}, "s" * 65, b"b" * 65):
        reply = peer.request("HELLO", {"id": request_id})
        assert reply.error == "BAD_REQUEST" and reply.header["id"] is None, request_id


def test_r12_an_error_carries_the_id_whenever_it_was_readable(peer):
    desc, frame = tensor(images())
    cases = [
        [control("HELLO", version=9), pack({"id": "v"})],  # unsupported version
        [control(0x07), pack({"id": "v"})],  # unknown type
        [control(0x82), pack({"id": "v"})],  # a reply type
        [control("HELLO"), pack({"id": "v"})] + [b""] * 9,  # too many frames
        [control("HELLO"), pack({"id": "v"}), b""],  # a stray frame (R55)
        [control("HELLO"), pack({"id": "v"}) + b"\x00"],  # bytes after the map (R56)
        [control("HELLO"), raw_map((pack("id"), pack("v")), (pack(7), pack(1)))],  # an int key (R14)
        infer_frames({"id": "v", "tensors": [{**desc, "dtype": "float128"}]}, frame),  # a bad tensor
    ]
    for frames in cases:
        reply = peer.ask(frames)
        assert reply.kind == "ERROR" and reply.header["id"] == "v", reply.header


def test_r13_ts_is_echoed_in_results_and_errors_and_checked(peer):
    reply = peer.ask(valid_image(id=1, ts=[1, 2.5, -3]))
    assert reply.kind == "RESULT" and reply.header["ts"] == [1, 2.5, -3]
    desc, frame = tensor(images()[0])  # rank 3: refused after id and ts were read
    reply = peer.ask(infer_frames({"id": 2, "ts": [7, 8], "tensors": [desc]}, frame))
    assert reply.error == "BAD_REQUEST" and (reply.header["id"], reply.header["ts"]) == (2, [7, 8])
    for ts in ([True], "12", [[1]], {"a": 1}):
        reply = peer.ask(valid_image(id=3, ts=ts))
        assert reply.error == "BAD_REQUEST" and reply.header["id"] == 3 and reply.header["ts"] is None, ts
    assert peer.request("HELLO", {"id": 4}).header.get("ts") is None
    # Whenever the header is a readable map and ts valid, whatever else was wrong, the id included.
    header = pack({"id": 5, "ts": [5, 6], "tensors": [desc]})
    for frames in ([control("INFER", version=0), header, frame], [control("INFER", version=7), header, frame],
                   [control("INFER"), header] + [frame] * 9,  # too many frames
                   [control("INFER"), pack({"id": 1.5, "ts": [5, 6], "tensors": [desc]}), frame],  # a bad id
                   [control("STATS"), pack({"id": 5, "ts": [5, 6]}), b""]):  # another request type
        reply = peer.ask(frames)
        assert reply.kind == "ERROR" and reply.header["ts"] == [5, 6], (frames[0], reply.header)


def test_r14_keys_are_str_other_key_types_are_refused_with_the_id_unknown_keys_ignored(peer):
    reply = peer.ask([control("HELLO"), pack({b"id": 5})])
    assert reply.error == "BAD_REQUEST" and reply.header["id"] == 5
    id_and_ts = (pack("id"), pack(901)), (pack("ts"), pack([1]))
    for key in (pack(7), pack(b"colour"), pack(None), pack(True), pack(1.5), pack([1, 2]), pack({"a": 1}),
                b"\xd4\x01\x02"):  # int, bin, nil, bool, float, array, map, ext (fixext 1)
        reply = peer.ask([control("HELLO"), raw_map(*id_and_ts, (key, pack(1)))])
        assert reply.error == "BAD_REQUEST" and (reply.header["id"], reply.header["ts"]) == (901, [1]), key
    desc, frame = tensor(images())
    nested = raw_map(*[(pack(k), pack(v)) for k, v in desc.items()], (pack(3), pack(1)))  # an int key inside
    reply = peer.ask([control("INFER"), raw_map(*id_and_ts, (pack("tensors"), b"\x91" + nested)), frame])
    assert reply.error == "BAD_REQUEST" and reply.header["id"] == 901
    reply = peer.request("HELLO", {"id": 6, "colour": "blue"})
    assert reply.kind == "INFO" and reply.header["id"] == 6
    reply = peer.ask(valid_image(id=7, later_addition={"x": 1}))
    assert reply.kind == "RESULT"
    nested = raw_map(*[(pack(k), pack(v)) for k, v in desc.items()], (pack(b"colour"), pack(1)))
    assert peer.ask([control("INFER"), raw_map((pack("tensors"), b"\x91" + nested)), frame]).kind == "RESULT"


def test_r55_only_infer_carries_frames_after_the_header(peer, tmp_path):
    for kind, header in (("HELLO", {}), ("STATS", {}), ("SHM_UNREGISTER", {"all": True}),
                         ("CONTROL", {"action": "profile_start", "dir": str(tmp_path)})):
        for stray in (b"", b"x" * 100):
            reply = peer.ask([control(kind), pack({"id": kind, "ts": [1], **header}), stray])
            assert reply.error == "BAD_REQUEST" and (reply.header["id"], reply.header["ts"]) == (kind, [1]), kind
    # Nothing was done: no profiling window was opened, so there is none to stop.
    assert peer.request("CONTROL", {"id": "stop", "action": "profile_stop"}).error == "BAD_REQUEST"


def test_r56_a_header_is_one_map_and_a_key_given_twice_takes_its_last_value(peer):
    for trailing in (b"\x00", b"\xc0", pack({"id": 2})):
        reply = peer.ask([control("HELLO"), pack({"id": "t", "ts": [3]}) + trailing])
        assert reply.error == "BAD_REQUEST" and (reply.header["id"], reply.header["ts"]) == ("t", [3]), trailing
    reply = peer.ask([control("HELLO"), raw_map((pack("id"), pack(1)), (pack("id"), pack(2)))])
    assert reply.kind == "INFO" and reply.header["id"] == 2
    desc, frame = tensor(images())
    twice = raw_map((pack("dtype"), pack("float128")), *[(pack(k), pack(v)) for k, v in desc.items()])
    reply = peer.ask([control("INFER"), raw_map((pack("tensors"), pack("no")), (pack("tensors"), b"\x91" + twice)),
                      frame])
    assert reply.kind == "RESULT", reply.header


def test_r57_id_and_ts_are_echoed_by_value_not_by_bytes(peer):
    desc, frame = tensor(images())
    float32_ts = b"\x92\xca" + struct.pack(">f", 1.5) + b"\xd2" + struct.pack(">i", 7)  # [float32 1.5, int32 7]
    for kind, header, frames in (
            ("RESULT", raw_map((pack("id"), b"\xcf" + struct.pack(">Q", 5)), (pack("ts"), float32_ts),
                               (pack("tensors"), pack([desc]))), [frame]),
            ("ERROR", raw_map((pack("id"), b"\xcf" + struct.pack(">Q", 5)), (pack("ts"), float32_ts),
                              (pack("tensors"), pack([{**desc, "dtype": "float128"}]))), [frame])):
        peer.send([control("INFER"), header, *frames])
        assert peer.sock.poll(10_000)
        reply = peer.sock.recv_multipart()
        assert reply[0][1] == {"RESULT": 0x82, "ERROR": 0xE0}[kind]
        decoded = msgpack.unpackb(reply[1], raw=False)
        assert (decoded["id"], decoded["ts"]) == (5, [1.5, 7])
        assert pack("id") + b"\x05" in reply[1]  # the shortest form of 5: a positive fixint
        assert pack("ts") + b"\x92\xcb" + struct.pack(">d", 1.5) + b"\x07" in reply[1]  # float64 1.5, fixint 7
    for request_id in ("ab", b"ab"):  # a str stays a str, a bin a bin
        peer.send([control("HELLO"), pack({"id": request_id})])
        assert peer.sock.poll(10_000)
        assert pack("id") + pack(request_id) in peer.sock.recv_multipart()[1]


def test_r6_dead_is_one_frame_sent_before_exit(server_factory):
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    with peers(server.endpoint) as new:
        watcher, stopper = new(), new()
        assert watcher.request("HELLO", {"id": 1}).kind == "INFO"  # heard from recently
        assert stopper.request("CONTROL", {"id": 2, "action": "shutdown"}).kind == "CONTROL_REPLY"
        assert watcher.recv(30_000).kind == "DEAD"  # parse() checks it is exactly 01 ff
    assert server.proc.wait(30) == 0
