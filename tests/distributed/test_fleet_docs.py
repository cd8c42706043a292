"""docs/distributed.md's one-host fleet, run exactly as written (mpirun, 3 ranks, a sleep-model server).

As root, Open MPI wants --allow-run-as-root, and more ranks than cores --oversubscribe: the
document says so, and the test gives Open MPI the same through its environment variables, so the
command itself runs unchanged. Isolated in a network namespace (tests/test_readme.py) for its
fixed ports, 5555 and 29500.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.test_readme import _isolated, _scratch_root, fenced_block

pytestmark = pytest.mark.integration

TIMEOUT_S = 420.0
OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "OMPI_MCA_rmaps_base_oversubscribe": "1"}


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_the_one_host_fleet_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("mpirun") is None:
        pytest.skip("Open MPI's mpirun is not installed (Debian: apt-get install openmpi-bin; .ci/run does)")
    block = fenced_block((ROOT / "docs" / "distributed.md").read_text(), "### Try it on one host")
    commands = [line for line in block.splitlines() if line.strip()]
    assert commands[0] == ". .venv/bin/activate" and commands[2].startswith("mpirun -np 3 infer-client ")
    log = tmp_path / "server.log"
    script = "set -e\n" + block.replace("/tmp/infer-server.log", str(log)) + "wait %1\necho server-exit=$?\n"
    cwd = _scratch_root(tmp_path)
    proc = subprocess.run(_isolated(script), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, **OPEN_MPI_AS_ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:] + log.read_text()[-2000:]
    assert re.search(r"^fleet: 3 ranks on 1 host \(Open MPI\), coordinated by rank 0 at tcp://127.0.0.1:29500",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^start skew: [\d.]+ ms", proc.stdout, re.M)
    assert re.search(r"^requests: 300 ok, 0 failed, 0 lost \(batch 1, ", proc.stdout, re.M), proc.stdout
    assert "server-exit=0" in proc.stdout
    fleet = json.loads((cwd / "fleet.json").read_text())["fleet"]
    assert [r["ok"] for r in fleet["ranks"]] == [100, 100, 100]
    (tmp_path / "report.txt").write_text(proc.stdout)  # what the document shows, for a human to compare
