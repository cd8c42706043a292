"""The README's quick start and the reload script in docs/distributed.md, run exactly as written.

Each runs in a network namespace of its own (`unshare -n`, root only), so the
fixed port 5555 the documents use is free and nothing else on the machine is
reached; without root the test runs only when port 5555 is free here. The
working directory is a scratch copy of the repository root's entry points (the
venv, linked), so the client's default results/output.csv lands there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration  # every test here starts a process

SCRIPT_TIMEOUT_S = 420.0  # a ResNet-18 server's start on a busy 2-core machine, then 50 requests


def fenced_block(markdown: str, heading: str, language: str = "") -> str:
    """The first fenced code block after `heading` (a line of the document)."""
    after = markdown.split(f"\n{heading}\n", 1)[1]
    match = re.search(rf"^```{language}\n(.*?)^```$", after, re.S | re.M)
    assert match, f"no ```{language} block after {heading!r}"
    return match.group(1)


def _isolated(script: str) -> list[str]:
    """bash running `script` in a new network namespace when we may make one, else here."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net", "bash", "-c", f"ip link set lo up\n{script}"]
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 5555))
        except OSError:
            pytest.skip("port 5555 is taken and no network namespace can be made (not root)")
    return ["bash", "-c", script]


def _scratch_root(tmp_path: Path) -> Path:
    """A directory to run the documents' commands from, with the repository's venv in it."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_isolated(script), cwd=cwd, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    block = fenced_block((ROOT / "README.md").read_text(), "## Quick start")
    commands = [line for line in block.splitlines() if line.strip()]
    assert commands[0] == ". .venv/bin/activate" and commands[-1].startswith("kill %1")
    log = tmp_path / "quick-start.log"
    # `wait` after the block: the server, sent SIGTERM by its last line, must drain and exit 0.
    script = "set -e\n" + block.replace("/tmp/infer-server.log", str(log)) + "wait %1\necho server-exit=$?\n"
    proc = _run(script, _scratch_root(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:] + log.read_text()[-2000:]
    assert re.search(r"^requests: 50 ok, 0 failed, 0 lost \(batch 8, ", proc.stdout, re.M), proc.stdout
    assert "server-exit=0" in proc.stdout
    assert (tmp_path / "results" / "output.csv").exists()  # where the README says the row goes
    assert "waiting for the warm-up reply from tcp://127.0.0.1:5555" in proc.stderr


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
def test_reload_script_in_distributed_md_runs_as_written(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "distributed.md").read_text()
    code = fenced_block(doc, "## Driving servers that run elsewhere", "python")
    (tmp_path / "reload.py").write_text(code)
    log = tmp_path / "server.log"
    script = (
        "set -e\n. .venv/bin/activate\n"
        f"infer-server --device cpu --model noop --no-compile > {log} 2>&1 &\n"
        "infer-stats tcp://127.0.0.1:5555 --timeout 300 > /dev/null\n"  # the script expects a running server
        # As the document says to run it:
        ".venv/bin/python reload.py tcp://127.0.0.1:5555\n"
        "kill %1\nwait %1\n"
    )
    proc = _run(script, _scratch_root(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:] + log.read_text()[-2000:]
    assert re.fullmatch(r"new instance \w+: num_workers 1, startup [\d.]+ s, compile/warm-up [\d.]+ s\n", proc.stdout)
