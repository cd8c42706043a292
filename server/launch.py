"""Start an infer-server subprocess and wait for its `ready <endpoint>` line (never a sleep).

Shared by the test fixtures, sweep.py and the benchmarks: all need a real server process whose
readiness is known from the server itself, bounded by a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


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


def stop_process(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int | None:
    """Send `sig`, wait up to `timeout`, then SIGKILL and wait as long again; never raises on a timeout.

    Returns the exit status, or None when the process outlived even SIGKILL's wait (stuck in
    the kernel, say): the caller has nothing better to do than carry on.
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@dataclass
class ServerProcess:
    """A started infer-server: its process, the endpoint(s) it printed, its stderr log."""

    proc: subprocess.Popen
    endpoint: str
    endpoints: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    def terminate(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (the server drains and says DEAD), SIGKILL if it takes longer than `timeout`."""
        return stop_process(self.proc, timeout)

    def kill(self, timeout: float = 30.0) -> None:
        stop_process(self.proc, timeout, signal.SIGKILL)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""


def launch_server(
    args: list[str],
    stderr_path: Path,
    timeout: float,
    bind: str = "tcp://127.0.0.1:*",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Spawn `python -m server --bind BIND ARGS` (stderr appended to stderr_path) and wait until it is bound.

    On failure the process is stopped and RuntimeError says why, with the last
    line the server wrote to stderr (usually its one-line error).
    """
    cmd = [sys.executable, "-m", "server", "--bind", bind, *args]
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
    try:
        line = wait_for_line(proc, "ready ", timeout)
    except (TimeoutError, RuntimeError) as exc:
        stop_process(proc, 30.0)
        tail = stderr_path.read_text(errors="replace").strip().splitlines()[-1:] if stderr_path.exists() else []
        raise RuntimeError(f"server did not start: {exc}" + (f" ({tail[0]})" if tail else "")) from None
    endpoints = line.split()[1:]
    return ServerProcess(proc, endpoints[0], endpoints, stderr_path)
