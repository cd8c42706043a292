"""sweep.py --profile: each configuration's trace in a folder of its own next to the sweep's results."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import profiling
from tests.support import only_folder, sweep, sweep_json

pytestmark = pytest.mark.integration  # runs sweep.py, which starts servers


def test_profile_keeps_the_configurations_trace_next_to_its_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = sweep(results, "--batch-sizes", "1", "--repeats", "1", "--profile")
    assert proc.returncode == 0, proc.stderr
    (data,) = sweep_json(results)
    (record,) = data["configurations"]
    (run,) = record["runs"]
    (trace,) = run["result"]["profile_trace"]
    assert Path(trace).parent == (only_folder(results) / "profile" / "b1-compile_off-c1-w1").resolve()
    # --num-iters 5 (tests/support.py's SMALL_SWEEP): one infer_job range per measured request
    assert [e["name"] for e in profiling.load_events(trace)].count(profiling.JOB_RANGE) == 5


def test_profile_with_a_server_elsewhere_is_refused(tmp_path: Path) -> None:
    proc = sweep(tmp_path / "results", "--server", "tcp://127.0.0.1:9", "--profile", timeout=60)
    assert proc.returncode == 2
    assert "--profile" in proc.stderr and "Traceback" not in proc.stderr
