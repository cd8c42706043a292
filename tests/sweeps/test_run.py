"""sweeps/run.py: a folder per sweep with its logs, and the answer written from the records."""

from __future__ import annotations

from pathlib import Path

from sweeps.plan import build_plan, flags_doc
from sweeps.run import log_path, measure_fixed, measure_for, objective_ms, sweep_folder, write_answer
from tests.support import peak_record


def test_each_sweep_gets_a_new_folder_with_its_logs(tmp_path: Path) -> None:
    first, second = sweep_folder(tmp_path, "20261201-120000"), sweep_folder(tmp_path, "20261201-120000")
    assert first != second and (first / "logs").is_dir() and (second / "logs").is_dir()
    assert log_path(first, 3, 1) == first / "logs" / "server-003-r1.log"


def test_peak_plan_measures_with_the_search_and_writes_the_answer(tmp_path: Path) -> None:
    plan = build_plan({}, None, flags_doc(find_peak=True, slo_ms=250.0, axes=("max_batch_size=0,8",)))
    assert measure_for(plan) is not measure_fixed and objective_ms(plan) == 250.0
    assert measure_for(build_plan({}, None, {})) is measure_fixed
    records = [peak_record("0", [30.0, 32.0], [0.20, 0.21]), peak_record("8", [80.0, 84.0], [0.22, 0.23])]
    written = write_answer(records, tmp_path, plan)
    assert [p.name for p in written] == ["answer.md", "pareto.png", "curves.png"]
    assert "Best: **8**" in (tmp_path / "answer.md").read_text()
