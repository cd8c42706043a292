"""PROTOCOL.md: Requests and replies: HELLO, INFER, STATS, CONTROL, ERROR (R15-R20, R30-R34, R58)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.conformance.client import NOOP, documented_python, images, pack, peers, stats, tensor

pytestmark = pytest.mark.integration  # every test here starts a process

INFO_KEYS = {
    "id", "protocol_version", "server_version", "instance", "state", "model", "model_source", "device",
    "device_name", "gpu_uuid", "compile", "compile_mode", "precision", "channels_last", "num_workers",
    "max_batch_size", "batch_timeout_us", "max_inflight", "warmup_batch_sizes", "max_frame_bytes", "max_frames",
    "torch_version", "cuda_version", "torch_threads", "torch_load_time", "m_compile_time", "startup_s",
    "endpoints", "hostname", "pid", "config", "thread_split", "backend", "warmup_first_call_s", "shm",
    "last_reload", "input_shape", "input_min_side", "input_dtypes",
}
SERVER_TIMES = {"queue_ns", "decode_ns", "h2d_ns", "compute_ns", "d2h_ns", "encode_ns", "batch_rows", "worker"}
STATS_KEYS = {"id", "counters", "inflight", "inflight_peak", "inflight_bytes", "workers_busy", "cpu_user_s", "cpu_system_s", "rss_bytes", "uptime_s",
              "mono_ns", "gpu", "gpu_source", "gpu_reason", "first_call_s", "compiled_graphs", "shm", "backpressure",
              "last_reload"}
COUNTERS = {
    "received", "infer_received", "answered", "errors_sent", "error_bad_request", "error_unsupported_version",
    "error_overloaded", "error_shutting_down", "error_internal", "error_unauthorized", "infer_errors",
    "replies_other", "replies_dropped", "replies_dropped_gone", "replies_dropped_hwm", "replies_dropped_bytes",
    "send_blocked", "send_blocked_ns", "peers_connected", "peers_disconnected", "handshakes_failed",
    "shm_infer_received", "shm_registered", "shm_unregistered", "shm_peers_released",
}
BACKPRESSURE = {"connections", "blocked_peers", "queued_reply_bytes", "queued_reply_peers", "queued_reply_bytes_peak",
                "max_queued_reply_bytes"}
ERROR_CODES = {"BAD_REQUEST": 1, "UNSUPPORTED_VERSION": 2, "OVERLOADED": 3, "SHUTTING_DOWN": 4, "INTERNAL": 5,
               "UNAUTHORIZED": 6}


def test_r15_info_describes_the_server(peer):
    info = peer.request("HELLO", {"id": "h"}).header
    assert INFO_KEYS <= set(info), INFO_KEYS - set(info)
    assert info["protocol_version"] == 1 and info["state"] == "ready" and info["id"] == "h"
    int(info["instance"], 16)
    assert {"max_inflight_bytes", "max_queued_reply_bytes", "peer_timeout_s"} <= set(info["config"])
    split = info["thread_split"]
    assert set(split) == {"workers", "threads_each", "threads", "cores", "omp_wait_policy", "gomp_spincount"}
    assert all(split[k] is None or isinstance(split[k], str) for k in ("omp_wait_policy", "gomp_spincount"))
    assert info["last_reload"] is None  # started from the command line


def test_r16_the_input_must_be_one_image_batch(peer):
    for dtype in ("float32", "float16", "uint8"):
        assert peer.infer(images(dtype=dtype)).kind == "RESULT", dtype
    assert peer.infer(np.zeros((1, 3, 32, 48), "float32")).kind == "RESULT"  # H and W need not be equal
    message = peer.infer(np.zeros((3, 32, 48), "float32")).header["message"]
    assert "[B, 3, H, W]" in message, message  # as the document's refused request shows, not [B, 3, S, S]
    bf16 = np.zeros((1, 3, 32, 32), dtype="<u2").tobytes()  # bfloat16: 2 bytes each
    desc = {"dtype": "bfloat16", "shape": [1, 3, 32, 32], "frame": 0}
    assert peer.request("INFER", {"tensors": [desc]}, bf16).kind == "RESULT"
    refused = [np.zeros((3, 32, 32), "float32"), np.zeros((1, 4, 32, 32), "float32"),
               np.zeros((1, 3, 16, 32), "float32"), np.zeros((1, 3, 32, 4097), "uint8"),
               np.zeros((1, 3, 32, 32), "int32"), np.zeros((0, 3, 32, 32), "float32"),
               np.zeros((4097, 3, 32, 32), "uint8")]
    for x in refused:
        assert peer.infer(x, id=1).error == "BAD_REQUEST", x.shape
    assert peer.request("INFER", {"id": 2, "tensors": []}).error == "BAD_REQUEST"
    (a, fa), (b, fb) = tensor(images(), 0), tensor(images(), 1)
    assert peer.request("INFER", {"id": 3, "tensors": [a, b]}, fa, fb).error == "BAD_REQUEST"


def test_r17_only_tensors_is_required(peer):
    reply = peer.infer(images())
    assert reply.kind == "RESULT" and reply.header["id"] is None and reply.header["ts"] is None


def test_r18_noop_returns_each_samples_first_element_after_normalisation(peer):
    x = np.zeros((3, 3, 32, 32), dtype="float32")
    x[:, 0, 0, 0] = [0.25, 7.0, -1.0]
    logits = np.frombuffer(peer.infer(x).frames[0], dtype="<f4").reshape(3, 1000)
    assert [set(row) for row in logits] == [{0.25}, {7.0}, {-1.0}]
    pixels = np.zeros((2, 3, 32, 32), dtype="uint8")
    pixels[:, 0, 0, 0] = [255, 0]
    logits = np.frombuffer(peer.infer(pixels).frames[0], dtype="<f4").reshape(2, 1000)
    np.testing.assert_allclose(logits[:, 0], [(1 - 0.485) / 0.229, (0 - 0.485) / 0.229], rtol=1e-5)


def test_r19_result_carries_the_logits_and_the_servers_durations(peer):
    reply = peer.infer(images(4), id="r", ts=[1, 2])
    header = reply.header
    assert (header["id"], header["ts"]) == ("r", [1, 2])
    assert header["tensors"] == [{"dtype": "float32", "shape": [4, 1000], "frame": 0}]
    assert len(reply.frames) == 1 and len(reply.frames[0]) == 4 * 1000 * 4
    assert set(header["server"]) == SERVER_TIMES
    assert all(isinstance(v, int) and v >= 0 for v in header["server"].values())
    assert header["server"]["batch_rows"] >= 4


def test_r20_stats_names_every_counter_in_lower_case(peer):
    reply = peer.request("STATS", {"id": "s"})
    assert reply.kind == "STATS_REPLY" and reply.header["id"] == "s"
    assert STATS_KEYS <= set(reply.header), STATS_KEYS - set(reply.header)
    assert set(reply.header["counters"]) == COUNTERS
    assert all(isinstance(v, int) for v in reply.header["counters"].values())
    assert set(reply.header["backpressure"]) == BACKPRESSURE


def test_r31_a_reload_that_breaks_a_rule_is_refused_and_nothing_changes(peer):
    instance = peer.request("HELLO", {"id": 1}).header["instance"]
    for settings, named in (({"num_workers": -1}, "num_workers"), ({"max_batch_size": "8"}, "max_batch_size"),
                            ({"bind": ["tcp://0.0.0.0:1"]}, "bind"), ({"no_such_setting": 1}, "no_such_setting"),
                            ({"warmup_batch_sizes": [0]}, "warmup_batch_sizes")):
        reply = peer.request("CONTROL", {"id": 2, "action": "reload", "settings": settings})
        assert reply.error == "BAD_REQUEST" and named in reply.header["message"], reply.header
    for header in ({"id": 3, "action": "restart"}, {"id": 4, "action": "reload"}, {"id": 5}):
        assert peer.request("CONTROL", header).error == "BAD_REQUEST", header  # R30: unknown action, no settings
    assert peer.request("HELLO", {"id": 6}).header["instance"] == instance


def test_r30_r34_shutdown_drains_refuses_new_work_and_errors_are_well_formed(server_factory):
    # One worker, 2 s per request, at most one in flight: the second INFER meets a full server
    # whatever the machine's speed.
    server = server_factory("--device", "cpu", "--model", "sleep", "--service-ms", "2000", "--no-compile",
                            "--num-workers", "1", "--max-inflight", "1")
    with peers(server.endpoint) as new:
        client, admin = new(), new()
        desc, frame = tensor(images())
        client.send([bytes((1, 2)), pack({"id": "slow", "tensors": [desc]}), frame])
        overloaded = client.request("INFER", {"id": "extra", "ts": [9], "tensors": [desc]}, frame)
        reply = admin.request("CONTROL", {"id": "stop", "action": "shutdown"})
        late = client.request("INFER", {"id": "late", "tensors": [desc]}, frame)
        first = client.recv(30_000)
        dead = client.recv(30_000)
    assert reply.kind == "CONTROL_REPLY" and set(reply.header) == {"id", "accepted", "instance"}
    assert reply.header["id"] == "stop" and reply.header["accepted"] is True
    for error, name in ((overloaded, "OVERLOADED"), (late, "SHUTTING_DOWN")):
        assert error.error == name and error.header["code"] == ERROR_CODES[name]
        assert set(error.header) == {"id", "code", "name", "message", "ts"} and len(error.header["message"]) <= 1000
    assert overloaded.header["ts"] == [9] and late.header["ts"] is None
    assert first.kind == "RESULT" and first.header["id"] == "slow"  # what was accepted is finished
    assert dead.kind == "DEAD"
    assert server.proc.wait(30) == 0


def test_r33_control_needs_curve_on_a_non_loopback_bind(server_factory):
    server = server_factory(*NOOP, bind="tcp://0.0.0.0:*")
    endpoint = "tcp://127.0.0.1:" + server.endpoint.rsplit(":", 1)[1]
    with peers(endpoint) as new:
        reply = new().request("CONTROL", {"id": 1, "action": "shutdown"})
    assert reply.error == "UNAUTHORIZED" and reply.header["code"] == 6
    assert stats(endpoint)["counters"]["error_unauthorized"] == 1 and server.proc.poll() is None


def next_instance(endpoint: str, old: str, timeout_s: float = 180.0) -> dict:
    """HELLO on a fresh connection per probe until another instance answers, ready (R32)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with peers(endpoint) as new:
            probe = new()
            probe.send([bytes((1, 1)), pack({"id": "probe"})])
            if probe.sock.poll(2000):
                info = probe.recv().header
                if info["instance"] != old and info["state"] == "ready":
                    return info
    raise AssertionError(f"no new instance within {timeout_s:g} s")


