"""Sweeps across hosts: CURVE to --server endpoints, and each configuration's client run as a fleet.

`--curve-client-key`/`--curve-server-key` reach servers bound beyond loopback: the
reload between configurations (CONTROL, accepted from an authenticated peer) and
the client runs both go over CURVE.

`--client-launcher 'mpirun -np 4 --host a,b'` runs each repeat's client as a fleet
(client/fleet.py): the template, then `python -m client` with the repeat's options,
`--coordinator` and a `--json-file` that rank 0 writes and the sweep reads. Load
options are the fleet's totals. The coordinator is `--client-coordinator` when
given; else Slurm's first node under `srun`, else this host at a free port (all
of mpirun's ranks here, or its first slot here). Each run's output and result are
kept in the sweep's logs/ (client-NNN.log, client-NNN.json).
"""

from __future__ import annotations

import itertools
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.config import ClientConfig, CurveKeys

LAUNCH_TIMEOUT_S = 3600.0  # a launched fleet still running after this (plus the start timeout) is stopped


@dataclass(frozen=True)
class Remote:
    """How a sweep reaches servers and runs clients beyond this process."""

    curve: CurveKeys | None = None
    launcher: tuple[str, ...] = ()
    coordinator: str | None = None


def parse_launcher(template: str) -> tuple[str, ...]:
    """The launcher command as words; ValueError when it is empty or its program is not found."""
    try:
        words = tuple(shlex.split(template))
    except ValueError as exc:
        raise ValueError(f"cannot read the launcher command {template!r}: {exc}") from None
    if not words:
        raise ValueError("the launcher command is empty")
    if shutil.which(words[0]) is None:
        raise ValueError(f"{words[0]!r} (the launcher) is not on PATH")
    return words


def coordinator_for(remote: Remote) -> str | None:
    """Where rank 0 listens for one run (None: the launcher's environment says, as Slurm's does)."""
    if remote.coordinator:
        return remote.coordinator
    if Path(remote.launcher[0]).name == "srun":
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def fleet_command(remote: Remote, config: ClientConfig, json_path: Path) -> list[str]:
    command = [*remote.launcher, sys.executable, "-m", "client", *config.to_argv(),
               "--json-file", str(json_path), "--output-file", "", "-q"]
    coordinator = coordinator_for(remote)
    return command + (["--coordinator", coordinator] if coordinator else [])


def measure_fleet(remote: Remote, logs: Path, cwd: Path, timeout_s: float) -> Callable[[ClientConfig], dict[str, Any]]:
    """A sweep's Measure that runs each repeat's client through the launcher and reads rank 0's result."""
    from client.results import RunResult

    runs = itertools.count()

    def measure(config: ClientConfig) -> dict[str, Any]:
        n = next(runs)
        json_path, log = logs / f"client-{n:03d}.json", logs / f"client-{n:03d}.log"
        command = fleet_command(remote, config, json_path)
        with open(log, "w") as out:
            out.write(shlex.join(command) + "\n")
            out.flush()
            proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                  timeout=timeout_s + LAUNCH_TIMEOUT_S)
        if not json_path.exists():
            last = (log.read_text().strip().splitlines() or [""])[-1]
            raise RuntimeError(f"the launched fleet exited {proc.returncode} without a result ({last}; {log})")
        result = RunResult.read_json(json_path)
        if result.failed_total or result.lost or not result.complete:
            missing = len(result.fleet.missing) if result.fleet else 0
            raise RuntimeError(f"{result.failed_total} requests failed, {result.lost} lost, {missing} ranks missing")
        return {"result": result.to_dict()}

    return measure
