"""client/runner.py against a real server: what it refuses before sending anything."""

from __future__ import annotations

import pytest

from tests.support import NOOP, backend, run_cli

pytestmark = pytest.mark.integration  # every test here starts a process

SMALL = ("--image-size", "32", "--wire-dtype", "uint8", "--num-iters", "5", "--output-file", "")


def test_a_request_over_the_servers_frame_limit_is_refused_before_warm_up(server_factory) -> None:
    server = server_factory(*NOOP, "--max-message-bytes", "4096")
    proc = run_cli("client", "--server", server.endpoint, "--batch-size", "2", *SMALL, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "6144 bytes" in last and "4096 bytes" in last and "--max-message-bytes" in last, last
    with backend(server.endpoint) as b:
        assert b.stats(timeout_s=10.0)["counters"]["infer_received"] == 0  # not even a warm-up request
    fits = run_cli("client", "--server", server.endpoint, "--batch-size", "1", *SMALL, timeout=60)  # 3072 bytes
    assert fits.returncode == 0, fits.stderr
