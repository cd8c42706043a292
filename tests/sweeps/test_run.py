"""sweeps/run.py and sweeps/resume.py without servers: a folder per sweep with its logs, the answer written from
the records, and what --resume accepts, says and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.peak import PeakSearch
from sweeps import run as sweep_run
from sweeps.cli import machine_defaults
from sweeps.plan import build_plan, flags_doc
from sweeps.records import SweepRecord
from sweeps.resume import check_belongs, first_line, read_earlier, resume_command
from sweeps.run import (
    NoPeakError,
    log_path,
    measure_fixed,
    measure_for,
    objective_of,
    run_config,
    sweep_folder,
    write_answer,
)
from tests.support import peak_record


def test_each_sweep_gets_a_new_folder_with_its_logs(tmp_path: Path) -> None:
    first, second = sweep_folder(tmp_path, "20261201-120000"), sweep_folder(tmp_path, "20261201-120000")
    assert first != second and (first / "logs").is_dir() and (second / "logs").is_dir()
    assert first.parent == second.parent == tmp_path  # --results-dir is the parent, never the folder itself
    assert log_path(first, 3, 1) == first / "logs" / "server-003-r1.log"


def test_peak_plan_measures_with_the_search_and_writes_the_answer(tmp_path: Path) -> None:
    plan = build_plan({}, None, flags_doc(find_peak=True, slo_ms=250.0, axes=("max_batch_size=0,8",)))
    assert measure_for(plan) is not measure_fixed and objective_of(plan).slo_ms == 250.0
    assert objective_of(plan).peak and objective_of(plan).confidence == PeakSearch(250.0).confidence
    assert measure_for(build_plan({}, None, {})) is measure_fixed
    records = [peak_record("0", [30.0, 32.0], [0.20, 0.21]), peak_record("8", [80.0, 84.0], [0.22, 0.23])]
    written = write_answer(records, tmp_path, plan)
    assert [p.name for p in written] == ["answer.md", "pareto.png", "curves.png"]
    assert "Best: **8**" in (tmp_path / "answer.md").read_text()


def test_a_search_that_found_no_peak_keeps_its_probes_in_the_record(tmp_path: Path, monkeypatch) -> None:
    # Minutes of probes are what explain "no rate could be shown": the record keeps them, and reads back.
    plan, points = _grid("max_batch_size=0")
    monkeypatch.setattr(sweep_run, "start_server", lambda cfg, log, timeout: (None, "tcp://127.0.0.1:1", 0.1))
    search = {"peak_rate": None, "probes": [{"rate": 50.4, "verdict": "undecided", "requests": 6093}]}

    def measure(config):
        raise NoPeakError("no rate could be shown to meet p99 <= 250 ms within a probe's 120 s", search)

    record = SweepRecord(points[0].key, points[0].label, points[0].record_config())
    run_config(record, points[0], 2, (), tmp_path, 60.0, measure)
    assert record.status == "failed" and record.reason.startswith("NoPeakError: no rate could be shown")
    back = SweepRecord.from_dict(record.to_dict())
    assert back.no_peak == search and back.runs == []


def _grid(*axes: str):
    plan = build_plan(machine_defaults(cuda=False), None, flags_doc(axes=axes))
    return plan, plan.points()


def _earlier_sweep(folder: Path, points, statuses: list[str], mode: str = "fixed") -> Path:
    import json

    folder.mkdir(parents=True)
    records = [SweepRecord(p.key, p.label, p.record_config(), status=s).to_dict() for p, s in zip(points, statuses)]
    path = folder / "sweep-20261201-120000.json"
    path.write_text(json.dumps({"mode": mode, "peak": {}, "configurations": records}))
    return path


def test_resume_reuses_what_the_sweep_completed_and_says_so_first(tmp_path: Path) -> None:
    plan, grid = _grid("batch_size=1,2,4")
    _earlier_sweep(tmp_path / "sweep-a", grid[:2], ["ok", "interrupted"])
    earlier = read_earlier(tmp_path / "sweep-a")
    check_belongs(earlier, plan, grid)  # the same grid, cut short: accepted
    assert list(earlier.completed()) == [grid[0].key]  # the interrupted one runs again
    line = first_line(earlier, grid)
    assert line.startswith(f"resuming the sweep in {tmp_path / 'sweep-a'}/ (sweep-20261201-120000.json): "
                           "reusing 1 of 3 configurations")
    assert grid[0].label in line and line.endswith("running the other 2")
    # A larger grid than the earlier sweep's is the same sweep grown: accepted too.
    check_belongs(earlier, *_grid("batch_size=1,2,4,8"))


def test_resume_refuses_another_sweeps_results(tmp_path: Path) -> None:
    _, models = _grid("batch_size=1", "model=noop,sleep")
    _earlier_sweep(tmp_path / "models", models, ["ok", "ok"])
    plan, grid = _grid("batch_size=1", "model=noop")
    with pytest.raises(ValueError, match=r"ran configurations this one does not \(b1 compile=off c1 w1 model=sleep\)"):
        check_belongs(read_earlier(tmp_path / "models"), plan, grid)
    _earlier_sweep(tmp_path / "peak", grid, ["ok"], mode="peak")
    with pytest.raises(ValueError, match="that was a peak sweep and this is a fixed one"):
        check_belongs(read_earlier(tmp_path / "peak"), plan, grid)
    with pytest.raises(ValueError, match="no sweep-\\*.json"):
        read_earlier(tmp_path)


def test_the_resume_command_is_the_same_command_with_the_folder() -> None:
    argv = ["sweep.py", "--batch-sizes", "1,2", "--resume", "old", "--axis", "model=a b"]
    assert resume_command(argv, Path("results/sweep-x")) == \
        "python sweep.py --batch-sizes 1,2 --axis 'model=a b' --resume results/sweep-x"
    assert resume_command(["/venv/bin/infer-sweep"], Path("r")) == "infer-sweep --resume r"
