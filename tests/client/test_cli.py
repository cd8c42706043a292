"""infer-client end to end against real servers."""

from __future__ import annotations

import csv
import json
import socket
import time

import pytest

from tests.support import run_cli

pytestmark = pytest.mark.integration  # every test here starts a process


def test_client_cli_writes_sane_csv_and_json(resnet_server, tmp_path) -> None:
    out = tmp_path / "out.csv"
    full = tmp_path / "full.json"
    args = ["--server", resnet_server.endpoint, "--batch-size", "2", "--image-size", "64", "--num-iters", "20",
            "--output-file", str(out), "--json-file", str(full), "--json"]
    first = run_cli("client", *args)
    assert first.returncode == 0, first.stderr
    second = run_cli("client", *args)
    assert second.returncode == 0, second.stderr
    metrics = json.loads(first.stdout.strip().splitlines()[-1])
    assert metrics["requests_ok"] == 20 and metrics["requests_failed"] == 0
    assert 0 < metrics["min_latency"] <= metrics["p50_latency"] <= metrics["p99_latency"] <= metrics["max_latency"]
    assert metrics["min_latency"] <= metrics["average_latency"] <= metrics["max_latency"]
    assert metrics["throughput"] > 0 and metrics["warmup_latency"] > 0
    assert metrics["batch_size"] == 2 and metrics["compile"] is False and metrics["device"] == "cpu"
    assert metrics["num_workers"] == json.loads(full.read_text())["servers"][0]["num_workers"] >= 1
    assert metrics["concurrency"] == 1
    assert metrics["host"] and metrics["timestamp_utc"].endswith("Z") and metrics["precision"] == "fp32"
    assert metrics["endpoint"] == resnet_server.endpoint
    assert metrics["gpu_util"] is None  # no GPU here: reported as unavailable, not failed
    assert "GPU: not available" in first.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2  # appended, header written once
    assert float(rows[0]["throughput"]) > 0
    assert json.loads(full.read_text())["latency"]["count"] == 20


def test_client_without_server_fails_within_timeout(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    proc = run_cli("client", "--server", endpoint, "--timeout", "2", "--output-file", "", timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"Error: no reply from {endpoint} within 2 s: is infer-server running there?"
    )
    assert elapsed < 30  # the timeout plus interpreter start-up, not a hang


def test_unbounded_concurrency_floods_like_the_seed(noop_server, tmp_path) -> None:
    proc = run_cli("client", "--server", noop_server.endpoint, "--batch-size", "1", "--image-size", "32",
                   "--num-iters", "200", "--concurrency", "0", "--output-file", "", "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["requests_ok"] == 200 and metrics["concurrency"] == 0


def test_unwritable_output_paths_are_refused_before_the_run(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # No server listens at the default endpoint in this test: a run would time out, a check answers at once.
    for args in (["--output-file", str(tmp_path)], ["--json-file", str(blocker / "x.json")],
                 ["--output-file", "", "--trace-file", str(blocker / "t.jsonl")]):
        proc = run_cli("client", "--timeout", "60", *args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and (str(tmp_path) in last), last


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--server", "not-an-endpoint"], "'not-an-endpoint' is not tcp://HOST:PORT"),
        (["--server", "tcp://127.0.0.1:70000"], "port '70000'"),
        (["--server", "tcp://127.0.0.1"], "has no HOST:PORT"),
        (["--batch-size", "0"], "--batch-size"),
        (["--num-iters", "5", "--duration", "2"], "give one, not both"),
        (["--progress-interval", "0"], "--progress-interval"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2_at_once(args: list[str], named: str) -> None:
    start = time.monotonic()
    proc = run_cli("client", *args, "--output-file", "", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and named in errors[0], proc.stderr
    assert time.monotonic() - start < 30  # refused, not waited on for the 30 s HELLO timeout
