"""A fleet's faults, with real processes: nothing measured without every rank, nothing lost after the start.

- A rank that never arrives: every rank that came exits 1 naming it; the server
  answered nothing (not even a warm-up).
- A rank killed (SIGKILL) mid-run: rank 0's result keeps the others', names the
  lost rank with when it went away, and is partial (exit 1).
- Rank 0 killed mid-run: the other rank writes its own result and exits 1 saying so.
- Ctrl-C on rank 0: every rank stops; one partial result marked interrupted (exit 130).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.fleet_helpers import (
    SERVICE_MS,
    answered,
    assert_exact_merge,
    client_cmd,
    free_port,
    read_json,
    start,
)
from tests.support import sleep_model, start_server, wait_until_answered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    s = start_server(*sleep_model(SERVICE_MS), tmp_path=tmp_path_factory.mktemp("fleet-faults"))
    yield s
    s.kill()


def _ranks(server, tmp_path: Path, world: int, ranks: list[int], *extra: str) -> list:
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    common = ["--server", server.endpoint, "--world-size", str(world), "--coordinator", coordinator,
              "--output-file", "", "--json-file", str(tmp_path / "fleet.json"), *extra]
    return [start(client_cmd(*common, "--rank", str(r)), tmp_path, f"rank{r}") for r in ranks]


def test_a_rank_that_never_arrives_is_named_and_nothing_is_measured(server, tmp_path: Path) -> None:
    before = answered(server.endpoint)
    procs = _ranks(server, tmp_path, 3, [0, 1], "--num-iters", "30", "--fleet-timeout", "5")
    for p in procs:
        rc, _, err = p.finish()
        assert rc == 1, err
        assert "rank 2 of 3 did not arrive within 5 s" in err and "nothing measured" in err, err
        assert "Traceback" not in err
    assert answered(server.endpoint) == before
    assert not list(tmp_path.glob("fleet*.json"))


def test_a_rank_killed_mid_run_is_reported_and_the_others_are_kept(server, tmp_path: Path) -> None:
    before = answered(server.endpoint)
    # 3 ranks of 400 requests each, one in flight: about 2 s each at the server's 200 requests/s.
    procs = _ranks(server, tmp_path, 3, [0, 1, 2], "--num-iters", "1200", "--concurrency", "3")
    wait_until_answered(server.endpoint, before + 3 + 150, timeout_s=240)
    procs[2].proc.kill()
    (rc0, _, err0), (rc1, _, err1) = procs[0].finish(), procs[1].finish()
    procs[2].finish()
    assert rc0 == 1 and rc1 == 0, err0 + err1
    assert "incomplete run" in err0 and "1 ranks missing" in err0
    result = read_json(tmp_path / "fleet.json")
    fleet = result["fleet"]
    gone = fleet["ranks"][2]
    assert gone["gone_at_s"] is not None and gone["gone_at_s"] > 0 and "connection closed" in gone["gone_reason"]
    assert [r["ok"] for r in fleet["ranks"][:2]] == [400, 400]  # the others' data, all of it
    assert result["ok"] == 800 and result["complete"] is False
    summary = result["summary"]
    assert summary["valid"] is False and summary["ranks_missing"] == 1
    assert "ranks missing: rank 2 (" in summary["invalid_reasons"] and "requests failed" not in summary["invalid_reasons"]
    assert_exact_merge(result)


def test_rank_0_killed_mid_run_leaves_each_rank_its_own_result(server, tmp_path: Path) -> None:
    before = answered(server.endpoint)
    procs = _ranks(server, tmp_path, 2, [0, 1], "--num-iters", "800", "--concurrency", "2")
    wait_until_answered(server.endpoint, before + 2 + 100, timeout_s=240)
    procs[0].proc.kill()
    procs[0].finish()
    rc, _, err = procs[1].finish()
    assert rc == 1 and "rank 1: rank 0 went away" in err, err
    own = read_json(tmp_path / "fleet.rank1.json")
    assert own["ok"] == own["sent"] == 400  # its whole share, measured to the end
    assert not (tmp_path / "fleet.json").exists()


def test_ctrl_c_on_rank_0_stops_the_fleet_and_keeps_a_partial_result(server, tmp_path: Path) -> None:
    before = answered(server.endpoint)
    procs = _ranks(server, tmp_path, 2, [0, 1], "--duration", "120", "--concurrency", "2")
    wait_until_answered(server.endpoint, before + 2 + 60, timeout_s=240)
    procs[0].proc.send_signal(signal.SIGINT)
    (rc0, _, err0), (rc1, _, err1) = procs[0].finish(), procs[1].finish()
    assert rc0 == 130 and rc1 == 0, err0 + err1
    result = read_json(tmp_path / "fleet.json")
    assert result["interrupted"] is True and result["summary"]["valid"] is False
    assert "interrupted" in result["summary"]["invalid_reasons"]
    assert [r["interrupted"] for r in result["fleet"]["ranks"]] == [True, True]
    assert all(r["ok"] > 0 and r["ok"] == r["sent"] for r in result["fleet"]["ranks"])
    assert result["duration_s"] < 100
    assert_exact_merge(result)
