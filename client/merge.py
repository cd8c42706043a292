"""`infer-merge`: combine `infer-client --json-file` results from clients that ran at the same time.

Clients on different hosts each write their full result (histograms in their
lossless encoded form); this merges them exactly (`RunResult.merge`) and prints
the merged report, as if one client had sent all the requests.

Merging is only meaningful for runs measured at the same time: results whose
measured phases (each result's `window_unix`) do not overlap are refused unless
--force. Parts from one host share its clock, so their throughput is computed
over the union of their windows; parts from several hosts add their rates.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import click

from client.results import RunResult
from common import __version__
from common.fileio import json_text
from common.options import check_writable_file


class NotAResult(click.ClickException):
    exit_code = 2  # bad usage: the file is something else


def load_results(paths: list[Path]) -> list[RunResult]:
    """Read result files, with one readable error for any that is not an infer-client result."""
    results = [read_result(path) for path in paths]
    batch_sizes = {r.batch_size for r in results}
    if len(batch_sizes) > 1:
        raise click.ClickException(f"results have different batch sizes {sorted(batch_sizes)}: not one run")
    return results


def read_result(path: Path) -> RunResult:
    """`path` as a RunResult, else NotAResult: one line saying what the file is and what was expected."""
    expected = "expected an infer-client --json-file result"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotAResult(f"{path} is not JSON ({exc}): {expected}") from None
    missing = [f.name for f in fields(RunResult) if f.default is MISSING and f.default_factory is MISSING
               and not (isinstance(data, dict) and f.name in data)]
    if missing:
        raise NotAResult(f"{path} is {_what(data, missing)}: {expected}")
    try:
        return RunResult.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotAResult(f"{path} is a damaged infer-client result ({exc}): {expected}") from None


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _what(data: object, missing: list[str]) -> str:
    """What a JSON document that is not a RunResult looks like it is."""
    if not isinstance(data, dict):
        return f"a JSON {_JSON_TYPES.get(type(data), 'null')}, not an object"
    if {"mode", "configurations"} <= data.keys():
        return "a sweep.py result (infer-compare reads sweeps; infer-merge combines clients that ran at the same time)"
    if "peak_rate" in data:
        return "an infer-client --find-peak search"
    return f"a JSON object without a result's fields (missing {', '.join(missing[:4])}{', ...' * (len(missing) > 4)})"


def disjoint_pairs(results: list[RunResult], names: list[str]) -> list[str]:
    """'a and b' for every pair of results whose measured phases did not overlap in time."""
    pairs = []
    for i, a in enumerate(results):
        for j in range(i + 1, len(results)):
            if a.windows_overlap(results[j]) is False:
                pairs.append(f"{names[i]} and {names[j]}")
    return pairs


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-merge")
@click.argument("json_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the merged result as JSON (mergeable again).  [default: none]")
@click.option("--output-file", default="", help="CSV to append the merged summary row to; empty string: none.")
@click.option("--force", is_flag=True,
              help="Merge even results whose measured phases did not overlap in time (their rates are added).")
@click.option("--json", "print_json", is_flag=True, help="Print the merged metrics as one JSON object on the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No human-readable report.")
def main(json_files: tuple[Path, ...], output: Path | None, output_file: str, force: bool, print_json: bool,
         quiet: bool) -> None:
    """Merge infer-client --json-file results of clients that ran at the same time (e.g. one per host)."""
    csv_path = Path(output_file) if output_file else None
    for path in (output, csv_path):
        if path is not None:
            try:
                check_writable_file(path)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
    results = load_results(list(json_files))
    disjoint = disjoint_pairs(results, [str(p) for p in json_files])
    if disjoint and not force:
        raise click.ClickException(
            f"not measured at the same time: {'; '.join(disjoint)} (their windows do not overlap);"
            " --force merges them anyway"
        )
    if disjoint:
        click.echo(f"warning: merging results that did not overlap in time: {'; '.join(disjoint)}", err=True)
        for r in results:
            r.window_unix = None  # no union of windows over a gap: rates are added instead
    merged = RunResult.merge(results)
    if not quiet:
        click.echo(f"merged {len(json_files)} results ({merged.parts} client processes)")
        click.echo(merged.format_text())
    if print_json:
        click.echo(json_text(merged.summary()))
    try:
        merged.write(csv_path, output)
    except OSError as exc:
        raise click.ClickException(f"cannot write the merged result: {exc}") from None


if __name__ == "__main__":
    main()