def test_r32_a_reload_comes_back_applied_or_rolled_back(server_factory, tmp_path):
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"garbage")  # the checkpoint name torchvision uses
    server = server_factory(*NOOP, "--num-workers", "1", "--model-dir", str(tmp_path))
    with peers(server.endpoint) as new:
        reply = new().request("CONTROL", {"id": 1, "action": "reload", "settings": {"model": "resnet18"}})
    failed = next_instance(server.endpoint, reply.header["instance"])
    assert failed["last_reload"]["outcome"] == "failed" and failed["model"] == "noop"
    assert failed["last_reload"]["accepted_by"] == reply.header["instance"] and failed["last_reload"]["reason"]
    assert stats(server.endpoint)["last_reload"] == failed["last_reload"]
    with peers(server.endpoint) as new:
        reply = new().request("CONTROL", {"id": 2, "action": "reload", "settings": {"max_batch_size": 2}})
    applied = next_instance(server.endpoint, reply.header["instance"])
    assert applied["last_reload"] == {"outcome": "applied", "settings": {"max_batch_size": 2},
                                      "accepted_by": failed["instance"], "reason": None}
    assert applied["max_batch_size"] == 2 and applied["startup_s"] > 0


def test_r58_random_init_weights_are_the_documented_recipe(server_factory):
    import torch

    server = server_factory("--device", "cpu", "--model", "resnet18", "--no-compile", "--num-workers", "1")
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 48), dtype=np.float32)
    with peers(server.endpoint) as new:
        peer = new()
        info = peer.request("HELLO", {"id": 1}).header
        reply = peer.infer(x)
    assert info["model_source"] == "random-init(seed=0)" and reply.kind == "RESULT"
    got = np.frombuffer(reply.frames[0], dtype="<f4").reshape(2, 1000)
    with torch.inference_mode():
        want = documented_python("random_init")["random_init"]("resnet18")(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
