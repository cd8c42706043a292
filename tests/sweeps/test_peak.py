"""sweep.py in peak mode from a TOML file, end to end on sleep-model servers, and its hygiene:
a folder of its own per sweep, its servers' logs kept, nothing tracked by git changed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration  # every test here starts a process

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Sleep models of 2 and 4 ms per request (a server option as the axis): under the same objective
# the shorter service time sustains more than twice the rate, so the answer is known.
SWEEP_TOML = """
[sweep]
mode = "peak"
repeats = 1

[peak]
slo_ms = 16
percentile = 90     # p90 verdicts decide in about 1,000 requests; p99 ones need tens of thousands
tolerance = 0.2
max_probe_requests = 1024

[server]
device = "cpu"
model = "sleep"
compile = false
service_ms = [4, 2]
num_workers = 1

[client]
batch_size = 1
image_size = 32
"""


def _sweep(*args: str, timeout: float = 420.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _git_status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True,
                          text=True, timeout=30).stdout


@pytest.mark.timeout(480)  # each probe is 1,024 requests or more at tens of requests/s: minutes on a busy machine
def test_peak_sweep_from_a_file_answers_in_its_own_folder_and_leaves_git_clean(tmp_path: Path) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP_TOML)
    before = {p.name for p in (ROOT / "results").iterdir()}
    status_before = _git_status("results")
    proc = _sweep("--config", str(config))
    created = [ROOT / "results" / n for n in {p.name for p in (ROOT / "results").iterdir()} - before]
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        (folder,) = created
        assert folder.name.startswith("sweep-") and folder.is_dir()
        # Running the benchmark changes nothing git tracks: its outputs are ignored.
        assert _git_status("results") == status_before
        _check_folder(folder)
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)


def _check_folder(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert {"summary.md", "answer.md", "pareto.png", "curves.png", "report.html", "logs"} <= names
    for png in ("pareto.png", "curves.png"):
        assert (folder / png).read_bytes().startswith(PNG_MAGIC)
    assert len(list((folder / "logs").glob("server-*.log"))) == 2  # one server per configuration and repeat
    (sweep_file,) = folder.glob("sweep-*.json")
    data = json.loads(sweep_file.read_text())
    assert data["mode"] == "peak"
    peaks = {}
    for record in data["configurations"]:
        assert record["status"] == "ok", record.get("reason")
        (run,) = record["runs"]
        assert run["peak"]["peak_rate"] > 0 and run["result"]["schedule"]["mode"] == "open"
        peaks[record["config"]["service_ms"]] = run["peak"]["peak_rate"]
    # Half the service time: at least 2x the capacity, and the objective is 8 service times instead of 4.
    assert peaks[2.0] > 1.5 * peaks[4.0], peaks
    answer = (folder / "answer.md").read_text()
    assert "Best: **b1 compile=off c1 w1 service_ms=2**" in answer, answer
    assert "Best: <strong>b1 compile=off c1 w1 service_ms=2</strong>" in (folder / "report.html").read_text()
    # The offered peak and the throughput measured there, each named, in the answer and in the summary alike.
    assert "requests/s offered" in answer and "samples/s answered" in answer and "at confidence" in answer
    summary = (folder / "summary.md").read_text()
    assert "| peak offered (requests/s) | throughput at the peak, measured (samples/s) |" in summary
    assert all(" INFO " in log.read_text() for log in (folder / "logs").glob("server-*.log"))


def test_peak_mode_without_an_objective_is_refused_before_any_run(tmp_path: Path) -> None:
    proc = _sweep("--find-peak", "--results-dir", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "slo_ms" in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())
