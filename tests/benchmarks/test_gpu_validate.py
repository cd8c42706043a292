"""benchmarks/gpu_validate.py has never had a GPU: its dry run keeps the rest of it honest.

The dry run starts the same servers (ResNet-18, channels-last, warm-up of every
batch shape, a worker pool) and drives them through the same client code; only
autocast, compile and NVML are left out on CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_dry_run_prints_one_complete_row_per_wire_and_batch() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_validate.py"), "--device", "cpu", "--image-size", "32",
         "--batches", "1,2", "--seconds", "0.5", "--workers", "1", "--samples-in-flight", "2",
         "--processes", "1", "--skip-perf"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if re.match(r"\| (float32|uint8) \|", line)]
    assert [(wire.strip(), int(batch)) for wire, batch, *_ in rows] == [
        ("float32", 1), ("float32", 2), ("uint8", 1), ("uint8", 2)
    ]
    for _wire, _batch, in_flight, samples_s, p50_ms, gpu_util, stages, complete in rows:
        assert int(in_flight) == 2
        assert float(samples_s.replace(",", "")) > 0 and float(p50_ms) > 0
        assert gpu_util.strip() == "-"  # no GPU, and the table says so rather than printing 0
        # The server's own breakdown came back with every reply: each stage has a p50.
        assert [part.split()[0] for part in stages.split(",")] == ["queue", "decode", "h2d", "compute", "d2h", "encode"]
        assert complete.strip() == "True"
    assert "not applicable (no CUDA device)" in proc.stdout
