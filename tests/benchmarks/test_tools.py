"""The benchmark scripts answer --help, --version and bad usage at once, as the CLIs do.

They use argparse rather than click, so tests/test_tools.py's click checks do not
apply; what a user sees is the same: no torch import before it is needed, exit 2
with one line for bad usage.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from common import __version__
from tests.support import ROOT

pytestmark = pytest.mark.integration  # each case starts an interpreter

SCRIPTS = ("benchmarks/gpu_validate.py", "benchmarks/perf.py", "benchmarks/metrics_cost.py", "benchmarks/msgcost.py",
           "benchmarks/icount.py", "benchmarks/top_frames.py")
HELP_BOUND_S = 1.5  # a whole interpreter start plus --help; importing torch alone takes longer
PROBE = """
import runpy, sys
sys.argv = [{script!r}, *{args!r}]
code = 0
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("HEAVY=" + ",".join(m for m in ("torch", "numpy", "zmq") if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def _probe(script: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    code = PROBE.format(script=script, args=list(args))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_nothing_heavy(script: str) -> None:
    proc, elapsed = _probe(script, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr
    assert "HEAVY=\n" in proc.stderr + "\n", proc.stderr.splitlines()[-1]
    assert elapsed < HELP_BOUND_S, f"{script} --help took {elapsed:.2f} s"


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_and_bad_usage(script: str) -> None:
    proc, _ = _probe(script, "--version")
    assert proc.returncode == 0 and proc.stdout.strip().endswith(__version__), proc.stdout + proc.stderr
    proc, _ = _probe(script, "--frobnicate")
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("HEAVY=")]
    assert proc.returncode == 2 and len(lines) == 1 and "--frobnicate" in lines[0], proc.stderr
