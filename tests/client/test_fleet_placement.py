"""Where a fleet rank stands: launchers' environments, the flags, and the checks made before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from client.cli import main
from client.config import ClientConfig, part_seed
from client.fleet_env import DEFAULT_PORT, RANK_VARIABLES, first_host, resolve

OMPI = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}


@pytest.mark.parametrize(("env", "world_flag", "expected"), [
    (OMPI, None, (2, 4, None, "Open MPI")),
    ({"PMI_RANK": "1", "PMI_SIZE": "3"}, None, (1, 3, None, "MPICH")),
    ({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NODELIST": "gpu[07-09,12],cpu1"}, None,
     (3, 8, f"tcp://gpu07:{DEFAULT_PORT}", "Slurm")),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "6000"}, None,
     (1, 2, "tcp://10.0.0.5:6000", "torchrun")),
    ({"JOB_COMPLETION_INDEX": "5"}, 6, (5, 6, None, "Kubernetes")),
    # Open MPI inside a Slurm allocation: mpirun placed this process.
    ({**OMPI, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, None, (2, 4, None, "Open MPI")),
])
def test_each_launcher_says_where_a_rank_stands(env: dict, world_flag: int | None, expected: tuple) -> None:
    p = resolve(None, world_flag, None, env)
    assert (p.rank, p.world_size, p.coordinator, p.source) == expected


@pytest.mark.parametrize("env", [
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"},  # a batch script's own shell, not a task of a step
    {"RANK": "3"},  # too common a name to mean torchrun without WORLD_SIZE and MASTER_ADDR
    {"JOB_COMPLETION_INDEX": "2"},  # an Indexed Job without --world-size
    {},
])
def test_no_launcher_means_no_fleet(env: dict) -> None:
    assert resolve(None, None, None, env).source == ""


def test_flags_win_over_the_environment() -> None:
    p = resolve(0, 2, "tcp://h:1", {**OMPI, "MASTER_ADDR": "x"})
    assert (p.rank, p.world_size, p.coordinator, p.source) == (0, 2, "tcp://h:1", "flags")
    p = resolve(None, None, "tcp://rank0:7", OMPI)  # the launcher's rank with the flag's coordinator
    assert (p.rank, p.coordinator, p.source) == (2, "tcp://rank0:7", "Open MPI")


@pytest.mark.parametrize(("env", "named"), [
    ({"OMPI_COMM_WORLD_RANK": "-1", "OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_RANK"),
    ({"PMI_RANK": "0", "PMI_SIZE": "0"}, "PMI_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "http"}, "MASTER_PORT"),
])
def test_a_bad_variable_is_named(env: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        resolve(None, None, None, env)


@pytest.mark.parametrize(("nodes", "first"), [
    ("node1", "node1"), ("a,b", "a"), ("gpu[007-009]", "gpu007"), ("r[1-2]-n[3,5]", "r1-n3"),
    ("x[5],y[1-3]", "x5"), ("10.0.0.1,10.0.0.2", "10.0.0.1"),
])
def test_first_host_of_a_slurm_node_list(nodes: str, first: str) -> None:
    assert first_host(nodes) == first


@pytest.mark.parametrize("nodes", ["", "gpu[1-2", "gpu]1["])
def test_a_node_list_that_cannot_be_read(nodes: str) -> None:
    with pytest.raises(ValueError, match="first host"):
        first_host(nodes)


def _fleet(**kw) -> ClientConfig:
    return ClientConfig(rank=kw.pop("rank", 0), world_size=kw.pop("world_size", 3),
                        coordinator=kw.pop("coordinator", "tcp://h:29500"), **kw)


def test_the_load_is_the_fleets_total_split_across_ranks() -> None:
    config = _fleet(num_iters=10, concurrency=4, request_rate=30.0, trace_file=Path("t.jsonl"), seed=7)
    parts = [_fleet(rank=r, num_iters=10, concurrency=4, request_rate=30.0, trace_file=Path("t.jsonl"),
                    seed=7).rank_part() for r in range(3)]
    assert [p.num_iters for p in parts] == [4, 3, 3]  # the first ranks take the remainder
    assert [p.concurrency for p in parts] == [2, 1, 1]
    assert {p.request_rate for p in parts} == {10.0}
    assert [p.trace_file for p in parts] == [Path(f"t.rank{r}.jsonl") for r in range(3)]
    assert parts[0].seed == 7 and len({p.seed for p in parts}) == 3
    assert {p.world_size for p in parts} == {None}  # each part is a plain run
    assert config.rank_part().num_iters == 4


def test_per_rank_load_is_each_ranks_own() -> None:
    part = _fleet(rank=1, num_iters=10, concurrency=2, load_per_rank=True).rank_part()
    assert (part.num_iters, part.concurrency) == (10, 2) and part.seed == part_seed(0, 1) != 0


def test_seeds_of_parts_never_repeat_a_neighbouring_run() -> None:
    seeds = {part_seed(seed, index) for seed in range(50) for index in range(8)}
    assert len(seeds) == 50 * 8


def test_a_fleets_default_concurrency_is_one_per_rank() -> None:
    assert _fleet().concurrency == 3 and _fleet(load_per_rank=True).concurrency == 1
    assert _fleet(request_rate=5.0).concurrency == 0


@pytest.mark.parametrize(("changes", "message"), [
    ({"rank": 3}, "not below world_size"),
    ({"coordinator": None}, "needs coordinator"),
    ({"coordinator": "udp://h:1"}, "not tcp://HOST:PORT, ipc://PATH"),
    ({"processes": 2}, "processes (--processes) cannot go with a fleet"),
    ({"num_iters": 2}, "num_iters (--num-iters) 2 is the fleet's total, fewer than its 3 ranks"),
    ({"concurrency": 2}, "concurrency (--concurrency) 2 is the fleet's total"),
    ({"world_size": None}, "go together"),
])
def test_a_fleet_that_cannot_run_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _fleet(**changes)


def test_one_rank_is_a_plain_run() -> None:
    config = ClientConfig(rank=0, world_size=1)
    assert not config.is_fleet and config.concurrency == 1


NO_LAUNCHER = {var: None for _, rank_var, world_var in RANK_VARIABLES for var in (rank_var, world_var) if var}


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--world-size", "3"], {}, "rank (--rank) and world_size (--world-size) go together"),
    ([], {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"},
     "needs coordinator (--coordinator tcp://HOST:PORT), the address where rank 0 listens (rank and world size "
     "from Open MPI's environment)"),
    ([], {"SLURM_PROCID": "x", "SLURM_STEP_NUM_TASKS": "2"}, "SLURM_PROCID='x'"),
    (["--rank", "0", "--world-size", "2", "--coordinator", "tcp://h:1", "--find-peak", "--slo-ms", "5"], {},
     "--find-peak runs on one client"),
])
def test_the_command_line_refuses_with_one_line(args: list[str], env: dict, message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--output-file", ""], env={**NO_LAUNCHER, "MASTER_ADDR": None, **env})
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, result.output


def test_the_kubernetes_manifests_arguments_make_a_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/kubernetes/fleet-job.yaml's container arguments, as pod 3 of its Indexed Job parses them."""
    from client.cli import _config

    manifest = (Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "fleet-job.yaml").read_text()
    args = [line.strip()[2:] for line in manifest.split("args:", 1)[1].split("ports:", 1)[0].splitlines()
            if line.strip().startswith("- --")]
    args = [a.split("#")[0].strip() for a in args]
    completions = int(manifest.split("completions:", 1)[1].split()[0])
    for var in NO_LAUNCHER:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    params = main.make_context("infer-client", args).params
    config, launcher = _config(params)
    assert (config.rank, config.world_size, launcher) == (3, completions, "Kubernetes")
    assert config.coordinator == "tcp://infer-fleet-0.infer-fleet:29500" and config.rank_part().concurrency == 16


def test_ranks_compare_their_options_but_not_their_paths() -> None:
    from client.config import CurveKeys
    from client.fleet import fleet_argv

    def argv(**kw) -> list[str]:
        return fleet_argv(_fleet(num_iters=30, **kw))

    assert argv(rank=0) == argv(rank=2, trace_file=Path("/elsewhere/t.jsonl"), fleet_curve_dir=Path("/keys"),
                                curve=CurveKeys(Path("a.key_secret"), Path("s.key")))
    assert argv(rank=0) != argv(rank=0, batch_size=4)
    assert "--num-iters" in argv() and "--rank" not in argv()
