"""Two fleet ranks on two network hosts (namespaces joined by a veth pair), placed by Slurm's variables.

Rank 0 shares its namespace with the server; rank 1 reaches both over the veth
link, in a UTS namespace of its own so that it also has its own host name. Each
learns its rank, the world size and rank 0's address from the environment an
`srun` step gives its tasks (the coordinator is the first host of the step's node
list), as on a cluster.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from server.launch import wait_for_line
from tests.distributed.fleet_helpers import SKEW_BOUND_S, SMALL, assert_exact_merge, read_json, start
from tests.distributed.test_netns import Hosts, _start_in, hosts  # noqa: F401 (the namespaces fixture)
from tests.support import START_TIMEOUT_S

pytestmark = [pytest.mark.netns, pytest.mark.integration]

PORT = 29517


def _slurm_env(rank: int, server_addr: str) -> dict[str, str]:
    return {"SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2", "MASTER_PORT": str(PORT),
            "SLURM_STEP_NODELIST": f"{server_addr},{server_addr[:-1]}2"}


def test_two_ranks_on_two_network_hosts_placed_by_slurm_variables(hosts: Hosts, tmp_path: Path) -> None:  # noqa: F811
    server = _start_in(hosts.server_ns, f"tcp://{hosts.server_addr}:5555", tmp_path)
    out_json = tmp_path / "fleet.json"
    client = [sys.executable, "-m", "client", *SMALL, "--server", f"tcp://{hosts.server_addr}:5555",
              "--num-iters", "200", "--output-file", "", "--json-file", str(out_json)]
    other_host = ["unshare", "--uts", "sh", "-c", 'hostname fleet-rank-1 && exec "$0" "$@"'] \
        if shutil.which("unshare") else []
    try:
        wait_for_line(server, "ready ", START_TIMEOUT_S)
        rank0 = start(["ip", "netns", "exec", hosts.server_ns, *client], tmp_path, "rank0",
                      _slurm_env(0, hosts.server_addr))
        rank1 = start(["ip", "netns", "exec", hosts.client_ns, *other_host, *client], tmp_path, "rank1",
                      _slurm_env(1, hosts.server_addr))
        (rc0, _, err0), (rc1, _, err1) = rank0.finish(), rank1.finish()
    finally:
        server.kill()
        server.wait(30)
    assert rc0 == 0 and rc1 == 0, err0 + err1
    result = read_json(out_json)
    fleet = result["fleet"]
    assert fleet["launcher"] == "Slurm" and fleet["coordinator"] == f"tcp://{hosts.server_addr}:{PORT}"
    assert result["ok"] == 200 and [r["ok"] for r in fleet["ranks"]] == [100, 100]
    if other_host:
        assert fleet["ranks"][1]["host"] == "fleet-rank-1" != fleet["ranks"][0]["host"]
    assert 0 <= fleet["start_skew_s"] < SKEW_BOUND_S, fleet
    assert fleet["ranks"][1]["rtt_s"] > 0
    assert_exact_merge(result)
