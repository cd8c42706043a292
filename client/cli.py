"""`infer-client`: drive one or more infer-servers and report what they did.

The run's options come from ClientConfig's fields; the options below it say what
to do with the result. Nothing heavy (torch, zmq) is imported before the
configuration and the output paths are known to be good, so `--help` and usage
errors answer at once and a typo never costs a finished run.

Progress goes to stderr (client/progress.py; `-q` silences it). Ctrl-C during
the measured phase ends it: the partial result is reported and written, marked
`interrupted`, and the exit status is EXIT_INTERRUPTED.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from client.config import ClientConfig
from client.peak_cli import PEAK_PARAMS, cli_find_peak, peak_options
from common import __version__, click_options
from common.options import check_writable_file
from common.security import check_client_keys

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

    Exit status: 0 all requests answered; 1 some failed or were lost, or no server answered;
    2 bad usage; 130 interrupted by Ctrl-C (the partial result is still reported and written).
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    peak = {name: params.pop(name) for name in PEAK_PARAMS}
    try:
        config = click_options.from_params(ClientConfig, params)
        if config.curve is not None:
            check_client_keys(config.curve.client_secret, config.curve.server_public)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    outputs = [Path(output_file)] if output_file else []
    outputs += [p for p in (json_file, config.trace_file) if p is not None]
    for path in outputs:
        try:
            check_writable_file(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if peak.pop("find_peak"):
        sys.exit(cli_find_peak(config, peak, quiet=quiet, print_json=print_json, json_file=json_file,
                               csv_path=Path(output_file) if output_file else None))
    result = _measure(config, quiet, progress_interval)
    # The report first: a file that cannot be written must not cost the run's figures.
    if not quiet:
        click.echo(result.format_text())
    if print_json:
        click.echo(json.dumps(result.summary()))
    _write(result, Path(output_file) if output_file else None, json_file, quiet)
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not result.complete or result.failed_total:
        click.echo(
            f"incomplete run: {result.failed_total} requests failed, {result.lost} lost"
            " (results written)",
            err=True,
        )
        sys.exit(EXIT_INCOMPLETE)


def _measure(config: ClientConfig, quiet: bool, interval_s: float | None) -> RunResult:
    """The run, with progress on stderr and Ctrl-C ending its measured phase."""
    from client.progress import Progress
    from client.runner import run
    from client.transport import ClientError

    progress = Progress.for_run(config, None if quiet else sys.stderr, interval_s)
    previous = signal.signal(signal.SIGINT, progress.on_sigint)
    try:
        result = run(config, progress)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the measurement finished: nothing to report") from None
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.finish()
    result.interrupted = result.interrupted or progress.interrupted
    return result


def _write(result: RunResult, csv_path: Path | None, json_path: Path | None, quiet: bool) -> None:
    try:
        written = result.write(csv_path, json_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc}") from None
    if written and not quiet:
        click.echo("results: " + "; ".join(written), err=True)
