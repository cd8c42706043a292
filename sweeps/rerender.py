"""`python -m sweeps.rerender FOLDER`: a sweep's summary.md, answer.md, plots and report.html again, from its JSON.

Nothing is run: the sweep file (FOLDER's newest sweep-*.json, or the file given)
holds every repeat and the environment, and the same functions that wrote the
outputs at the end of the sweep write them again (sweeps/run.py's write_answer,
sweeps/report.py, sweeps/plots.py), so a change to the tables, the plots or the
page applies to an old sweep. `--report-only` writes report.html alone, from the
plots already in the folder. The output_{batch}_{compile}.md tables, which
collect rows across sweeps, are left as they are.

The plan is read back from the file: the mode and the peak search's settings as
recorded, a fixed-load objective from the configurations' slo_ms, and the
curve axis as the request rate or concurrency when the configurations differ in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from common import __version__
from common.fileio import write_atomic
from sweeps.html_report import write_sweep_report
from sweeps.plan import SweepPlan
from sweeps.plots import plot
from sweeps.records import read_json, sweep_records
from sweeps.report import summary_markdown
from sweeps.run import objective_ms, write_answer


def sweep_file(path: Path) -> Path:
    """The sweep file a path names: itself, or a folder's newest sweep-*.json. ValueError if there is none."""
    if path.is_dir():
        found = sorted(path.glob("sweep-*.json"))
        if not found:
            raise ValueError(f"{path}: no sweep-*.json in this folder")
        return found[-1]
    return path


def recorded_plan(data: Mapping[str, Any]) -> SweepPlan:
    """The parts of the sweep's plan its outputs depend on: every setting's recorded values, the mode, the search."""
    values: dict[str, list[Any]] = {}
    for rec in sweep_records(data):
        for name, value in rec.config.items():
            seen = values.setdefault(name, [])
            if all(json.dumps(value, default=str) != json.dumps(v, default=str) for v in seen):
                seen.append(value)
    return SweepPlan(server={}, client={k: tuple(v) for k, v in values.items()},
                     mode=str(data.get("mode", "fixed")), peak=dict(data.get("peak") or {}))


def rerender(json_path: Path, report_only: bool = False) -> list[Path]:
    """Write the outputs of the sweep in `json_path` beside it; returns the files written."""
    data = read_json(json_path)
    if "configurations" not in data:
        raise ValueError(f"{json_path}: not a sweep file (no configurations)")
    folder, plan = json_path.parent, recorded_plan(data)
    written = []
    if not report_only:
        records, env = sweep_records(data), data.get("environment") or {}
        stamp, host = str(data.get("stamp", json_path.stem.removeprefix("sweep-"))), str(env.get("host", "?"))
        write_atomic(folder / "summary.md", summary_markdown(records, stamp, {
            "host": host, "device": "?", "cpu": "?", "git_commit": "?", **env}))
        written += [folder / "summary.md", *plot(records, folder, host), *write_answer(records, folder, plan)]
    return [*written, write_sweep_report(json_path, objective_ms(plan))]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sweeps.rerender")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--report-only", is_flag=True, help="Write report.html alone, from the plots already in the folder.")
def main(path: Path, report_only: bool) -> None:
    """Write a sweep's summary.md, answer.md, plots and report.html again from its sweep-*.json (PATH: the file,
    or the sweep's folder), running nothing. Exit status 2 when PATH holds no readable sweep."""
    try:
        written = rerender(sweep_file(path), report_only)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write: {exc}") from None
    click.echo("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
