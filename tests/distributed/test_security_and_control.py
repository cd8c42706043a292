"""CURVE, control refusal on non-loopback binds, reload with new settings, ipc:// endpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from client.transport import ClientError, CurveKeys
from common.protocol import ErrorCode
from common.security import generate_keys
from tests.support import NOOP, ROOT, SMALL_RUN, backend, run_cli

pytestmark = pytest.mark.integration  # every test here starts a process


def test_curve_authorised_client_runs_and_unauthorised_is_refused(server_factory, tmp_path) -> None:
    keys = generate_keys(tmp_path / "keys")
    intruder = generate_keys(tmp_path / "intruder")  # a key pair the server never authorised
    server = server_factory(*NOOP, "--curve-dir", str(tmp_path / "keys"))
    denied = subprocess.Popen(
        [sys.executable, "-m", "client", "--server", server.endpoint, *SMALL_RUN, "--num-iters", "5",
         "--timeout", "3", "--curve-client-key", str(intruder["client_secret"]),
         "--curve-server-key", str(keys["server_public"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        allowed = run_cli("client", "--server", server.endpoint, *SMALL_RUN, "--num-iters", "50", "--json",
                          "--curve-client-key", str(keys["client_secret"]),
                          "--curve-server-key", str(keys["server_public"]))
        _, denied_err = denied.communicate(timeout=60)
    finally:
        if denied.poll() is None:
            denied.kill()
            denied.wait()
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout.strip().splitlines()[-1])["requests_ok"] == 50
    assert denied.returncode != 0
    assert denied_err.strip().splitlines()[-1].startswith(f"Error: no reply from {server.endpoint} within 3 s")
    # A client without CURVE at all gets nothing either.
    plain = run_cli("client", "--server", server.endpoint, *SMALL_RUN, "--num-iters", "1", "--timeout", "2",
                    timeout=60)
    assert plain.returncode != 0 and "no reply" in plain.stderr
    # The server still serves the authorised client afterwards.
    with backend(server.endpoint, CurveKeys(keys["client_secret"], keys["server_public"])) as b:
        assert b.hello(10.0)["state"] == "ready"


def test_control_refused_on_non_loopback_bind_without_curve(server_factory) -> None:
    server = server_factory(*NOOP, bind="tcp://0.0.0.0:*")
    port = server.endpoint.rsplit(":", 1)[1]
    endpoint = f"tcp://127.0.0.1:{port}"  # the bind is what counts, not the peer's address
    with backend(endpoint) as b:
        for action, fields in (("shutdown", {}), ("reload", {"settings": {"num_workers": 3}})):
            with pytest.raises(ClientError, match=ErrorCode.UNAUTHORIZED.name):
                b.control(action, **fields)
        assert b.hello(10.0)["state"] == "ready"  # refused, still serving
    assert server.proc.poll() is None


def test_control_allowed_with_curve_on_non_loopback_bind(server_factory, tmp_path) -> None:
    keys = generate_keys(tmp_path / "keys")
    server = server_factory(*NOOP, "--curve-dir", str(tmp_path / "keys"), bind="tcp://0.0.0.0:*")
    endpoint = f"tcp://127.0.0.1:{server.endpoint.rsplit(':', 1)[1]}"
    with backend(endpoint, CurveKeys(keys["client_secret"], keys["server_public"])) as b:
        assert b.control("shutdown")["accepted"] is True
    assert server.proc.wait(30) == 0


def _hello_new_instance(endpoint: str, old_instance: str, timeout_s: float = 60.0) -> dict:
    """HELLO until a server instance other than `old_instance` answers (the old one may answer DEAD first)."""
    deadline = time.monotonic() + timeout_s
    with backend(endpoint) as b:
        while time.monotonic() < deadline:
            try:
                info = b.hello(5.0)
            except ClientError:
                continue  # the old instance announced shutdown, or the new one is still starting
            if info["instance"] != old_instance:
                return info
    raise TimeoutError(f"no new server instance on {endpoint} within {timeout_s} s")


def test_reload_re_execs_with_new_settings_on_the_same_endpoint(server_factory) -> None:
    server = server_factory(*NOOP, "--num-workers", "1")
    with backend(server.endpoint) as b:
        before = b.hello(10.0)
        assert before["num_workers"] == 1
        reply = b.control("reload", settings={"num_workers": 3})
        assert reply["accepted"] is True and reply["instance"] == before["instance"]
    after = _hello_new_instance(server.endpoint, before["instance"])
    assert after["num_workers"] == 3 and after["endpoints"] == before["endpoints"]
    assert after["pid"] == before["pid"]  # re-exec'd in place: same process, fresh interpreter
    assert after["startup_s"] > 0 and after["startup_s"] != before["startup_s"]
    proc = run_cli("client", "--server", server.endpoint, *SMALL_RUN, "--num-iters", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["num_workers"] == 3


def test_reload_rejects_unknown_settings(noop_server) -> None:
    with backend(noop_server.endpoint) as b:
        with pytest.raises(ClientError, match="cannot be reloaded"):
            b.control("reload", settings={"bind": ["tcp://0.0.0.0:1"]})
        assert b.hello(10.0)["state"] == "ready"


def test_ipc_endpoint_run(server_factory) -> None:
    # ipc paths are limited to ~107 bytes (sun_path): keep it short and under /tmp.
    directory = Path(tempfile.mkdtemp(prefix="infer-ipc-", dir="/tmp"))
    try:
        endpoint = f"ipc://{directory}/server.sock"
        assert len(endpoint) < 100
        server = server_factory(*NOOP, bind=endpoint)
        assert server.endpoint == endpoint
        proc = run_cli("client", "--server", endpoint, *SMALL_RUN, "--num-iters", "50", "--json")
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
        assert metrics["requests_ok"] == 50 and metrics["endpoint"] == endpoint
    finally:
        shutil.rmtree(directory, ignore_errors=True)
