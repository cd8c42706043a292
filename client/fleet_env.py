"""Where a client rank stands in a fleet: its rank, the world size and rank 0's coordinator endpoint.

The ranks are placed by a launcher people already use, and each launcher says
where a process stands in its own environment variables:

| launcher | rank | world size | coordinator |
|---|---|---|---|
| Open MPI `mpirun` | OMPI_COMM_WORLD_RANK | OMPI_COMM_WORLD_SIZE | --coordinator |
| MPICH / Hydra (PMI) | PMI_RANK | PMI_SIZE | --coordinator |
| Slurm `srun` | SLURM_PROCID | SLURM_STEP_NUM_TASKS | first host of SLURM_STEP_NODELIST, port MASTER_PORT or 29500 |
| torchrun style | RANK | WORLD_SIZE | MASTER_ADDR, MASTER_PORT |
| Kubernetes Indexed Job | JOB_COMPLETION_INDEX | --world-size | --coordinator |

Flags (--rank, --world-size, --coordinator) win over the environment, and a
launcher's rank wins over the ones below it in the table (an `mpirun` inside a
Slurm allocation is an Open MPI launch). Slurm counts only inside a job step:
a batch script's own shell has SLURM_PROCID 0 but is not one of the step's tasks.

Plain Python, no zmq: the command line resolves this before any work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PORT = 29500  # torchrun's default MASTER_PORT, for launchers that name a host but no port

# (launcher, rank variable, world-size variable); the first whose rank variable is set wins.
RANK_VARIABLES = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("MPICH", "PMI_RANK", "PMI_SIZE"),
    ("Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
    ("torchrun", "RANK", "WORLD_SIZE"),
    ("Kubernetes", "JOB_COMPLETION_INDEX", None),
)


@dataclass(frozen=True)
class Placement:
    """This process's place in the fleet, and who said so."""

    rank: int | None
    world_size: int | None
    coordinator: str | None
    source: str  # "flags", a launcher's name, or "" (no fleet)


def resolve(rank: int | None, world_size: int | None, coordinator: str | None,
            env: Mapping[str, str]) -> Placement:
    """The flags where given, else what the launcher's environment says. ValueError names the variable at fault."""
    launcher = _launcher(env, world_size)
    if launcher is None:
        return Placement(rank, world_size, coordinator, "flags" if rank is not None or world_size else "")
    name, env_rank, env_world, env_coordinator = launcher
    return Placement(
        rank if rank is not None else env_rank,
        world_size if world_size is not None else env_world,
        coordinator if coordinator is not None else env_coordinator,
        name if rank is None else "flags",
    )


def _launcher(env: Mapping[str, str], world_flag: int | None) -> tuple[str, int, int | None, str | None] | None:
    for name, rank_var, world_var in RANK_VARIABLES:
        if rank_var not in env:
            continue
        if name == "Slurm" and world_var not in env:
            continue  # a batch script's shell, not a task of an srun step
        if name == "torchrun" and not ("WORLD_SIZE" in env and "MASTER_ADDR" in env):
            continue  # RANK alone is too common a name to mean a launcher
        if name == "Kubernetes" and world_flag is None:
            continue  # an Indexed Job says which pod this is, not how many there are: --world-size does
        rank = _number(env, rank_var, minimum=0)
        world = _number(env, world_var, minimum=1) if world_var else None
        return name, rank, world, _coordinator_from(name, env)
    return None


def _number(env: Mapping[str, str], var: str, minimum: int) -> int:
    text = env[var].strip()
    if not text.isdigit() or int(text) < minimum:
        raise ValueError(f"the launcher's {var}={env[var]!r} is not a whole number >= {minimum}")
    return int(text)


def _coordinator_from(name: str, env: Mapping[str, str]) -> str | None:
    port = env.get("MASTER_PORT", str(DEFAULT_PORT)).strip()
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number")
    if env.get("MASTER_ADDR"):
        return f"tcp://{env['MASTER_ADDR'].strip()}:{port}"
    if name == "Slurm":
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if nodes:
            return f"tcp://{first_host(nodes)}:{port}"
    return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: 'gpu[07-09,12],cpu1' -> 'gpu07', 'r[1-2]-n[3,5]' -> 'r1-n3'.

    ValueError on an empty list or unbalanced brackets.
    """
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            break
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    if depth != 0 and end == len(nodelist) or not first:
        raise ValueError(f"cannot read the first host of the Slurm node list {nodelist!r}")

    def lowest(match: re.Match) -> str:
        # The first item of the range list, as written (zero padding kept): '07-09,12' -> '07'.
        return match.group(1).split(",")[0].split("-")[0].strip()

    host = re.sub(r"\[([^\]]*)\]", lowest, first)
    if "[" in host or "]" in host or not host:
        raise ValueError(f"cannot read the first host of the Slurm node list {nodelist!r}")
    return host
