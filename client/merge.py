"""`infer-merge`: combine `infer-client --json-file` results from clients that ran at the same time.

Clients on different hosts each write their full result (histograms in their
lossless encoded form); this merges them exactly (`RunResult.merge`) and prints
the merged report, as if one client had sent all the requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from client.results import RunResult


def load_results(paths: list[Path]) -> list[RunResult]:
    """Read result files, with one readable error for any that is not an infer-client result."""
    results = []
    for path in paths:
        try:
            results.append(RunResult.from_dict(json.loads(Path(path).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.ClickException(f"{path}: not an infer-client --json-file result ({exc})") from None
    batch_sizes = {r.batch_size for r in results}
    if len(batch_sizes) > 1:
        raise click.ClickException(f"results have different batch sizes {sorted(batch_sizes)}: not one run")
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("json_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the merged result as JSON (mergeable again).")
@click.option("--output-file", default="", help="CSV to append the merged summary row to; empty string: none.")
@click.option("--json", "print_json", is_flag=True, help="Print the merged metrics as one JSON object on the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No human-readable report.")
def main(json_files: tuple[Path, ...], output: Path | None, output_file: str, print_json: bool, quiet: bool) -> None:
    """Merge infer-client --json-file results (e.g. one per host) into one result."""
    merged = RunResult.merge(load_results(list(json_files)))
    if output is not None:
        merged.write_json(output)
    if output_file:
        merged.append_csv(Path(output_file))
    if not quiet:
        click.echo(f"merged {len(json_files)} results ({merged.parts} client processes)")
        click.echo(merged.format_text())
    if print_json:
        click.echo(json.dumps(merged.summary()))


if __name__ == "__main__":
    main()
