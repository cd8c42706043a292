"""benchmarks/gpu_validate.py and benchmarks/device/run.sh on CPU: the dry run keeps them honest.

The dry run starts the same servers (ResNet-18, channels-last, warm-up of every batch shape,
a worker pool), the same in-process ceiling and the same client code; only autocast, compile
and NVML are left out on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_validate
from tests.conftest import ROOT

ROW = re.compile(r"^\| (\w+) \| (float32|uint8|float16|bfloat16) \| ")


def table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines() if ROW.match(line)]


def test_dry_run_prints_every_row_and_a_failing_point_loses_no_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device" / "run.sh"), "--dry-run",
         "--points", "tcp:float32,impossible:float32,tcp:uint8", "--batches", "1,2"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = table_rows(proc.stdout)
    assert [(r[0], r[1], int(r[2])) for r in rows] == [
        ("tcp", "float32", 1), ("tcp", "float32", 2), ("impossible", "float32", 1), ("impossible", "float32", 2),
        ("tcp", "uint8", 1), ("tcp", "uint8", 2),
    ]
    stages = [*gpu_validate.BREAKDOWN, "transport"]
    for transport, _wire, batch, in_flight, samples_s, of_ceiling, p50_ms, busy, failed, lost, by_stage, note in rows:
        if transport == "impossible":  # failed at its own point, saying why
            assert samples_s == "-" and "transport" in note
            continue
        assert int(in_flight) == 2 and float(samples_s.replace(",", "")) > 0 and float(p50_ms) > 0
        assert busy == "-"  # no GPU, and the table says so rather than printing 0
        assert (failed, lost, note) == ("0", "0", "")
        # The ceiling ran at batch 2 only (the dry run's --ceiling-batches).
        assert (of_ceiling == "-") == (batch == "1")
        assert [part.split()[0] for part in by_stage.split(",")] == stages
    assert "target: not applicable (no CUDA device)" in proc.stdout
    # Under $OUT: every row as JSON, the table, the environment with the ceiling, and the logs.
    assert sorted(p.name for p in out.iterdir()) == [
        "ceiling.err", "environment.json", "results.jsonl", "results.md", "run.log", "server-float32.err",
        "server-uint8.err"]
    written = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["transport"], r["batch"]) for r in written] == [(r[0], int(r[2])) for r in rows]
    assert "2" in json.loads((out / "environment.json").read_text())["ceiling"]
    assert "target: not applicable" in (out / "results.md").read_text()


def test_each_row_is_printed_and_written_the_moment_it_is_added(tmp_path: Path, capsys) -> None:
    out = gpu_validate.Output(tmp_path)
    out.header = ["header"]
    row = gpu_validate.failed_row(gpu_validate.Point("tcp", "uint8", 128), None, "why\nit failed")
    out.add_row(row)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["| tcp | uint8 | 128 | - | - | - | - | - | - | - | - | why it failed |"]
    assert (tmp_path / "results.md").read_text().splitlines() == ["header", printed[0]]
    assert json.loads((tmp_path / "results.jsonl").read_text())["note"] == "why it failed"


def test_a_point_that_would_not_fit_in_the_budget_is_skipped_not_started() -> None:
    args = argparse.Namespace(seconds=5.0)
    row = gpu_validate.run_point(args, gpu_validate.Point("shm", "float32", 256), None, {},
                                 gpu_validate.Budget(1.0))
    assert row["samples_s"] is None and row["note"].startswith("skipped: time budget spent")


def test_the_target_needs_both_the_rate_and_the_fraction_of_the_ceiling_at_batch_128() -> None:
    args = argparse.Namespace(device="cuda:0", image_size=250)

    def row(transport: str, wire: str, batch: int, samples_s: float | None, of_ceiling: float | None) -> dict:
        return {"transport": transport, "wire": wire, "batch": batch, "samples_s": samples_s,
                "of_ceiling": of_ceiling}

    fast_and_close = [row("tcp", "uint8", 128, 21_000, 0.85), row("shm", "float32", 128, None, None)]
    lines = gpu_validate.verdict(args, fast_and_close)
    assert ">= 20,000 samples/s" in lines[0] and ">= 0.8 of the in-process ceiling at batch 128" in lines[0]
    assert lines[1:] == [
        "  shm float32: no point completed; batch 128 at unknown of the ceiling: NOT met",
        "  tcp uint8: best 21,000 samples/s at batch 128; batch 128 at 0.85 of the ceiling: met",
        "target: met",
    ]
    # Fast at batch 256 but far from the ceiling at 128: not met.
    far = [row("tcp", "uint8", 128, 15_000, 0.6), row("tcp", "uint8", 256, 22_000, 0.9)]
    assert gpu_validate.verdict(args, far)[-1] == "target: NOT met"


@pytest.mark.parametrize("argv, message", [
    (["--points", "tcp"], "--points entry 'tcp'"),
    (["--batches", "1,x"], "--batches wants comma-separated integers"),
    (["--seconds", "0"], "--seconds must be positive"),
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_validate.py"), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
