"""PROTOCOL.md: Transport, Message layout, Tensors and Header fields (R1-R14)."""

from __future__ import annotations

import numpy as np

from tests.conformance.conftest import control, images, pack, peers, tensor


def infer_frames(header: dict, *frames: bytes) -> list[bytes]:
    return [control("INFER"), pack(header), *frames]


def valid_image(**header: object) -> list[bytes]:
    desc, frame = tensor(images())
    return infer_frames({**header, "tensors": [desc]}, frame)


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


def test_r14_keys_are_str_an_id_under_a_bin_key_is_refused_unknown_keys_ignored(peer):
    reply = peer.ask([control("HELLO"), pack({b"id": 5})])
    assert reply.error == "BAD_REQUEST" and reply.header["id"] == 5
    reply = peer.request("HELLO", {"id": 6, "colour": "blue"})
    assert reply.kind == "INFO" and reply.header["id"] == 6
    reply = peer.ask(valid_image(id=7, later_addition={"x": 1}))
    assert reply.kind == "RESULT"


def test_r6_dead_is_one_frame_sent_before_exit(server_factory):
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    with peers(server.endpoint) as new:
        watcher, stopper = new(), new()
        assert watcher.request("HELLO", {"id": 1}).kind == "INFO"  # heard from recently
        assert stopper.request("CONTROL", {"id": 2, "action": "shutdown"}).kind == "CONTROL_REPLY"
        assert watcher.recv(30_000).kind == "DEAD"  # parse() checks it is exactly 01 ff
    assert server.proc.wait(30) == 0
