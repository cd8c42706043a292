"""Cold start as the client reports it: server start to ready, load, compile,
first call per input shape, and the graphs compiled."""

from __future__ import annotations

import json

import pytest

from tests.support import run_cli

pytestmark = pytest.mark.integration  # every test here starts a process


def test_cold_start_is_itemised_with_compile_on(server_factory, tmp_path) -> None:
    server = server_factory("--device", "cpu", "--model", "noop", "--compile", "--warmup-batch-sizes", "2",
                            "--warmup-image-size", "32")
    full = tmp_path / "run.json"
    proc = run_cli("client", "--server", server.endpoint, "--batch-size", "3", "--image-size", "32",
                   "--num-iters", "5", "--output-file", "", "--json-file", str(full), timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(full.read_text())
    (cold,) = result["cold_start"]
    assert cold["endpoint"] == server.endpoint
    assert cold["startup_s"] > 0 and cold["torch_load_time"] >= 0
    # The warm-up shape compiled before the server was ready, and counts as compile time.
    assert cold["m_compile_time"] > 0 and cold["startup_s"] >= cold["m_compile_time"]
    # Both shapes ran for the first time once each: the warm-up's and the client's.
    assert set(cold["first_call_s"]) == {"float32[2,3,32,32]", "float32[3,3,32,32]"}
    assert all(v > 0 for v in cold["first_call_s"].values())
    # dynamic=False: one graph per batch shape, so the client's shape was a recompilation.
    assert cold["compiled_graphs"] >= 2
    assert cold["warmup_latency"] >= cold["first_call_s"]["float32[3,3,32,32]"]
    assert f"cold start ({server.endpoint}): start to ready" in proc.stdout and "recompilations" in proc.stdout


def test_cold_start_without_compile_reports_no_graphs(noop_server, tmp_path) -> None:
    full = tmp_path / "run.json"
    proc = run_cli("client", "--server", noop_server.endpoint, "--batch-size", "2", "--image-size", "32",
                   "--num-iters", "5", "--output-file", "", "--json-file", str(full))
    assert proc.returncode == 0, proc.stderr
    (cold,) = json.loads(full.read_text())["cold_start"]
    assert cold["compiled_graphs"] == 0 and cold["m_compile_time"] == 0
    assert "float32[2,3,32,32]" in cold["first_call_s"]
