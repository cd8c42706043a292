"""server/launch.py: stopping a process never raises, and falls back to SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from server.launch import ServerProcess, stop_process, wait_for_line

pytestmark = pytest.mark.integration  # every test here starts a process

# Ignores SIGTERM, says so once it does, then waits for ever.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)")


def stubborn() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    wait_for_line(proc, "ready", 60.0)
    return proc


def test_stop_process_kills_what_ignores_sigterm() -> None:
    proc = stubborn()
    assert stop_process(proc, 0.5) == -signal.SIGKILL
    proc.stdout.close()


def test_server_process_terminate_falls_back_to_sigkill_instead_of_raising() -> None:
    server = ServerProcess(stubborn(), "tcp://127.0.0.1:1")
    assert server.terminate(timeout=0.5) == -signal.SIGKILL
    assert server.terminate(timeout=0.5) == -signal.SIGKILL  # already gone: same status, no error
    server.proc.stdout.close()


def test_stop_process_returns_the_status_of_a_process_that_exits_on_sigterm() -> None:
    graceful = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)); "
                "print('ready', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", graceful], stdout=subprocess.PIPE)
    wait_for_line(proc, "ready", 60.0)
    assert stop_process(proc, 30.0) == 3
    proc.stdout.close()
