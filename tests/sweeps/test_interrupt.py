"""Ctrl-C during a sweep: what finished is written (marked interrupted), the command to go on is printed and
works, and the exit status is 130."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, only_folder

pytestmark = pytest.mark.integration  # runs sweep.py, which starts servers

# Two sleep-model configurations: 1 ms a request, then 200 ms a request for 20 requests (4 s and more), so
# a Ctrl-C sent once the first is done lands while the second runs, however fast the machine.
ARGS = ["--model", "sleep", "--axis", "service_ms=1,200", "--image-size", "32", "--num-iters", "20",
        "--batch-sizes", "1", "--repeats", "1"]


def _read_until(proc: subprocess.Popen, first: str, then: str, timeout: float) -> str:
    """proc's stderr until `first` shows and `then` after it (tqdm redraws with \\r, so not line by line);
    fails at the deadline."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while then.encode() not in seen.partition(first.encode())[2]:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, seen.decode(errors="replace")[-2000:]
            if sel.select(remaining):
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, seen.decode(errors="replace")[-2000:]
                seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.timeout(400)
def test_ctrl_c_writes_what_finished_marked_interrupted_and_says_how_to_go_on(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "sweep.py"), *ARGS, "--results-dir", str(results)]
    # A session of its own, so the SIGINT below reaches the sweep and its server as a terminal's Ctrl-C does;
    # SIGINT at its default there, as in a terminal: a suite started in the background (`make test &`) has it
    # ignored, the sweep would inherit that, and Python raises no KeyboardInterrupt where SIGINT is ignored.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Once the first is done and the progress bar names the second, the second is under way.
        _read_until(proc, "done b1 compile=off c1 w1 service_ms=1\n", "w1 service_ms=200", timeout=180)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, err = out.decode(), err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Aborted" not in err

    folder = only_folder(results)
    (data,) = [json.loads(p.read_text()) for p in folder.glob("sweep-*.json")]
    assert data["interrupted"] is True
    assert [c["status"] for c in data["configurations"]] == ["ok", "interrupted"]
    assert data["configurations"][1]["reason"] == "Ctrl-C after 0 of 1 repeats"
    assert "(INTERRUPTED: 1 of 2 configurations finished)" in (folder / "summary.md").read_text().splitlines()[0]
    assert "**Interrupted** (1 of 2 configurations finished)" in (folder / "answer.md").read_text()
    for png in ("throughput_latency.png", "latency_cdf.png", "pareto.png"):
        assert (folder / png).stat().st_size > 1000
    assert "1 ok, 0 failed, 1 interrupted" in out

    # The command it prints goes on with the same sweep: the finished configuration is reused, the other runs.
    hint = out.split("To go on:\n", 1)[1].strip().splitlines()[0]
    assert hint.endswith(f"--resume {folder}") and "--axis service_ms=1,200" in hint
    argv = shlex.split(hint)
    assert argv[0] == "python"
    resumed = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "reusing 1 of 2 configurations" in resumed.stdout.splitlines()[0]
    newest = json.loads(sorted(folder.glob("sweep-*.json"))[-1].read_text())
    assert [c["status"] for c in newest["configurations"]] == ["ok", "ok"] and not newest["interrupted"]
