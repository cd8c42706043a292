"""A client with no server says within seconds what it waits for, then gives up at its --timeout."""

from __future__ import annotations

import pytest

from client.transport import HELLO_NOTICE_S
from tests.support import run_cli

pytestmark = pytest.mark.integration

NO_SERVER = "tcp://127.0.0.1:9"  # discard port: nothing answers there


def test_no_server_is_said_before_the_timeout_ends_the_wait() -> None:
    proc = run_cli("client", "--server", NO_SERVER, "--timeout", "8", "--output-file", "", timeout=120)
    assert proc.returncode == 1, proc.stderr
    # In this order: the notice HELLO_NOTICE_S after the HELLO was sent, the error 8 s after it.
    assert proc.stderr.splitlines() == [
        f"WARNING infer.client: waiting for HELLO from {NO_SERVER}: no answer after {HELLO_NOTICE_S:g} s (a server "
        "still loading answers once ready); giving up after 8 s (--timeout)",
        f"Error: no reply from {NO_SERVER} within 8 s: is infer-server running there?",
    ]


def test_a_timeout_shorter_than_the_notice_gives_the_error_alone() -> None:
    proc = run_cli("client", "--server", NO_SERVER, "--timeout", "1", "--output-file", "", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"Error: no reply from {NO_SERVER} within 1 s: is infer-server running there?"]
