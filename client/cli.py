"""`infer-client`: drive one or more infer-servers and report what they did.

The run's options come from ClientConfig's fields; the options below it say what
to do with the result. Nothing heavy (torch, zmq) is imported before the
configuration is known to be valid, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from client.config import ClientConfig
from common import __version__, click_options
from common.options import check_writable_file

EXIT_INCOMPLETE = 1  # requests failed or were lost: results are still written


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-client")
@click_options.click_options(ClientConfig)
@click.option("--output-file", default="results/output.csv",
              help="CSV to append one row to (header written once); empty string: none.")
@click.option("--json-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full result (histograms included, mergeable with infer-merge).")
@click.option("--json", "print_json", is_flag=True, help="Print the metrics as one JSON object on stdout's last line.")
@click.option("-q", "--quiet", is_flag=True, help="No human-readable report.")
def main(output_file: str, json_file: Path | None, print_json: bool, quiet: bool, **params: object) -> None:
    """Benchmark infer-server(s): latency distribution, throughput, GPU and CPU use."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = click_options.from_params(ClientConfig, params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    outputs = [Path(output_file)] if output_file else []
    outputs += [p for p in (json_file, config.trace_file) if p is not None]
    for path in outputs:
        try:
            check_writable_file(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    from client.runner import run
    from client.transport import ClientError

    try:
        result = run(config)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None
    # The report first: a file that cannot be written must not cost the run's figures.
    if not quiet:
        click.echo(result.format_text())
    if print_json:
        click.echo(json.dumps(result.summary()))
    try:
        if output_file:
            result.append_csv(Path(output_file))
        if json_file is not None:
            result.write_json(json_file)
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc}") from None
    if not result.complete or result.failed_total:
        click.echo(
            f"incomplete run: {result.failed_total} requests failed, {result.lost} lost"
            " (results written)",
            err=True,
        )
        sys.exit(EXIT_INCOMPLETE)

