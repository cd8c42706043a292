"""infer-stats against a real server: its INFO and STATS, a watch that Ctrl-C ends, one line when unreachable."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.client.test_progress import read_until
from tests.support import ROOT, run_cli

pytestmark = pytest.mark.integration  # every test here starts a process


def test_info_and_stats_once(noop_server) -> None:
    proc = run_cli("client.stats_cli", noop_server.endpoint, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"server {noop_server.endpoint} on ") and lines[0].endswith(": ready")
    assert lines[1].startswith("model noop (noop) on cpu") and "precision fp32" in lines[1]
    assert re.search(r"received \d+, answered \d+, errors \d+,"
                     r" dropped \d+ \(\d+ peer gone, \d+ high-water mark, \d+ byte budget\), in flight \d+ \(peak \d+\),"
                     r" CPU [\d.]+ s, RSS \d+ MiB, GPU n/a", lines[3]), lines[3]
    as_json = run_cli("client.stats_cli", noop_server.endpoint, "--json", timeout=60)
    info, stats = map(json.loads, as_json.stdout.splitlines())
    assert info["model"] == "noop" and info["config"]["model"] == "noop"
    assert stats["counters"]["received"] >= 1 and stats["rss_bytes"] > 0


def test_watch_prints_rates_until_ctrl_c(noop_server) -> None:
    # SIGINT at its default in the child: a suite started in the background by a non-interactive shell
    # (`make test &`) ignores SIGINT, the child would inherit that, and Python would then never raise
    # KeyboardInterrupt (this test hung twice that way).
    proc = subprocess.Popen([sys.executable, "-m", "client.stats_cli", noop_server.endpoint, "--watch", "0.1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        read_until(proc, proc.stdout, re.compile(r"answered \d+ \([\d.]+/s\).*% of a core"), timeout_s=60)
        proc.send_signal(signal.SIGINT)
        # Read both pipes while it exits: a watch keeps printing, and a full pipe would block its exit.
        _, stderr = proc.communicate(timeout=30)
        assert stderr == ""
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_unreachable_server_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli("client.stats_cli", f"tcp://127.0.0.1:{port}", "--timeout", "0.5", timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"Error: no reply from tcp://127.0.0.1:{port} within 0.5 s: is infer-server running there?"
    ]


def test_bad_endpoint_is_a_usage_error() -> None:
    proc = run_cli("client.stats_cli", "not-an-endpoint", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'not-an-endpoint' is not tcp://HOST:PORT" in proc.stderr.strip().splitlines()[-1]
