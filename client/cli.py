"""`infer-client`: drive one or more infer-servers and report what they did.

The run's options come from ClientConfig's fields; the options below it say what
to do with the result. Nothing heavy (torch, zmq) is imported before the
configuration and the output paths are known to be good, so `--help` and usage
errors answer at once and a typo never costs a finished run.

Progress goes to stderr (client/progress.py; `-q` silences it). Ctrl-C during
the measured phase ends it (client/interrupt.py): the partial result is reported
and written, marked `interrupted`, and the exit status is EXIT_INTERRUPTED.

A fleet rank (placed by a launcher or by --rank/--world-size/--coordinator:
client/fleet_env.py) runs with the others (client/fleet.py); rank 0 reports.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from client.config import ClientConfig
from client.peak_cli import PEAK_PARAMS, cli_find_peak, peak_options
from common import __version__, click_options
from common.fileio import json_text
from common.options import check_writable_file
from common.security import check_client_keys, check_server_keys

if TYPE_CHECKING:
    from client.results import RunResult

EXIT_INCOMPLETE = 1  # requests failed or were lost: results are still written
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it: a partial result, still written
DEFAULT_OUTPUT = "results/output.csv"


class Interrupted(click.ClickException):
    exit_code = EXIT_INTERRUPTED


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-client")
@click_options.click_options(ClientConfig)
@click.option("--output-file", default=DEFAULT_OUTPUT,
              help="CSV to append one row to (header written once), relative to the current directory; the "
                   "absolute path is printed at the end. Empty string: none.")
@click.option("--json-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full result (histograms included, mergeable with infer-merge).  [default: none]")
@click.option("--json", "print_json", is_flag=True, help="Print the metrics as one JSON object on stdout's last line.")
@click.option("--progress-interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between progress lines on stderr.  [default: --window-s, else 2]")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines and no human-readable report.")
@peak_options
def main(output_file: str, json_file: Path | None, print_json: bool, progress_interval: float | None, quiet: bool,
         **params: object) -> None:
    """Benchmark infer-server(s): latency distribution, throughput, GPU and CPU use.

    Exit status: 0 all requests answered; 1 some failed or were lost, or no server answered, or a fleet
    rank went away; 2 bad usage; 130 interrupted by Ctrl-C (the partial result is still reported and written).
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    peak = {name: params.pop(name) for name in PEAK_PARAMS}
    config, launcher = _config(params)
    csv_path = Path(output_file) if output_file else None
    own_path = rank_result_path(config, csv_path, json_file) if config.is_fleet and config.rank else None
    outputs = [p for p in (csv_path, json_file, config.trace_file, own_path) if p is not None]
    for path in outputs:
        try:
            check_writable_file(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if peak.pop("find_peak"):
        if config.is_fleet:
            raise click.UsageError("--find-peak runs on one client, not on a fleet of ranks")
        sys.exit(cli_find_peak(config, peak, quiet=quiet, print_json=print_json, json_file=json_file,
                               csv_path=csv_path))
    if config.is_fleet:
        sys.exit(_fleet_rank(config, launcher, quiet, progress_interval, print_json, csv_path, json_file, own_path))
    result = _measure(config, quiet, progress_interval)
    sys.exit(_report(result, quiet, print_json, csv_path, json_file))


def _config(params: dict[str, object]) -> tuple[ClientConfig, str]:
    """The configuration, a fleet rank's place taken from the launcher's environment where no flag gives it."""
    from client.fleet_env import resolve

    try:
        placement = resolve(params["rank"], params["world_size"], params["coordinator"],  # type: ignore[arg-type]
                            os.environ)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    params.update(rank=placement.rank, world_size=placement.world_size, coordinator=placement.coordinator)
    try:
        config = click_options.from_params(ClientConfig, params)
    except ValueError as exc:
        where = f" (rank and world size from {placement.source}'s environment)" \
            if placement.source not in ("", "flags") else ""
        raise click.UsageError(f"{exc}{where}") from None
    try:
        if config.curve is not None:
            check_client_keys(config.curve.client_secret, config.curve.server_public)
        if config.fleet_curve_dir is not None and config.is_fleet:
            _check_fleet_keys(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return config, placement.source


def _check_fleet_keys(config: ClientConfig) -> None:
    """--fleet-curve-dir holds what this rank reads: every rank a client's pair and the server's public key,
    rank 0 also the server's pair and the authorised keys."""
    assert config.fleet_curve_dir is not None
    keys = config.fleet_curve_dir
    try:
        check_client_keys(keys / "client.key_secret", keys / "server.key")
        if config.rank == 0:
            check_server_keys(keys)
    except ValueError as exc:
        raise ValueError(f"--fleet-curve-dir {keys}: {str(exc).split(': ', 1)[-1]}") from None


def rank_result_path(config: ClientConfig, csv_path: Path | None, json_path: Path | None) -> Path:
    """Where a rank other than 0 writes its own result if rank 0 goes away: beside --json-file, else beside
    --output-file, else here."""
    name = f"fleet-rank{config.rank}.json"
    if json_path is not None:
        return json_path.with_name(f"{json_path.stem}.rank{config.rank}{json_path.suffix or '.json'}")
    return csv_path.parent / name if csv_path is not None else Path(name)


def _report(result: RunResult, quiet: bool, print_json: bool, csv_path: Path | None, json_path: Path | None) -> int:
    """The report, the JSON line and the files; the exit status."""
    # The report first: a file that cannot be written must not cost the run's figures.
    if not quiet:
        click.echo(result.format_text())
    if print_json:
        click.echo(json_text(result.summary()))
    _write(result, csv_path, json_path, quiet)
    if result.interrupted:
        return EXIT_INTERRUPTED
    if not result.complete or result.failed_total:
        missing = f", {len(result.fleet.missing)} ranks missing" if result.fleet and result.fleet.partial else ""
        click.echo(f"incomplete run: {result.failed_total} requests failed, {result.lost} lost{missing}"
                   " (results written)", err=True)
        return EXIT_INCOMPLETE
    return 0


def _measure(config: ClientConfig, quiet: bool, interval_s: float | None) -> RunResult:
    """The run, with progress on stderr and Ctrl-C ending its measured phase."""
    from client.progress import Progress
    from client.runner import run
    from client.transport import ClientError

    progress = Progress.for_run(config, None if quiet else sys.stderr, interval_s)
    try:
        with progress.interrupt.handling():
            result = run(config, progress)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the measurement finished: nothing to report") from None
    finally:
        progress.finish()
    result.interrupted = result.interrupted or progress.interrupted
    return result


def _fleet_rank(config: ClientConfig, launcher: str, quiet: bool, interval_s: float | None, print_json: bool,
                csv_path: Path | None, json_path: Path | None, own_path: Path | None) -> int:
    """One rank of a fleet (client/fleet.py): rank 0 reports for all; another rank says nothing unless
    rank 0 went away, and then writes its own result. Launchers stop ranks with SIGTERM: taken as Ctrl-C."""
    from client.fleet import FleetError, run_rank
    from client.progress import Progress
    from client.transport import ClientError

    progress = Progress.for_run(config.rank_part(), sys.stderr if config.rank == 0 and not quiet else None,
                                interval_s)
    try:
        with progress.interrupt.handling((signal.SIGINT, signal.SIGTERM)):
            outcome = run_rank(config, progress, launcher)
    except (FleetError, ClientError) as exc:
        raise click.ClickException(f"fleet: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None
    except KeyboardInterrupt:
        raise Interrupted(f"rank {config.rank} interrupted before the start: nothing measured") from None
    finally:
        progress.finish()
    if outcome.merged:
        return _report(outcome.result, quiet, print_json, csv_path, json_path)
    if outcome.delivery is not None and outcome.delivery.delivered:
        return 0
    assert own_path is not None
    _write(outcome.result, None, own_path, quiet=True)
    reason = outcome.delivery.reason if outcome.delivery is not None else "unknown"
    click.echo(f"rank {config.rank}: rank 0 went away, its fleet result is lost ({reason}); this rank's own "
               f"result is in {own_path.resolve()} (infer-merge combines such files)", err=True)
    return EXIT_INCOMPLETE


def _write(result: RunResult, csv_path: Path | None, json_path: Path | None, quiet: bool) -> None:
    try:
        written = result.write(csv_path, json_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc}") from None
    if written and not quiet:
        click.echo("results: " + "; ".join(written), err=True)
