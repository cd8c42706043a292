"""Fleet runs: client ranks placed by a launcher, started together, their results merged exactly at rank 0.

Every rank runs the same `infer-client` command; its place comes from the
launcher's environment or the flags (client/fleet_env.py). Rank 0 also runs the
coordinator (client/coordinator.py); every rank, rank 0 included, joins it as a
member (client/fleet_member.py), estimates its clock offset to rank 0, warms up,
and starts measuring at the instant rank 0 announces. Each rank then sends its
result; rank 0 merges them (client/fleet_merge.py) into one result with a
per-rank and per-host table (client/fleet_result.py). `--processes N` is the
same on one host (client/runner.py).

Faults: a rank that goes away is reported with when; the others' results are
kept and the merged result is partial. If rank 0 goes away, every other rank
keeps its own result (`RankOutcome.delivery` says so) for the command line to
write. Ctrl-C on rank 0 stops every rank's measurement; the partial results
still come to rank 0 and the merged one is marked interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from client.coordinator import Coordinator
from client.fleet_member import Delivery, Member
from client.fleet_merge import merge_fleet
from client.fleet_wire import FleetError
from client.runner import failure_reason, run_member
from common.host import hostname
from common.options import flag_of, options_of

if TYPE_CHECKING:
    from client.config import ClientConfig
    from client.progress import Progress
    from client.results import RunResult

__all__ = ["FleetError", "RankOutcome", "fleet_argv", "run_rank"]


@dataclass
class RankOutcome:
    """What a rank ends with: rank 0 the fleet's merged result, another rank its own."""

    result: RunResult
    merged: bool
    delivery: Delivery | None = None  # another rank: whether rank 0 took its result


def fleet_argv(config: ClientConfig) -> list[str]:
    """The options every rank must share: this rank's arguments without its --rank and without paths
    (key and trace files may lie elsewhere on each host)."""
    own = {"--rank"}
    for field, opt in options_of(config):
        if opt.kind == "path":
            own.add(flag_of(field, opt))
        own.update(part.flag or "" for _, part in opt.parts)
    argv = config.to_argv()
    shared = []
    i = 0
    while i < len(argv):
        takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if argv[i] not in own:
            shared += argv[i:i + 2] if takes_value else argv[i:i + 1]
        i += 2 if takes_value else 1
    return shared


def run_rank(config: ClientConfig, progress: Progress, launcher: str) -> RankOutcome:
    """This process's part of a fleet run (`config.is_fleet`); FleetError when the fleet cannot run."""
    assert config.rank is not None and config.world_size is not None and config.coordinator is not None
    argv = fleet_argv(config)
    coordinator = None
    if config.rank == 0:
        coordinator = Coordinator(config.coordinator, config.world_size, argv=argv,
                                  curve_dir=config.fleet_curve_dir, timeout_s=config.fleet_timeout_s)
        coordinator.start()
        progress.interrupt.on_interrupt(coordinator.stop_fleet)
    member = Member(coordinator.endpoint if coordinator else config.coordinator, config.rank, config.world_size,
                    progress.interrupt, argv=argv, curve_dir=config.fleet_curve_dir,
                    timeout_s=config.fleet_timeout_s)
    try:
        result = run_member(config.rank_part(), member, progress)
        delivery = member.deliver(result.to_json())
        if coordinator is None:
            return RankOutcome(result, merged=False, delivery=delivery)
        outcome = coordinator.collect()
        return RankOutcome(merge_fleet(outcome, config, launcher, config.coordinator), merged=True)
    except BaseException as exc:
        if coordinator is not None:
            coordinator.abort(f"rank 0 ({hostname()}): {failure_reason(exc)}")
        raise
    finally:
        member.close()
        if coordinator is not None:
            coordinator.close()
