"""Fleet runs started by real launchers against a real server: one merged result, started together.

- Open MPI's mpirun starts 3 ranks: one result whose requests are the sum of the
  ranks' and of what the server answered, its histogram the exact merge of theirs,
  the start skew under SKEW_BOUND_S.
- --processes 2 goes through the same rendezvous: its start skew is measured.
- A rank whose wall clock is 2 s ahead (Debian's faketime) still starts with the
  others, and reports the shift as its clock offset, within its uncertainty.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.fleet_helpers import (
    SERVICE_MS,
    SKEW_BOUND_S,
    answered,
    assert_exact_merge,
    client_cmd,
    free_port,
    read_json,
    start,
)
from tests.support import run_cli, sleep_model, start_server

pytestmark = pytest.mark.integration

SHIFT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    s = start_server(*sleep_model(SERVICE_MS), tmp_path=tmp_path_factory.mktemp("fleet"))
    yield s
    s.kill()


def test_mpirun_starts_three_ranks_together_and_merges_them_exactly(server, tmp_path: Path) -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("Open MPI's mpirun is not installed (Debian: apt-get install openmpi-bin; .ci/run does)")
    out_json, out_csv = tmp_path / "fleet.json", tmp_path / "fleet.csv"
    before = answered(server.endpoint)
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "3",
           *client_cmd("--server", server.endpoint, "--num-iters", "300", "--concurrency", "3",
                       "--coordinator", f"tcp://127.0.0.1:{free_port()}", "--json-file", str(out_json),
                       "--output-file", str(out_csv))]
    proc = start(cmd, tmp_path, "mpirun")
    rc, out, err = proc.finish()
    assert rc == 0, err
    result = read_json(out_json)
    fleet = result["fleet"]
    assert fleet["launcher"] == "Open MPI" and fleet["world_size"] == 3 and result["parts"] == 3
    assert [r["rank"] for r in fleet["ranks"]] == [0, 1, 2]
    assert [r["share"]["num_iters"] for r in fleet["ranks"]] == [100, 100, 100]
    assert len({r["share"]["seed"] for r in fleet["ranks"]}) == 3  # each rank its own arrivals and inputs
    # Every request the server answered is in the result: the ranks' 300, and one warm-up each.
    assert result["ok"] == sum(r["ok"] for r in fleet["ranks"]) == 300
    assert answered(server.endpoint) - before == 300 + 3
    assert_exact_merge(result)
    assert 0 <= fleet["start_skew_s"] < SKEW_BOUND_S, fleet
    for r in fleet["ranks"]:
        assert abs(r["clock_offset_s"]) <= r["clock_uncertainty_s"] + 1e-3  # one host, one clock
    (row,) = csv.DictReader(out_csv.open())
    assert row["ranks"] == "3" and row["ranks_missing"] == "0" and int(row["requests_ok"]) == 300
    assert "ranks missing" not in row["invalid_reasons"]
    assert float(row["start_skew"]) == pytest.approx(fleet["start_skew_s"], rel=1e-5, abs=1e-9)


def test_processes_start_together(server, tmp_path: Path) -> None:
    out_json = tmp_path / "processes.json"
    proc = run_cli("client", "--server", server.endpoint, "--batch-size", "1", "--image-size", "32",
                   "--num-iters", "200", "--concurrency", "2", "--processes", "2", "--output-file", "",
                   "--json-file", str(out_json), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "start skew:" in proc.stdout and "fleet: 2 processes on 1 host" in proc.stdout
    result = read_json(out_json)
    assert result["fleet"]["launcher"] == "--processes" and result["parts"] == 2
    assert 0 <= result["fleet"]["start_skew_s"] < SKEW_BOUND_S, result["fleet"]
    assert_exact_merge(result)
    # Merged again with infer-merge, it is no longer one fleet's: the table would mislead, so it goes.
    merged = run_cli("client.merge", str(out_json), str(out_json), "--json", "-q", timeout=60)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout.splitlines()[-1])["ranks"] is None


def test_a_rank_with_a_shifted_clock_starts_with_the_others(server, tmp_path: Path) -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("faketime is not installed (Debian: apt-get install faketime; .ci/run does)")
    out_json = tmp_path / "shifted.json"
    common = ["--server", server.endpoint, "--num-iters", "100", "--concurrency", "2", "--world-size", "2",
              "--coordinator", f"tcp://127.0.0.1:{free_port()}", "--output-file", ""]
    rank0 = start(client_cmd(*common, "--rank", "0", "--json-file", str(out_json)), tmp_path, "rank0")
    # Its wall clock only: libfaketime would shift the monotonic clock too, and a timed wait against a
    # shifted monotonic clock never ends (the kernel's is not shifted).
    rank1 = start([faketime, "-f", f"+{SHIFT_S:g}s", *client_cmd(*common, "--rank", "1")], tmp_path, "rank1",
                  env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    (rc0, _, err0), (rc1, _, err1) = rank0.finish(), rank1.finish()
    assert rc0 == 0 and rc1 == 0, err0 + err1
    fleet = read_json(out_json)["fleet"]
    shifted = fleet["ranks"][1]
    # Its clock reads SHIFT_S ahead: rank 0's minus its own is -SHIFT_S, known to within its uncertainty.
    assert abs(shifted["clock_offset_s"] + SHIFT_S) <= shifted["clock_uncertainty_s"], shifted
    assert 0 <= fleet["start_skew_s"] < SKEW_BOUND_S, fleet
    # Its window, moved onto rank 0's clock, overlaps rank 0's: without the offset it would be 2 s off.
    w0, w1 = fleet["ranks"][0]["window"], shifted["window"]
    assert abs(w1[0] - w0[0]) < SKEW_BOUND_S + shifted["clock_uncertainty_s"]
