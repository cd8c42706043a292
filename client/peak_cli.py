"""`infer-client --find-peak`: the peak-rate search (client/peak.py) from the command line."""

from __future__ import annotations

from pathlib import Path

from client.config import ClientConfig
from client.peak import PeakSearch, Probe, check_base, find_peak, peak_of

EXIT_INTERRUPTED = 130


def cli_find_peak(
    config: ClientConfig, percentile: float, tolerance: float, *, quiet: bool, print_json: bool,
    json_file: Path | None, csv_path: Path | None,
) -> int:
    """`infer-client --find-peak`: run the search, report it, write it; returns the exit status.

    The text report (unless quiet) and one line per probe on stderr; with --json the search
    (`PeakResult.to_dict()`, the peak under `peak_rate`) as stdout's last line; --json-file gets
    the same, and the CSV one row: the run at the peak, with the usual columns.
    """
    import json

    import click

    try:
        if config.slo_ms is None:
            raise ValueError("slo_ms (--slo-ms): --find-peak searches for the rate that meets an objective")
        # --num-iters sizes each probe; never below the early-stopping minimum for the percentile.
        search = PeakSearch(config.slo_ms, percentile, tolerance, config.num_iters)
        check_base(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    seen: list[Probe] = []

    def on_probe(probe: Probe) -> None:
        seen.append(probe)
        if not quiet:
            verdict = "pass" if probe.passed else f"FAIL ({probe.reason})"
            click.echo(f"probe {len(seen)}: {probe.rate:.4g} requests/s: {verdict}", err=True)

    from client.transport import ClientError

    try:
        result = find_peak(config, search, on_probe=on_probe)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted after {len(seen)} probes; highest passing so far: "
                   f"{getattr(peak_of(seen), 'rate', None)} requests/s", err=True)
        return EXIT_INTERRUPTED
    if not quiet:
        click.echo(result.format_text())
    if print_json:
        click.echo(json.dumps(result.to_dict()))
    try:
        if json_file is not None:
            from common.fileio import write_atomic

            write_atomic(json_file, json.dumps(result.to_dict(), indent=1))
        if csv_path is not None and result.peak is not None:
            from common.fileio import append_csv_row

            append_csv_row(csv_path, result.peak.figures)
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc}") from None
    return 0 if result.peak is not None else 1
