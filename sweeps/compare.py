"""`infer-compare A B`: did a change make a difference beyond the noise of the repeats?

A and B are each a sweep (its sweep-*.json, or the folder it wrote: the newest
sweep file there) or result files (`infer-client --json-file`, a run or a
`--find-peak` search): one file, or a folder of them, each a repeat.

Configurations are paired by the settings that vary within either side (the
sweep's axes); the settings that are the same within each side but differ
between the sides are the change under test, and are printed. For each pair
and figure: the means, the ratio B / A, and its 95% interval by bootstrap of
the ratio of means (10,000 resamples of each side's repeats, seed 0, the
percentile interval). A figure is flagged only when the repeats support a
change: at least MIN_REPEATS repeats on each side and the whole interval
beyond --min-change of no change. The margin is there because percentile
intervals from a handful of repeats are too narrow (with three repeats per
side, about one in five identical pairs would exclude 1 by chance).

`--html FILE` also writes the comparison as one self-contained page (sweeps/html_report.py).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from common import __version__
from common.options import check_writable_file
from sweeps.html_report import write_compare_report
from sweeps.records import FIGURES, Configuration, load_side, varying_keys

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
MIN_REPEATS = 3
DEFAULT_MIN_CHANGE = 0.02


def select(configs: list[Configuration], where: tuple[str, ...], side: str) -> list[Configuration]:
    """The configurations whose settings match every NAME=VALUE of `where`; ValueError if a filter is
    malformed or nothing matches."""
    wanted = []
    for item in where:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ValueError(f"--where-{side.lower()} {item!r}: give NAME=VALUE, e.g. max_batch_size=8")
        wanted.append((name, value))

    def matches(c: Configuration) -> bool:
        return all(n in c.settings and value in (str(c.settings[n]), json.dumps(c.settings[n])) for n, value in wanted)

    chosen = [c for c in configs if matches(c)]
    if not chosen:
        raise ValueError(f"side {side}: no configuration has {' and '.join(where)}")
    return chosen


# -- pairing and statistics ------------------------------------------------------------


def _varying(configs: list[Configuration]) -> set[str]:
    return varying_keys([c.settings for c in configs])


def _recorded(configs: list[Configuration]) -> set[str]:
    return {n for c in configs for n in c.settings}


def pair(a: list[Configuration], b: list[Configuration]) -> tuple[list[tuple[Configuration, Configuration]], set[str]]:
    """Pairs of configurations matched on the axes of either side, and the settings that changed between them.

    Only settings both sides recorded count: a sweep records its grid's settings, a result file every client
    option, so a name on one side only is no axis to pair on and no change (format_rows counts them apart).
    """
    both = _recorded(a) & _recorded(b)
    axes = (_varying(a) | _varying(b)) & both if len(a) > 1 or len(b) > 1 else set()

    def key(c: Configuration) -> str:
        return json.dumps({n: c.settings.get(n) for n in sorted(axes)}, sort_keys=True, default=str)

    by_key = {key(c): c for c in b}
    pairs = [(c, by_key[key(c)]) for c in a if key(c) in by_key]
    changed = {n for n in _varying([a[0], b[0]]) & both if n not in axes} if a and b else set()
    return pairs, changed


def one_sided(a: list[Configuration], b: list[Configuration]) -> tuple[set[str], set[str]]:
    """The settings recorded only by A, and only by B: not compared."""
    return _recorded(a) - _recorded(b), _recorded(b) - _recorded(a)


def bootstrap_ratio(a: list[float], b: list[float], resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float, float] | None:
    """mean(b) / mean(a) and its percentile bootstrap interval; None when a's mean is 0 or a side is empty."""
    import numpy as np

    if not a or not b or sum(a) == 0:
        return None
    rng = np.random.default_rng(seed)
    mean_a = rng.choice(np.asarray(a, dtype=float), (resamples, len(a))).mean(axis=1)
    mean_b = rng.choice(np.asarray(b, dtype=float), (resamples, len(b))).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mean_b / mean_a
    ratios = ratios[np.isfinite(ratios)]
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return (sum(b) / len(b)) / (sum(a) / len(a)), float(low), float(high)


@dataclass
class Row:
    pair: str
    figure: str
    unit: str
    mean_a: float
    mean_b: float
    ratio: float | None
    low: float | None
    high: float | None
    repeats: tuple[int, int]
    flagged: bool
    verdict: str  # "better", "worse", "changed" or ""


