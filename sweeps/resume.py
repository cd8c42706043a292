"""`sweep.py --resume SWEEP`: go on with a sweep that was cut short (or grow one), in its own folder.

SWEEP is the folder an earlier sweep wrote (`results/sweep-<stamp>/`) or a
sweep-<stamp>.json in it. The configurations it completed are taken as they
are (marked `resumed`), the rest run, and the outputs are written again in that
folder, with a new sweep-<stamp>.json beside the old one (which stays: a
finished run is never lost).

A sweep resumes only itself: an earlier sweep that ran a configuration this
grid does not have, or ran in another mode or under another peak objective, is
refused before anything runs, since its rows would be another sweep's.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.plan import Point, SweepPlan
from sweeps.records import SweepRecord, read_json, sweep_records

SHOWN = 3  # configurations named in a line before "and N more"


@dataclass
class Earlier:
    """An earlier sweep: its folder, its files, and every configuration it recorded."""

    folder: Path
    files: list[Path]
    records: dict[str, SweepRecord]  # by key: a completed record wins, else the newest file's
    mode: str
    peak: dict[str, Any]

    def completed(self) -> dict[str, SweepRecord]:
        return {key: rec for key, rec in self.records.items() if rec.ok}


def read_earlier(path: Path) -> Earlier:
    """The sweep in folder `path` (all its sweep-*.json) or in the file `path`; ValueError saying why not."""
    if path.is_dir():
        folder, files = path, sorted(path.glob("sweep-*.json"))
    elif path.is_file():
        folder, files = path.parent, [path]
    else:
        raise ValueError(f"{path}: no such sweep folder or file")
    if not files:
        raise ValueError(f"{path}: no sweep-*.json in it, so not a sweep's folder")
    records: dict[str, SweepRecord] = {}
    mode, peak = "fixed", {}
    for file in files:
        data = read_json(file)
        if "configurations" not in data:
            raise ValueError(f"{file}: not a sweep file (no configurations)")
        mode, peak = data.get("mode", "fixed"), dict(data.get("peak") or {})
        for rec in sweep_records(data):
            if rec.ok or not (rec.key in records and records[rec.key].ok):
                records[rec.key] = rec
    return Earlier(folder, files, records, mode, peak)


def _named(records: Sequence[SweepRecord | Point]) -> str:
    labels = [r.label for r in records]
    more = f" and {len(labels) - SHOWN} more" if len(labels) > SHOWN else ""
    return "; ".join(labels[:SHOWN]) + more


def check_belongs(earlier: Earlier, plan: SweepPlan, grid: list[Point]) -> None:
    """ValueError unless the earlier sweep is this one cut short (or a part of it): its configurations all in
    this grid, the same mode, the same peak objective."""
    where = f"--resume {earlier.folder}"
    keys = {p.key for p in grid}
    foreign = [rec for key, rec in earlier.records.items() if key not in keys]
    if foreign:
        raise ValueError(f"{where}: that sweep ran configurations this one does not ({_named(foreign)}); "
                         "resume a sweep with its own grid (or a larger one), not another sweep's")
    if earlier.mode != plan.mode:
        raise ValueError(f"{where}: that was a {earlier.mode} sweep and this is a {plan.mode} one")
    if plan.mode == "peak" and earlier.peak != plan.peak:
        raise ValueError(f"{where}: that sweep searched under {earlier.peak}, this one under {plan.peak}")


def first_line(earlier: Earlier, grid: list[Point]) -> str:
    """What is reused, from which sweep, and what runs: the first thing a resumed sweep says."""
    done = earlier.completed()
    reused = [p for p in grid if p.key in done]
    files = ", ".join(f.name for f in earlier.files)
    return (f"resuming the sweep in {earlier.folder}/ ({files}): reusing {len(reused)} of {len(grid)} "
            f"configurations completed there{': ' + _named(reused) if reused else ''}; running the other "
            f"{len(grid) - len(reused)}")


def resume_command(argv: Sequence[str], folder: Path) -> str:
    """The command line that goes on with this sweep: the same arguments, and --resume FOLDER."""
    program = f"python {argv[0]}" if argv[0].endswith(".py") else os.path.basename(argv[0])
    args, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return " ".join([program, *map(shlex.quote, args), "--resume", shlex.quote(str(folder))])
