"""Start an infer-server subprocess and wait for its `ready <endpoint>` line (never a sleep).

Shared by the test fixtures and sweep.py: both need a real server process whose
readiness is known from the server itself, bounded by a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """Read proc's stdout until a line starts with `prefix`; fail on exit or deadline."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} line within {timeout:g} s")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"process exited with {proc.wait(5)} before printing {prefix!r}")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(prefix):
                    return text
    finally:
        sel.close()


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)
