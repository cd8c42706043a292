"""infer-compare: pairing, the bootstrap interval, and what it flags on real runs of known service time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from client.config import ClientConfig
from client.runner import run
from sweeps.compare import MIN_REPEATS, bootstrap_ratio, compare, pair, select
from sweeps.plan import Point
from sweeps.records import Configuration, Repeat, SweepRecord, load_side
from tests.support import run_cli, sleep_model

REPEATS = MIN_REPEATS


def test_bootstrap_interval_holds_the_ratio_and_is_reproducible() -> None:
    a, b = [100.0, 102.0, 98.0], [130.0, 128.0, 133.0]
    ratio, low, high = bootstrap_ratio(a, b)
    assert ratio == pytest.approx(sum(b) / sum(a))
    assert low <= ratio <= high and low > 1.2
    assert bootstrap_ratio(a, b) == (ratio, low, high)  # a fixed seed: the same interval every time
    assert bootstrap_ratio([0.0, 0.0], b) is None


def _config(label: str, throughputs: list[float], **settings) -> Configuration:
    return Configuration(label, settings, [{"throughput": t} for t in throughputs])


def test_pairs_on_the_axes_and_names_the_change() -> None:
    a = [_config("c1", [10, 10, 10], concurrency=1, max_batch_size=0),
         _config("c4", [30, 30, 31], concurrency=4, max_batch_size=0)]
    b = [_config("c4", [60, 61, 60], concurrency=4, max_batch_size=8),
         _config("c1", [10, 10, 10], concurrency=1, max_batch_size=8)]
    pairs, changed = pair(a, b)
    assert [(x.label, y.label) for x, y in pairs] == [("c1", "c1"), ("c4", "c4")]
    assert changed == {"max_batch_size"}
    rows = {r.pair: r for r in compare(a, b)}
    assert not rows["c1"].flagged and rows["c4"].flagged and rows["c4"].verdict == "better"


def test_two_configurations_of_one_sweep_are_compared_by_selecting_each_side() -> None:
    sweep = [_config(f"c{c} b{m}", [10.0 * c * (1 + m), 10.0 * c * (1 + m), 10.0 * c * (1 + m)],
                     concurrency=c, max_batch_size=m) for c in (1, 4) for m in (0, 8)]
    a, b = select(sweep, ("max_batch_size=0",), "A"), select(sweep, ("max_batch_size=8",), "B")
    pairs, changed = pair(a, b)
    assert [(x.label, y.label) for x, y in pairs] == [("c1 b0", "c1 b8"), ("c4 b0", "c4 b8")]
    assert changed == {"max_batch_size"}
    assert all(r.ratio == pytest.approx(9.0) for r in compare(a, b))
    with pytest.raises(ValueError, match="side B: no configuration has max_batch_size=2"):
        select(sweep, ("max_batch_size=2",), "B")
    with pytest.raises(ValueError, match="give NAME=VALUE"):
        select(sweep, ("max_batch_size",), "A")


def test_too_few_repeats_flag_nothing_however_large_the_change() -> None:
    rows = compare([_config("x", [10, 10])], [_config("x", [20, 20])])
    assert rows[0].ratio == 2.0 and not rows[0].flagged


@pytest.mark.integration
def test_unreadable_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_cli("sweeps.compare", str(bad), str(bad))
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="no sweep"):
        load_side(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def _repeats(endpoint: str, folder: Path) -> Path:
    """REPEATS closed-loop runs, one request at a time, each written as a result file."""
    folder.mkdir()
    for i in range(REPEATS):
        config = ClientConfig(servers=(endpoint,), batch_size=1, image_size=32, num_iters=30, warmup=2)
        run(config).write_json(folder / f"run{i}.json")
    return folder


def _flags(a: Path, b: Path) -> dict[str, dict]:
    proc = run_cli("sweeps.compare", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    return {r["figure"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_identical_runs_flag_nothing_and_30_percent_slower_service_flags_throughput_and_latency(
    server_factory, tmp_path: Path
) -> None:
    fast = server_factory(*sleep_model(10.0))
    slow = server_factory(*sleep_model(13.0))
    a = _repeats(fast.endpoint, tmp_path / "a")
    b = _repeats(slow.endpoint, tmp_path / "b")

    same = _flags(a, a)
    assert same and not any(r["flagged"] for r in same.values()), same

    # One request at a time: each takes the service time plus the same round trip, so B's
    # latency is ~1.3x A's and its throughput ~1/1.3: far beyond the noise of the repeats.
    # Not p99: of 30 requests it is the slowest one, which one stall of a busy machine decides.
    rows = _flags(a, b)
    for figure in ("throughput", "average_latency", "p50_latency"):
        assert rows[figure]["flagged"] and rows[figure]["verdict"] == "worse", rows[figure]
    assert not (rows["p99_latency"]["flagged"] and rows["p99_latency"]["verdict"] == "better"), rows["p99_latency"]
    assert 0.65 < rows["throughput"]["ratio"] < 0.85
    assert 1.15 < rows["p50_latency"]["ratio"] < 1.35


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_sweep_against_result_files_names_no_setting_only_one_side_recorded(server_factory, tmp_path: Path) -> None:
    server = server_factory(*sleep_model(2.0))
    files = _repeats(server.endpoint, tmp_path / "files")
    # The same runs as a sweep records them: its configuration's settings are the grid's, not every option.
    point = Point(server=(("compile", False), ("num_workers", 1), ("device", "cpu"), ("model", "sleep"),
                          ("service_ms", 2.0)),
                  client=(("batch_size", 1), ("concurrency", 1), ("image_size", 32), ("num_iters", 30)))
    runs = [Repeat(i, 1.0, json.loads(p.read_text())) for i, p in enumerate(sorted(files.glob("*.json")))]
    sweep = tmp_path / "sweep-20261201-120000.json"
    sweep.write_text(json.dumps({"configurations": [SweepRecord(point.key, point.label, point.record_config(),
                                                                runs).to_dict()]}))
    proc = run_cli("sweeps.compare", str(sweep), str(files))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "changed between A and B: nothing in the recorded settings"  # was 40+ names
    only_a, only_b = map(int, re.search(r"(\d+) settings by A, (\d+) by B", lines[1]).groups())
    assert lines[1].startswith("recorded by one side only, so not compared:") and only_a == 0 and only_b > 20
