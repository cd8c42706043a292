"""benchmarks/gpu_validate.py and benchmarks/device/run.sh on CPU: the dry run keeps them honest.

The dry run starts the same ceiling process, servers (ResNet-18, channels-last, warm-up, a
worker pool) and client code, in the same order and under the same budget logic as a GPU
run; only autocast, compile and NVML are left out on CPU. The plan's order and arithmetic
are checked on their own, without processes.
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
from benchmarks.device import plan, steps, table
from tests.support import ROOT

ROW = re.compile(r"^\| ([\w-]+) \| (float32|uint8|float32,uint8) \| ")
DEVICE_BUDGET_S = 420  # what a lent machine's ~15 minutes leave for one run, after a 1-2 minute start
KEY_ROW_BY_S = 180


def table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines() if ROW.match(line)]


def gpu_args(*argv: str) -> argparse.Namespace:
    return gpu_validate.parse_args(list(argv))


@pytest.mark.integration
def test_dry_run_follows_the_plan_and_a_failing_point_loses_no_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device" / "run.sh"), "--dry-run",
         "--points", "shm:float32,impossible:float32,tcp:uint8"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = table_rows(proc.stdout)
    # The plan's order: per batch (2, then 1), ceilings at the servers' dtypes first, servers once, the
    # points, the key row after the first batch, the CUDA-graph ceiling last at batch 1.
    assert [(r[0], r[1], int(r[2])) for r in rows] == [
        ("in-process", "float32", 2), ("in-process", "uint8", 2), ("servers", "float32,uint8", 2),
        ("shm", "float32", 2), ("impossible", "float32", 2), ("tcp", "uint8", 2),
        ("in-process", "float32", 1), ("in-process", "uint8", 1),
        ("shm", "float32", 1), ("impossible", "float32", 1), ("tcp", "uint8", 1),
        ("in-process", "float32", 1),
    ]
    lines = proc.stdout.splitlines()
    key = next(i for i, line in enumerate(lines) if line.startswith("**KEY (batch 2"))
    assert lines.index(next(line for line in lines if ROW.match(line) and "| 1 |" in line)) > key
    assert "shm float32" in lines[key] and "tcp uint8" in lines[key] and "of ceiling" in lines[key]
    stages = steps.STAGES
    for transport, _wire, _batch, in_flight, samples_s, of_ceiling, p50_ms, busy, watts, per_j, failed, lost, \
            by_stage, timing, note in rows:
        assert re.fullmatch(r"\d+ \(\d+\)", timing), timing  # what it took, beside its estimate
        if transport == "impossible":  # failed at its own point, saying why
            assert samples_s == "-" and "transport" in note
        elif transport == "in-process":
            assert float(samples_s.replace(",", "")) > 0 and "ceiling, compile none" in note
        elif transport in ("shm", "tcp"):
            assert int(in_flight) == 2 and float(samples_s.replace(",", "")) > 0 and float(p50_ms) > 0
            assert (busy, watts, per_j) == ("-", "-", "-")  # no GPU: the table says so rather than printing 0
            assert (failed, lost, note) == ("0", "0", "")
            assert float(of_ceiling) > 0  # against the ceiling of the same wire dtype and batch
            assert [part.split()[0] for part in by_stage.split(",")] == list(stages)
    assert "target: not applicable (no CUDA device)" in proc.stdout
    # Under $OUT: every row as JSON, the table, the environment with the ceiling, and the logs.
    assert sorted(p.name for p in out.iterdir()) == [
        "ceiling.err", "environment.json", "install.log", "results.jsonl", "results.md", "run.log",
        "server-float32.err", "server-uint8.err"]
    written = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["transport"], r["batch"]) for r in written] == [(r[0], int(r[2])) for r in rows]
    assert all(r["est_s"] is not None for r in written)
    assert written[-1]["planned_mode"] == "reduce-overhead" and written[-1]["mode"] == "none"
    assert "float32:2:default" in json.loads((out / "environment.json").read_text())["ceiling"]
    assert "target: not applicable" in (out / "results.md").read_text()
    # run.log is written by the scripts themselves: the install, every row and the end, in order.
    log = (out / "run.log").read_text()
    assert log.index("== install") < log.index("**KEY (batch 2") < log.index("== done in")
    assert all(line in log for line in lines if ROW.match(line))


def test_the_default_plan_puts_the_target_batch_first_and_compiles_for_the_servers() -> None:
    args = gpu_args()
    planned, _ = gpu_validate.make_plan(args)
    labels = [s.label() for s in planned]
    assert labels[:7] == [
        "ceiling float32 batch 128 (default)", "ceiling uint8 batch 128 (default)",
        "servers float32, uint8 (warm-up batch 128)",
        "shm float32 batch 128", "tcp float32 batch 128", "tcp uint8 batch 128", "key row, batch 128"]
    assert [s.batch for s in planned if s.kind == "point"] == [128] * 3 + [32] * 3 + [1] * 3
    graphs = [s for s in planned if s.mode == "reduce-overhead"]
    assert [(s.kind, s.batch) for s in graphs] == [("ceiling", 32), ("ceiling", 1)]
    # Each served (wire, batch) has a ceiling at the same shape and mode before it: its graph is compiled once.
    for i, s in enumerate(planned):
        if s.kind == "point":
            assert any(c.kind == "ceiling" and c.shape == plan.Shape(s.wire, s.batch) for c in planned[:i])
    assert 256 not in {s.batch for s in planned}


def test_the_default_device_run_fits_the_loan_and_prints_the_key_row_within_3_minutes() -> None:
    args = gpu_args()
    planned, est = gpu_validate.make_plan(args)
    lines, total, key_at = plan.plan_table(planned, est)
    assert total <= DEVICE_BUDGET_S and key_at is not None and key_at <= KEY_ROW_BY_S
    # docs/gpu.md states the same estimate, step by step.
    doc = (ROOT / "docs" / "gpu.md").read_text()
    assert f"estimated total: {total:.0f} s" in doc and f"the key row at ~{key_at:.0f} s" in doc
    assert all(line in doc for line in lines), "docs/gpu.md's plan table is not `gpu_validate.py --plan`'s"


def test_in_flight_is_capped_at_small_batches() -> None:
    args = gpu_args()
    assert [steps.in_flight(args, b) for b in (256, 128, 32, 1)] == [4, 8, 8, 8]
    assert steps.in_flight(gpu_args("--max-in-flight", "4"), 1) == 4


def test_a_step_that_does_not_fit_is_skipped_with_its_estimate_and_nothing_starts(tmp_path: Path) -> None:
    args = gpu_args()
    planned, est = gpu_validate.make_plan(args)
    out = table.Output(tmp_path)
    run = steps.Run(args, out, steps.Budget(30.0), est)
    run.run(planned)
    assert run.ceiling.proc is None and not run.servers  # no process was started
    skipped = [r for r in out.rows if r["note"].startswith("skipped: needs ~")]
    assert len(skipped) == len(out.rows) == len([s for s in planned if s.kind != "key"])
    first = out.rows[0]
    assert first["transport"] == "in-process" and first["est_s"] == pytest.approx(61.0)
    assert "ceiling process 12 + compile (first) 45 + measure 4" in first["note"]
    assert "s left" in first["note"]


def test_estimates_follow_what_the_run_measured() -> None:
    est = plan.Estimates(plan.GPU_DEFAULTS)
    assert est.compile_s("new_batch") == 30.0
    est.observe("compile_first_s", 90.0)  # twice the default: the machine compiles slowly
    assert est.compile_s("first") == 90.0 and est.compile_s("new_batch") == 60.0
    est.observe("compile_new_batch_s", 40.0)
    assert est.compile_s("new_batch") == 40.0
    assert est.get("server_process_s") == 12.0  # not a compile: not scaled


def test_compile_kinds() -> None:
    f128, u128 = plan.Shape("float32", 128), plan.Shape("uint8", 128)
    assert plan.compile_kind(f128, set(), set()) == "first"
    assert plan.compile_kind(u128, {f128}, {f128}) == "new_dtype"
    assert plan.compile_kind(plan.Shape("float32", 32), {f128}, set()) == "new_batch"
    assert plan.compile_kind(f128, {f128}, set()) == "cached"  # another process compiled it
    assert plan.compile_kind(f128, {f128}, {f128}) is None  # this process has it
    assert plan.compile_kind(plan.Shape("float32", 128, "reduce-overhead"), {f128}, {f128}) == "graphs"


def test_each_row_is_printed_and_written_the_moment_it_is_added(tmp_path: Path, capsys) -> None:
    out = table.Output(tmp_path)
    out.header = ["header"]
    row = table.failed_row({"kind": "point", "transport": "tcp", "wire": "uint8", "batch": 128}, "why\nit failed")
    out.add_row(row)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["| tcp | uint8 | 128 | - | - | - | - | - | - | - | - | - | - | - | why it failed |"]
    assert (tmp_path / "results.md").read_text().splitlines() == ["header", printed[0]]
    assert json.loads((tmp_path / "results.jsonl").read_text())["note"] == "why it failed"
    assert (tmp_path / "run.log").read_text().splitlines() == printed


def test_the_target_needs_both_the_rate_and_the_fraction_of_the_ceiling_at_batch_128() -> None:
    def row(transport: str, wire: str, batch: int, samples_s: float | None, of_ceiling: float | None) -> dict:
        return {"kind": "point", "transport": transport, "wire": wire, "batch": batch, "samples_s": samples_s,
                "of_ceiling": of_ceiling}

    fast_and_close = [row("tcp", "uint8", 128, 21_000, 0.85), row("shm", "float32", 128, None, None)]
    lines = table.verdict("cuda:0", 250, fast_and_close)
    assert ">= 20,000 samples/s" in lines[0] and ">= 0.8 of the in-process ceiling at batch 128" in lines[0]
    assert lines[1:] == [
        "  shm float32: no point completed; batch 128 at unknown of the ceiling: NOT met",
        "  tcp uint8: best 21,000 samples/s at batch 128; batch 128 at 0.85 of the ceiling: met",
        "target: met",
    ]
    # Fast at batch 256 but far from the ceiling at 128: not met.
    far = [row("tcp", "uint8", 128, 15_000, 0.6), row("tcp", "uint8", 256, 22_000, 0.9)]
    assert table.verdict("cuda:0", 250, far)[-1] == "target: NOT met"


@pytest.mark.integration
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
