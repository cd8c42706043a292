"""infer-merge: only runs measured at the same time, one host's parts over the union of their windows.

In-process (click's runner) on synthetic results written as --json-file files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from client.merge import main
from client.results import RunResult
from tests.client.test_results import _result


def _part(tmp_path: Path, name: str, seed: int, window: tuple[float, float] | None, host: str | None) -> Path:
    r = _result(seed)
    r.window_unix = list(window) if window else None
    r.host = host
    path = tmp_path / name
    r.write_json(path)
    return path


def _merge(*args: str) -> tuple[int, str, str]:
    out = CliRunner().invoke(main, list(args))
    return out.exit_code, out.stdout, out.stderr


def test_one_hosts_parts_divide_by_the_union_of_their_windows(tmp_path: Path) -> None:
    a = _part(tmp_path, "a.json", 1, (100.0, 102.0), "h1")
    b = _part(tmp_path, "b.json", 2, (101.0, 104.0), "h1")
    code, out, err = _merge(str(a), str(b), "-o", str(tmp_path / "m.json"), "--json", "-q")
    assert code == 0, err
    merged = RunResult.read_json(tmp_path / "m.json")
    assert merged.window_unix == [100.0, 104.0] and merged.duration_s == 4.0
    assert merged.throughput == merged.ok * merged.batch_size / 4.0  # not the sum of the parts' rates
    assert json.loads(out.splitlines()[-1])["throughput"] == merged.throughput


def test_parts_from_several_hosts_add_their_rates(tmp_path: Path) -> None:
    a = _part(tmp_path, "a.json", 1, (100.0, 102.0), "h1")
    b = _part(tmp_path, "b.json", 2, (100.5, 102.5), "h2")
    code, out, _ = _merge(str(a), str(b), "--json", "-q")
    parts = [RunResult.read_json(p) for p in (a, b)]
    summary = json.loads(out.splitlines()[-1])
    assert code == 0 and summary["throughput"] == sum(p.throughput for p in parts)
    assert summary["host"] == "h1,h2"


def test_runs_that_did_not_overlap_are_refused_unless_forced(tmp_path: Path) -> None:
    a = _part(tmp_path, "a.json", 1, (100.0, 102.0), "h1")
    b = _part(tmp_path, "b.json", 2, (103.0, 105.0), "h1")
    code, out, err = _merge(str(a), str(b), "-o", str(tmp_path / "m.json"))
    assert code == 1 and out == "" and not (tmp_path / "m.json").exists()
    assert err.strip().splitlines() == [
        f"Error: not measured at the same time: {a} and {b} (their windows do not overlap); --force merges them anyway"
    ]
    code, out, err = _merge(str(a), str(b), "--force", "--json")
    assert code == 0 and "did not overlap" in err
    parts = [RunResult.read_json(p) for p in (a, b)]
    assert json.loads(out.splitlines()[-1])["throughput"] == sum(p.throughput for p in parts)


def test_results_that_do_not_say_when_they_ran_still_merge(tmp_path: Path) -> None:
    a = _part(tmp_path, "a.json", 1, None, None)
    b = _part(tmp_path, "b.json", 2, None, None)
    assert _merge(str(a), str(b), "-q")[0] == 0


@pytest.mark.parametrize("bad", ["dir", "under-a-file"])
def test_unwritable_outputs_are_refused_before_merging(tmp_path: Path, bad: str) -> None:
    a = _part(tmp_path, "a.json", 1, None, None)
    target = tmp_path if bad == "dir" else a / "m.json"
    for flag in ("-o", "--output-file"):
        code, out, err = _merge(str(a), flag, str(target))
        assert code == 2 and out == "" and err.strip().splitlines()[-1].startswith("Error: "), err

