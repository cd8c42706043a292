"""`infer-client --find-peak`: the peak-rate search (client/peak.py) from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from client.config import ClientConfig

EXIT_INTERRUPTED = 130

# The search's own options; PeakSearch (client/peak.py) holds their defaults, so None here means "its default".
_OPTIONS = [
    click.option("--find-peak", is_flag=True,
                 help="Search the highest Poisson request rate whose --peak-percentile latency is shown, at "
                      "--peak-confidence, to stay at or under --slo-ms, the schedule kept and nothing failed "
                      "(client/peak.py). Each probe runs until its verdict is decided or its budget ends "
                      "(--max-probe-requests, --max-probe-s); --num-iters does not apply. --json prints the search."),
    click.option("--peak-percentile", type=click.FloatRange(0, 100, min_open=True, max_open=True), default=None,
                 help="--find-peak: the latency percentile held at or under --slo-ms.  [default: 99]"),
    click.option("--peak-tolerance", type=click.FloatRange(0.001, 0.5), default=None,
                 help="--find-peak: bisect until the bracket is within this fraction of the peak rate.  "
                      "[default: 0.05]"),
    click.option("--peak-confidence", type=click.FloatRange(0.5, 1, max_open=True), default=None,
                 help="--find-peak: the confidence of each probe's pass or fail (a probe that shows neither "
                      "counts as failed).  [default: 0.99]"),
    click.option("--max-probe-requests", type=click.IntRange(min=1), default=None,
                 help="--find-peak: the most requests one probe sends.  [default: 640 / (1 - percentile/100): "
                      "64,000 for p99]"),
    click.option("--max-probe-s", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="--find-peak: the longest one probe runs, in seconds.  [default: 600]"),
]
PEAK_PARAMS = ("find_peak", "peak_percentile", "peak_tolerance", "peak_confidence", "max_probe_requests",
               "max_probe_s")
_SEARCH_FIELDS = {"peak_percentile": "percentile", "peak_tolerance": "tolerance", "peak_confidence": "confidence",
                  "max_probe_requests": "max_probe_requests", "max_probe_s": "max_probe_s"}


def peak_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --find-peak options, for infer-client's click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def cli_find_peak(
    config: ClientConfig, params: dict[str, Any], *, quiet: bool, print_json: bool, json_file: Path | None,
    csv_path: Path | None,
) -> int:
    """`infer-client --find-peak`: run the search, report it, write it; returns the exit status.

    The text report (unless quiet) and one line per probe on stderr; with --json the search
    (`PeakResult.to_dict()`, the peak under `peak_rate`) as stdout's last line; --json-file gets
    the same, and the CSV one row: the run at the peak (the confirmation's), with the usual columns.
    """
    from client.peak import PeakSearch, Probe, check_base, find_peak, peak_of
    from client.peak_report import format_probe, format_search
    from common.fileio import json_text

    try:
        if config.slo_ms is None:
            raise ValueError("slo_ms (--slo-ms): --find-peak searches for the rate that meets an objective")
        given = {field: params[name] for name, field in _SEARCH_FIELDS.items() if params.get(name) is not None}
        search = PeakSearch(config.slo_ms, **given)
        check_base(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    seen: list[Probe] = []

    def on_probe(probe: Probe) -> None:
        seen.append(probe)
        if not quiet:
            click.echo(f"probe {len(seen)}: {format_probe(probe).strip()}", err=True)

    from client.transport import ClientError

    if not quiet:
        click.echo(f"searching: each probe up to {search.requests} requests or {search.max_probe_s:g} s "
                   f"(p{search.percentile:g} verdicts at confidence {search.confidence:g})", err=True)
    try:
        result = find_peak(config, search, on_probe=on_probe)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted after {len(seen)} probes; highest passing so far: "
                   f"{getattr(peak_of(seen), 'rate', None)} requests/s", err=True)
        return EXIT_INTERRUPTED
    if not quiet:
        click.echo(format_search(result))
    if print_json:
        click.echo(json_text(result.to_dict()))
    try:
        if json_file is not None:
            from common.fileio import write_atomic

            write_atomic(json_file, json_text(result.to_dict(), indent=1))
        if csv_path is not None and result.at_peak is not None:
            from common.fileio import append_csv_row

            append_csv_row(csv_path, result.at_peak.figures)
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc}") from None
    return 0 if result.peak is not None else 1