def compare(a: list[Configuration], b: list[Configuration], min_change: float = DEFAULT_MIN_CHANGE) -> list[Row]:
    rows = []
    for ca, cb in pair(a, b)[0]:
        for figure, unit, scale, better in FIGURES:
            va, vb = ca.values(figure), cb.values(figure)
            if not va or not vb:
                continue
            ci = bootstrap_ratio(va, vb)
            ratio, low, high = ci if ci else (None, None, None)
            enough = len(va) >= MIN_REPEATS and len(vb) >= MIN_REPEATS
            flagged = bool(ci) and enough and (low > 1 + min_change or high < 1 - min_change)
            up = bool(ci) and low > 1
            verdict = "" if not flagged else "changed" if better is None else \
                "better" if up == (better == "higher") else "worse"
            rows.append(Row(ca.label if ca.label == cb.label else f"{ca.label} | {cb.label}", figure, unit,
                            scale * sum(va) / len(va), scale * sum(vb) / len(vb), ratio, low, high,
                            (len(va), len(vb)), flagged, verdict))
    return rows


def format_rows(rows: list[Row], changed: set[str], min_change: float,
                only: tuple[set[str], set[str]] = (set(), set())) -> str:
    lines = [f"changed between A and B: {', '.join(sorted(changed)) or 'nothing in the recorded settings'}"]
    if only[0] or only[1]:
        lines.append(f"recorded by one side only, so not compared: {len(only[0])} settings by A, {len(only[1])} by B")
    lines.append(f"ratio = B / A, 95% bootstrap interval of the ratio of means ({RESAMPLES} resamples, seed "
                 f"{BOOTSTRAP_SEED}); * = the repeats support a change beyond {min_change:.0%} "
                 f"(needs {MIN_REPEATS}+ repeats a side)")
    width = max([len("configuration"), *(len(r.pair) for r in rows)])
    figures = [f"{r.figure} ({r.unit})" for r in rows]
    fw = max([20, *map(len, figures)])
    lines.append(f"{'configuration':<{width}}  {'figure':<{fw}} {'A':>10} {'B':>10} {'B/A':>7}  {'95% interval':<17} n")
    for r, figure in zip(rows, figures):
        interval = f"[{r.low:.3f}, {r.high:.3f}]" if r.low is not None else "n/a"
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "n/a"
        mark = f" * {r.verdict}" if r.flagged else ""
        lines.append(f"{r.pair:<{width}}  {figure:<{fw}} {r.mean_a:10.4g} {r.mean_b:10.4g} "
                     f"{ratio:>7}  {interval:<17} {r.repeats[0]}/{r.repeats[1]}{mark}")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="infer-compare")
@click.argument("a", type=click.Path(exists=True, path_type=Path))
@click.argument("b", type=click.Path(exists=True, path_type=Path))
@click.option("--min-change", type=click.FloatRange(0, 1), default=DEFAULT_MIN_CHANGE,
              help="Flag a figure only when its whole interval is beyond this fraction of no change.")
@click.option("--where-a", multiple=True, metavar="NAME=VALUE",
              help="Compare only A's configurations with this setting (repeatable); with --where-b, two "
                   "configurations of one sweep: infer-compare S S --where-a max_batch_size=0 --where-b max_batch_size=8."
                   "  [default: all]")
@click.option("--where-b", multiple=True, metavar="NAME=VALUE",
              help="Compare only B's configurations with this setting (repeatable).  [default: all]")
@click.option("--json", "print_json", is_flag=True, help="Print the rows as one JSON list on stdout's last line.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as one self-contained page (its figure embedded) to this file, "
                   "e.g. report.html.  [default: none]")
def main(a: Path, b: Path, min_change: float, where_a: tuple[str, ...], where_b: tuple[str, ...],
         print_json: bool, html_path: Path | None) -> None:
    """Compare two sweeps or two sets of result files: each figure's ratio B / A with its interval.

    Exit status: 0 compared (flagged or not); 1 nothing could be paired; 2 bad usage or unreadable input.
    """
    try:
        if html_path is not None:
            check_writable_file(html_path)
        side_a, side_b = select(load_side(a), where_a, "A"), select(load_side(b), where_b, "B")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    pairs, changed = pair(side_a, side_b)
    if not pairs:
        click.echo("no configuration of A matches one of B on the swept settings", err=True)
        sys.exit(1)
    rows = compare(side_a, side_b, min_change)
    click.echo(text := format_rows(rows, changed, min_change, one_sided(side_a, side_b)))
    if html_path is not None:
        page = write_compare_report(html_path, rows, changed, text, min_change, (a, b), (where_a, where_b))
        click.echo(f"wrote {page}")
    if print_json:
        click.echo(json.dumps([{**r.__dict__, "repeats": list(r.repeats)} for r in rows],
                              default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))


if __name__ == "__main__":
    main()
