"""Start-up errors, SIGTERM and correctness of the served model."""

from __future__ import annotations

import signal
import time

import pytest
import torch
import zmq
from torchvision.models.resnet import BasicBlock, ResNet

from client.transport import Backend
from common.protocol import MsgType
from server.models.spec import CHECKPOINT_NAME
from tests.support import run_cli, sleep_model

pytestmark = pytest.mark.integration  # every test here starts a process


def test_cuda_device_without_cuda_is_one_clear_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("server", "--device", "cuda:0", "--bind", "tcp://127.0.0.1:*", timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert lines == ["Error: device cuda:0 requested but CUDA is not available on this machine"]
    assert "Traceback" not in proc.stderr


def test_bind_in_use_is_one_clear_line(noop_server) -> None:
    proc = run_cli("server", "--device", "cpu", "--model", "noop", "--bind", noop_server.endpoint, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize("workers", ["2", "0"], ids=["pool", "inline"])
def test_sigterm_exits_zero_without_traceback(server_factory, workers: str) -> None:
    s = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", workers)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    assert "Traceback" not in s.stderr
    assert "stopped:" in s.stderr


def test_served_logits_match_in_process_resnet18(server_factory, tmp_path) -> None:
    torch.manual_seed(1234)
    reference = ResNet(BasicBlock, [2, 2, 2, 2]).eval()
    torch.save(reference.state_dict(), tmp_path / CHECKPOINT_NAME)
    s = server_factory("--device", "cpu", "--no-compile", "--model-dir", str(tmp_path))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ctx = zmq.Context()
    b = Backend(ctx, s.endpoint)
    try:
        assert b.hello(30)["model_source"].endswith(CHECKPOINT_NAME)
        reply = b.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=60, tensors=(x,))
    finally:
        b.close()
        ctx.term()
    with torch.inference_mode():
        expected = reference(x)
    torch.testing.assert_close(reply.tensors[0], expected, rtol=1e-5, atol=1e-5)


def test_inflight_requests_finish_on_sigterm_and_new_ones_are_refused(server_factory) -> None:
    # 500 ms a request on one worker: the four are still in flight when the server starts draining,
    # however fast the machine.
    s = server_factory(*sleep_model(500.0))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(s.endpoint)
    from common import codec

    x = torch.randn(1, 3, 64, 64)
    try:
        for i in range(4):
            sock.send_multipart(codec.encode(MsgType.INFER, {"id": i, "ts": [0, 0]}, (x,)))
        # The server has accepted them once STATS (answered by the I/O thread) says so.
        stats_b = Backend(ctx, s.endpoint)
        deadline = time.monotonic() + 30
        while stats_b.stats()["counters"].get("infer_received", 0) < 4:
            assert time.monotonic() < deadline
        s.proc.send_signal(signal.SIGTERM)
        # Signals are asynchronous: wait until the server says it is draining.
        while stats_b.hello(10)["state"] != "draining":
            assert time.monotonic() < deadline
        stats_b.close()
        sock.send_multipart(codec.encode(MsgType.INFER, {"id": "late", "ts": [0, 0]}, (x,)))
        replies = {}
        while len(replies) < 5:
            assert sock.poll(60_000), f"only {len(replies)} replies"
            msg = codec.decode(sock.recv_multipart())
            if msg.msg_type == MsgType.DEAD:
                break
            replies[msg.header["id"]] = msg
        assert all(replies[i].msg_type == MsgType.RESULT for i in range(4))
        assert replies["late"].msg_type == MsgType.ERROR and replies["late"].header["name"] == "SHUTTING_DOWN"
    finally:
        sock.close()
        ctx.term()
    assert s.proc.wait(30) == 0


def test_each_invalid_reload_is_refused_and_the_server_keeps_serving(server_factory) -> None:
    from client.transport import ClientError
    from tests.server.test_config import BAD_RELOADS, WRONG_TYPE_RELOADS

    s = server_factory("--device", "cpu", "--model", "noop", "--no-compile", "--num-workers", "1")
    ctx = zmq.Context()
    b = Backend(ctx, s.endpoint)
    try:
        instance = b.hello(30)["instance"]
        for setting, settings in BAD_RELOADS + WRONG_TYPE_RELOADS:
            with pytest.raises(ClientError, match="BAD_REQUEST") as refused:
                b.control("reload", settings=settings)
            assert setting in str(refused.value)
        info = b.hello(30)
        assert info["instance"] == instance and info["state"] == "ready"  # no re-exec: the same server
        assert info["config"]["num_workers"] == 1
        x = torch.zeros(2, 3, 32, 32)
        reply = b.request(MsgType.INFER, {"ts": [0, 0]}, timeout_s=30, tensors=(x,))
        assert reply.msg_type == MsgType.RESULT
    finally:
        b.close()
        ctx.term()
    assert s.proc.poll() is None


def test_info_carries_the_whole_configuration(server_factory) -> None:
    import dataclasses

    from server.config import ServerConfig

    s = server_factory("--device", "cpu", "--model", "sleep", "--service-ms", "1", "--no-compile",
                       "--max-inflight-bytes", "1GiB", "--log-level", "warning")
    ctx = zmq.Context()
    b = Backend(ctx, s.endpoint)
    try:
        info = b.hello(30)
    finally:
        b.close()
        ctx.term()
    config = info["config"]
    assert set(config) == {f.name for f in dataclasses.fields(ServerConfig)}
    assert config["model"] == "sleep" and config["service_ms"] == 1.0 and config["compile"] is False
    assert config["max_inflight_bytes"] == 1 << 30 and config["bind"] == ["tcp://127.0.0.1:*"]
    assert info["num_workers"] == config["num_workers"]  # the keys clients read before `config` existed


def test_a_taken_port_is_reported_before_the_model_loads(noop_server) -> None:
    proc = run_cli("server", "--device", "cpu", "--model", "resnet18", "--bind", noop_server.endpoint, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: cannot bind {noop_server.endpoint}")
    assert "loaded" not in proc.stderr


def test_an_unwritable_ready_file_is_reported_before_the_model_loads(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ready = blocker / "ready.json"  # its directory is a regular file
    proc = run_cli("server", "--device", "cpu", "--model", "resnet18", "--bind", "tcp://127.0.0.1:*",
                   "--ready-file", str(ready), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: --ready-file: cannot write {ready}")
    assert "loaded" not in proc.stderr
