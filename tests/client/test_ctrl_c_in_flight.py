"""Ctrl-C with requests in flight, as docs/client.md says: the first waits for their replies and counts them;
a second ends the client at once, with nothing written.

A sleep-model server of one worker holds each request for a known time, so requests are surely in flight
when the signal comes.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.client.test_progress import _client, read_until
from tests.support import sleep_model

pytestmark = pytest.mark.integration

SERVICE_S = 2.0


def test_the_first_ctrl_c_waits_for_the_replies_in_flight_and_counts_them(server_factory, tmp_path: Path) -> None:
    server = server_factory(*sleep_model(SERVICE_S * 1000))
    out_json = tmp_path / "out.json"
    proc = _client("--server", server.endpoint, "--batch-size", "1", "--image-size", "32", "--num-iters", "50",
                   "--warmup", "0", "--concurrency", "2", "--progress-interval", "0.2", "--output-file", "",
                   "--json-file", str(out_json))
    try:
        # A progress line that shows them: the measured phase may not have sent anything at its "measuring:" line.
        read_until(proc, proc.stderr, re.compile(r" \| 2 in flight \| "), timeout_s=120)
        proc.send_signal(signal.SIGINT)  # two requests in flight, each SERVICE_S on the server
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    result = json.loads(out_json.read_text())
    assert result["interrupted"] is True and result["lost"] == 0 and not result["failed"]
    # Every request sent was answered and counted: none of those in flight was given up.
    assert result["ok"] == result["sent"] >= 2
    assert result["duration_s"] >= SERVICE_S  # the last reply came at least one service time after the first send


def test_a_second_ctrl_c_ends_the_client_at_once_with_nothing_written(server_factory, tmp_path: Path) -> None:
    server = server_factory(*sleep_model(600_000))  # a reply that never comes within the test
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    proc = _client("--server", server.endpoint, "--batch-size", "1", "--image-size", "32", "--num-iters", "5",
                   "--warmup", "0", "--timeout", "600", "--progress-interval", "0.2", "--output-file", str(out_csv),
                   "--json-file", str(out_json))
    try:
        read_until(proc, proc.stderr, re.compile(r" \| 1 in flight \| "), timeout_s=120)
        proc.send_signal(signal.SIGINT)
        read_until(proc, proc.stderr, re.compile("^interrupted: no more requests sent; collecting the replies in "
                                                 r"flight \(Ctrl-C again to abort\)$"), timeout_s=60)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)  # not the 600 s --timeout
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stdout == "" and stderr.splitlines()[-1] == "Error: interrupted before the measurement finished: nothing to report"
    assert not out_csv.exists() and not out_json.exists()
