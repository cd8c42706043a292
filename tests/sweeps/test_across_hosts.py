"""A sweep across hosts: --server endpoints reloaded over CURVE, and each repeat's client run as a fleet."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from client.config import ClientConfig
from common.security import generate_keys
from sweeps.cli import main
from sweeps.launch import Remote, coordinator_for, fleet_command, parse_launcher
from tests.support import NOOP, only_folder, sweep, sweep_json

OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                    "OMPI_MCA_rmaps_base_oversubscribe": "1"}


@pytest.mark.parametrize(("args", "message"), [
    (["--curve-client-key", "Makefile"], "--curve-client-key and --curve-server-key go together"),
    (["--curve-client-key", "Makefile", "--curve-server-key", "Makefile"], "CURVE keys are for --server"),
    (["--client-coordinator", "tcp://h:1"], "--client-coordinator needs --client-launcher"),
    (["--client-launcher", "no-such-launcher -np 2"], "'no-such-launcher' (the launcher) is not on PATH"),
    (["--client-launcher", "sh", "--find-peak", "--slo-ms", "5"], "fixed-load repeats"),
    (["--client-launcher", "'unclosed"], "cannot read the launcher command"),
])
def test_remote_options_are_checked_before_any_run(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_fleet_command_carries_the_run_and_a_coordinator(tmp_path: Path) -> None:
    launcher = parse_launcher("sh -c 'x'")
    assert launcher == ("sh", "-c", "x")
    config = ClientConfig(servers=("tcp://gpu:5555",), num_iters=40, concurrency=8)
    command = fleet_command(Remote(launcher=launcher), config, tmp_path / "r.json")
    assert command[:3] == ["sh", "-c", "x"] and command[4:6] == ["-m", "client"]
    assert ["--num-iters", "40"] == command[command.index("--num-iters"):command.index("--num-iters") + 2]
    assert command[command.index("--coordinator") + 1].startswith("tcp://127.0.0.1:")
    assert coordinator_for(Remote(launcher=("srun", "-n", "8"))) is None  # Slurm names its first node
    assert coordinator_for(Remote(launcher=("mpirun",), coordinator="tcp://a:7")) == "tcp://a:7"


@pytest.mark.integration
@pytest.mark.timeout(280)
def test_servers_beyond_loopback_are_reloaded_over_curve(tmp_path: Path, server_factory) -> None:
    keys = generate_keys(tmp_path / "keys")
    remote = server_factory(*NOOP, "--num-workers", "2", "--curve-dir", str(tmp_path / "keys"),
                            bind="tcp://0.0.0.0:*")  # not loopback: CONTROL only from an authenticated peer
    endpoint = f"tcp://127.0.0.1:{remote.endpoint.rsplit(':', 1)[1]}"
    proc = sweep(tmp_path / "results", "--server", endpoint, "--batch-sizes", "1", "--repeats", "1",
                 "--num-workers", "1,3", "--curve-client-key", str(keys["client_secret"]),
                 "--curve-server-key", str(keys["server_public"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (data,) = sweep_json(tmp_path / "results")
    served = {}
    for record in data["configurations"]:
        assert record["status"] == "ok", record.get("reason")
        served[record["config"]["num_workers"]] = record["runs"][0]["result"]["servers"][0]["num_workers"]
    assert served == {1: 1, 3: 3}


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_each_repeat_runs_as_a_fleet_through_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("mpirun") is None:
        pytest.skip("Open MPI's mpirun is not installed (Debian: apt-get install openmpi-bin; .ci/run does)")
    for name, value in OPEN_MPI_AS_ROOT.items():  # as the command line would say --allow-run-as-root
        monkeypatch.setenv(name, value)
    proc = sweep(tmp_path / "results", "--client-launcher", "mpirun -np 2", "--batch-sizes", "1",
                 "--repeats", "1", "--concurrency", "2", "--num-iters", "40", timeout=360)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    folder = only_folder(tmp_path / "results")  # the sweep's own folder under --results-dir
    (data,) = sweep_json(tmp_path / "results")
    (record,) = data["configurations"]
    assert record["status"] == "ok", record.get("reason")
    result = record["runs"][0]["result"]
    assert result["fleet"]["launcher"] == "Open MPI" and result["ok"] == 40
    assert [r["ok"] for r in result["fleet"]["ranks"]] == [20, 20]
    assert (folder / "logs" / "client-000.json").exists() and (folder / "logs" / "client-000.log").exists()
