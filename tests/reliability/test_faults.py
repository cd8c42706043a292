"""Overload and injected faults: nothing accepted is lost, and the client says what happened.

Where an outcome depends on the server being slower than the offered load (an
overload, a run still going when the server is killed), the server is the
sleep model, whose capacity is known whatever the machine. Every test whose
server survives ends by checking that its counters add up (PROTOCOL.md's
invariants, tests/support.py).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from server.launch import wait_for_line
from tests.support import ROOT, check_counters, record_figures, server_stats, settled_counters, sleep_model

pytestmark = pytest.mark.integration  # every test here starts a process

CLIENT_TIMEOUT_S = 3.0


def client_cmd(endpoint: str, tmp_path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "client", "--server", endpoint, "--batch-size", "1", "--image-size", "32",
        "--warmup", "1", "--gpu-source", "off", "--output-file", str(tmp_path / "out.csv"),
        "--json-file", str(tmp_path / "out.json"), *extra,
    ]


def test_overload_flood_gets_overloaded_errors(server_factory, tmp_path):
    # 20 ms a request on one worker: at most 50 requests/s, so 4x that fills the
    # 2-request cap at once and keeps it full, however fast the machine.
    server = server_factory(*sleep_model(20.0, "--max-inflight", "2"))
    before = server_stats(server.endpoint)
    done = subprocess.run(client_cmd(server.endpoint, tmp_path, "--concurrency", "0", "--request-rate", "200",
                                     "--duration", "2", "--json"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    after, counters = settled_counters(server.endpoint)
    assert counters.get("error_overloaded", 0) > 0, counters
    assert summary["requests_failed"] >= counters["error_overloaded"] * 0.99
    growth = after["rss_bytes"] - before["rss_bytes"]
    record_figures("overload", client_ok=summary.get("requests_ok"), client_failed=summary["requests_failed"],
                   overloaded=counters["error_overloaded"], infer_received=counters["infer_received"],
                   answered=counters.get("answered", 0), inflight_peak=after["inflight_peak"],
                   rss_before_mb=round(before["rss_bytes"] / 2**20, 1),
                   rss_after_mb=round(after["rss_bytes"] / 2**20, 1))
    assert after["inflight_peak"] <= 2
    assert growth < 100 * 2**20


def test_server_sigkill_mid_run(server_factory, tmp_path):
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    client = subprocess.Popen(
        client_cmd(server.endpoint, tmp_path, "--concurrency", "4", "--duration", "60",
                   "--timeout", str(CLIENT_TIMEOUT_S), "--window-s", "0.2"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # Kill once requests are flowing: the server has answered some measured requests.
        deadline = time.monotonic() + 60
        while server_stats(server.endpoint)["counters"].get("answered", 0) < 50:
            assert time.monotonic() < deadline and client.poll() is None
        server.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, err = client.communicate(timeout=CLIENT_TIMEOUT_S + 30)
        stopped_after = time.monotonic() - killed
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    text = out.decode() + err.decode()
    assert client.returncode != 0, text[-2000:]
    assert "lost" in text
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    summary = json.loads((tmp_path / "out.json").read_text())
    row = rows[-1]
    assert int(row["requests_lost"]) > 0 or int(row["requests_failed"]) > 0, row
    assert summary
    record_figures("server_sigkill", stopped_after_s=round(stopped_after, 2), client_timeout_s=CLIENT_TIMEOUT_S,
                   answered=row.get("requests_ok"), failed=row["requests_failed"], lost=row["requests_lost"],
                   exit_code=client.returncode)
    assert stopped_after < CLIENT_TIMEOUT_S + 20


def test_client_killed_mid_run(server_factory, tmp_path):
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    before = server_stats(server.endpoint)
    victims = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        victims.append(subprocess.Popen(
            client_cmd(server.endpoint, tmp_path / str(i), "--concurrency", "0", "--request-rate", "3000",
                       "--duration", "60"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 60
    while server_stats(server.endpoint)["counters"].get("answered", 0) < 300:
        assert time.monotonic() < deadline
    for v in victims:
        v.send_signal(signal.SIGKILL)
        v.wait(30)
    # The dead clients' accepted requests still run; the survivor starts once they are done,
    # so none of its requests meets a full in-flight cap.
    deadline = time.monotonic() + 60
    while server_stats(server.endpoint)["inflight"] > 0:
        assert time.monotonic() < deadline
    # A survivor runs a whole measurement after the others died.
    done = subprocess.run(client_cmd(server.endpoint, tmp_path, "--num-iters", "200", "--json"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    after, counters = settled_counters(server.endpoint)
    growth = after["rss_bytes"] - before["rss_bytes"]
    record_figures("client_sigkill", clients_killed=len(victims), survivor_ok=summary.get("requests_ok"),
                   replies_dropped=counters.get("replies_dropped", 0), answered=counters.get("answered", 0),
                   dropped_gone=counters["replies_dropped_gone"], dropped_hwm=counters["replies_dropped_hwm"],
                   peers_connected=counters["peers_connected"], peers_disconnected=counters["peers_disconnected"],
                   rss_before_mb=round(before["rss_bytes"] / 2**20, 1),
                   rss_after_mb=round(after["rss_bytes"] / 2**20, 1))
    assert summary["requests_failed"] == 0 and summary["requests_lost"] == 0
    assert growth < 100 * 2**20


def test_killed_client_leaves_whole_results(server_factory, tmp_path):
    """SIGKILL the client at many points; the CSV always parses and the JSON is absent or whole."""
    server = server_factory("--device", "cpu", "--model", "noop", "--no-compile")
    header = None
    for attempt in range(4):
        client = subprocess.Popen(
            client_cmd(server.endpoint, tmp_path, "--num-iters", "50", "--json"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if attempt % 2:
            wait_for_line(client, "{", 60)  # killed just after it printed, while/after writing files
        client.send_signal(signal.SIGKILL)
        client.wait(30)
    client = subprocess.run(client_cmd(server.endpoint, tmp_path, "--num-iters", "50"), cwd=ROOT,
                            capture_output=True, timeout=120)
    assert client.returncode == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    rows = list(csv.reader(lines))
    header = rows[0]
    assert all(len(r) == len(header) for r in rows), "a partial CSV row"
    json.loads((tmp_path / "out.json").read_text())
    assert not list(tmp_path.glob("*.tmp*"))
    check_counters(server.endpoint)


def test_server_restarted_on_same_endpoint_recovers(server_factory, tmp_path):
    import socket

    with socket.socket() as s:  # a fixed port, so the replacement binds the same endpoint
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    # 5 ms a request: the 1000-request run takes at least 5 s, so it is still going when
    # the first server is killed after 100, and the replacement serves most of it.
    args = sleep_model(5.0)
    first = server_factory(*args, bind=endpoint)
    client = subprocess.Popen(
        client_cmd(endpoint, tmp_path, "--concurrency", "1", "--num-iters", "1000",
                   "--timeout", str(CLIENT_TIMEOUT_S), "--reconnect-timeout", "120"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while server_stats(endpoint)["counters"].get("answered", 0) < 100:
            assert time.monotonic() < deadline and client.poll() is None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        second = server_factory(*args, bind=endpoint)  # returns once the new server is bound
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    text = out.decode() + err.decode()
    result = json.loads((tmp_path / "out.json").read_text())
    (backend,) = result["backends"]
    answered_by_second = server_stats(second.endpoint)["counters"].get("answered", 0)
    record_figures("server_restart", lost=result["lost"], ok=result["ok"], recovery_s=backend["recovery_s"],
                   answered_by_replacement=answered_by_second, exit_code=client.returncode)
    assert client.returncode == 1, text[-2000:]  # requests in flight at the kill were lost, and said so
    assert "back after" in text
    assert backend["recoveries"] == 1 and backend["recovery_s"] > 0
    assert result["lost"] >= 1 and result["ok"] + result["lost"] == 1000
    assert answered_by_second > 100  # the run really went on against the restarted server
    check_counters(endpoint)
