"""report.html: a sweep's results, or infer-compare's comparison, as one page to open in a browser or send on.

The page is self-contained: every figure is a PNG in a data URI, the style is
inline, there is no script, and a Content-Security-Policy in the page refuses
any fetch, so it reads the same offline. It is rendered by Jinja2 from
sweeps/templates/ with autoescaping on (labels and settings come from sweep
files: they are text, never markup).

A sweep's page is made from its sweep-<stamp>.json and the plots the sweep wrote
beside it, with the same functions that write summary.md and answer.md
(sweeps/report.py), so the page and the markdown show the same cells: the
answer, the Pareto front, the curves, every configuration's figures as mean ±
std, each repeat, the environment, and the commands (the sweep's, and each
configuration's infer-server and infer-client as the sweep ran them).
`python -m sweeps.rerender FOLDER` makes it again from the JSON.
"""

from __future__ import annotations

import base64
import io
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from client.config import ClientConfig
from common import __version__
from common.fileio import write_atomic
from common.options import from_json
from server.config import ServerConfig
from sweeps.plots import pyplot
from sweeps.records import FIGURES, SweepRecord, configurations, read_json, sweep_records, sweep_title
from sweeps.report import answer_table, best_under_slo, configuration_front, summary_table

REPORT_NAME = "report.html"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The sweep's plots in the order the page shows them, with their captions; any other PNG in the folder follows.
SWEEP_FIGURES = {
    "pareto.png": "Throughput against p99 latency, one point per configuration (± 1 std over repeats), "
                  "the Pareto front joined",
    "curves.png": "Throughput and latency across the swept request rate or concurrency, or across each peak "
                  "search's probes",
    "throughput_latency.png": "Throughput and latency against batch size (± 1 std over repeats)",
    "latency_cdf.png": "Latency by percentile, from the merged histograms of each configuration's repeats",
}
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "changed": "tab:orange", "": "0.45"}


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    uri: str  # data:image/png;base64,...


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def folder_figures(folder: Path) -> list[Figure]:
    """The PNG plots in `folder`, the sweep's own first, each embedded."""
    known = [folder / name for name in SWEEP_FIGURES if (folder / name).is_file()]
    others = sorted(p for p in folder.glob("*.png") if p.name not in SWEEP_FIGURES)
    figures = []
    for path in known + others:
        png = path.read_bytes()
        if png.startswith(PNG_MAGIC):  # anything else would show as a broken image
            figures.append(Figure(path.name, SWEEP_FIGURES.get(path.name, path.stem.replace("_", " ")), png_uri(png)))
    return figures


def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("sweeps", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _short(text: str, most: int = 60) -> str:
    """A plot label that leaves the plot room: the end kept (the figure's name), the middle elided."""
    return text if len(text) <= most else text[: most // 2 - 1] + "…" + text[-(most // 2):]


def _number(value: Any, scale: float = 1.0) -> str:
    return f"{value * scale:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


# -- a sweep -------------------------------------------------------------------------------


def write_sweep_report(json_path: Path, slo_ms: float | None) -> Path:
    """report.html beside a sweep's JSON, with the plots in its folder; returns its path."""
    folder = json_path.parent
    path = folder / REPORT_NAME
    write_atomic(path, render_sweep(read_json(json_path), slo_ms, folder_figures(folder), folder))
    return path


def render_sweep(data: Mapping[str, Any], slo_ms: float | None, figures: Sequence[Figure], folder: Path) -> str:
    """The page of a sweep file's dict: `slo_ms` the objective the answer used, `figures` embedded in order."""
    records = sweep_records(data)
    env = dict(data.get("environment") or {})
    host = str(env.get("host", "?"))
    mode = str(data.get("mode", "fixed"))
    percentile = float((data.get("peak") or {}).get("percentile", 99.0)) if mode == "peak" else 99.0
    stats = configurations(records)
    header, rows = answer_table(stats, mode)
    front = configuration_front(stats)
    best = best_under_slo(stats, slo_ms, mode)
    summary_header, summary_rows = summary_table(records, host)
    repeat_header, repeat_rows = repeat_table(records, mode)
    ok = sum(rec.ok for rec in records)
    stamp = data.get("stamp", "?")
    return _templates().get_template("sweep.html.j2").render(
        version=__version__, tool="sweep.py", mode=mode,
        title=f"Sweep {stamp}: {sweep_title(records, host)}",
        subtitle=(f"{env.get('device', '?')} on {host} ({env.get('cpu', '?')}), git {env.get('git_commit', '?')}; "
                  f"{'peak mode' if mode == 'peak' else 'fixed load'}; {len(records)} configurations, {ok} completed"),
        objective=f"p{percentile:g} <= {slo_ms:g} ms" if slo_ms is not None else "no latency objective given",
        best=None if best is None else {
            "label": best.label, "repeats": len(best.repeats), "header": header[1:],
            "cells": rows[[id(s) for s in stats].index(id(best))][1:]},
        best_rule=("whose peak search met the objective in every repeat" if mode == "peak"
                   else "whose mean p99 meets the objective" if slo_ms is not None else "(no objective given)"),
        failed=[(rec.label or rec.key, rec.reason) for rec in records if not rec.ok],
        front=[s.label for s in front],
        pareto_figures=[f for f in figures if f.name == "pareto.png"],
        curve_figures=[f for f in figures if f.name != "pareto.png"],
        answer_header=header, answer_rows=rows,
        answer_marks=["yes" if any(s is f for f in front) else "" for s in stats],
        summary_header=summary_header, summary_rows=summary_rows,
        repeat_header=repeat_header, repeat_rows=repeat_rows,
        environment=environment_items(env, stamp),
        sweep_command=sweep_command(env.get("command")),
        rerender_command=f"python -m sweeps.rerender {shlex.quote(str(folder))}",
        commands=[{"label": rec.label or rec.key, **dict(zip(("server", "client"), run_commands(rec)))}
                  for rec in records if rec.runs],
    )


def repeat_table(records: Sequence[SweepRecord], mode: str) -> tuple[list[str], list[list[str]]]:
    """Every repeat's figures (at its peak in peak mode), unaveraged."""
    figures = [f for f in FIGURES if mode == "peak" or f[0] != "peak_rate"]
    header = ["configuration", "repeat", "spawn to ready (s)",
              *(["converged", "probes"] if mode == "peak" else []),
              *(f"{name.replace('_', ' ')} ({unit})" for name, unit, _, _ in figures)]
    rows = []
    for rec in records:
        for run in rec.runs:
            values = run.figures()
            search = [("yes" if run.peak.get("peak_converged") else "no"), str(len(run.peak.get("probes") or []))] \
                if run.peak is not None else (["", ""] if mode == "peak" else [])
            rows.append([rec.label or rec.key, str(run.repeat + 1), _number(run.spawn_to_ready_s), *search,
                         *(_number(values.get(name), scale) for name, _, scale, _ in figures)])
    return header, rows


def environment_items(env: Mapping[str, Any], stamp: str) -> list[tuple[str, str]]:
    """What the sweep ran on, as (name, value) lines; the command has a section of its own."""
    items = [("sweep", str(stamp))]
    for name, value in env.items():
        if name == "command":
            continue
        if name == "memory_bytes" and isinstance(value, int):
            name, value = "memory", f"{value / 2**30:.1f} GiB"
        items.append((name.replace("_", " "), "none" if value is None else str(value)))
    return items


def sweep_command(argv: Any) -> str:
    """The command line the sweep recorded; `python` before a script run by name."""
    if not isinstance(argv, list) or not argv:
        return "not recorded"
    return ("python " if str(argv[0]).endswith(".py") else "") + shlex.join(map(str, argv))


def run_commands(rec: SweepRecord) -> tuple[str, str]:
    """The infer-server and infer-client command lines of the record's first repeat, from what it recorded."""
    result = rec.runs[0].result
    summary = result.get("summary") or rec.runs[0].run().summary()
    try:
        server = json.loads(summary.get("server_config") or "null")
        server_argv = shlex.join(from_json(ServerConfig, {k: v for k, v in server.items() if k != "ready_file"})
                                 .to_argv()) if isinstance(server, dict) else None
    except (ValueError, TypeError):
        server_argv = None
    try:
        client_argv = shlex.join(from_json(ClientConfig, result.get("config") or {}).to_argv())
    except (ValueError, TypeError):
        client_argv = None
    return (f"infer-server {server_argv}" if server_argv is not None else "infer-server: its settings were not recorded",
            f"infer-client {client_argv}" if client_argv is not None else "infer-client: its settings were not recorded")


# -- infer-compare -------------------------------------------------------------------------


def write_compare_report(path: Path, rows: Sequence[Any], changed: set[str], text: str, min_change: float,
                         sides: tuple[Path, Path], where: tuple[Sequence[str], Sequence[str]]) -> Path:
    """infer-compare's page: the rows (compare.Row) as a table and a figure, the text it printed, and the command
    that prints it again (`where`: the --where-a and --where-b filters)."""
    figure = ratio_figure(rows, min_change)
    argv = [str(sides[0]), str(sides[1]), *(arg for f in where[0] for arg in ("--where-a", f)),
            *(arg for f in where[1] for arg in ("--where-b", f)), "--min-change", f"{min_change:g}", "--html", str(path)]
    page = _templates().get_template("compare.html.j2").render(
        version=__version__, tool="infer-compare", title=f"infer-compare: {sides[0]} against {sides[1]}",
        sides=[("A", str(sides[0])), ("B", str(sides[1]))], changed=sorted(changed), min_change=f"{min_change:.0%}",
        header=["configuration", "figure", "A", "B", "B / A", "95% interval", "repeats (A/B)", "verdict"],
        rows=[[r.pair, f"{r.figure} ({r.unit})", f"{r.mean_a:.4g}", f"{r.mean_b:.4g}", _number(r.ratio),
               f"[{r.low:.3f}, {r.high:.3f}]" if r.low is not None else "n/a", f"{r.repeats[0]}/{r.repeats[1]}",
               r.verdict if r.flagged else ""] for r in rows],
        marks=[r.verdict if r.flagged else "" for r in rows],
        figures=[figure] if figure is not None else [], text=text,
        command=shlex.join(["infer-compare", *argv]))
    write_atomic(path, page)
    return path


def ratio_figure(rows: Sequence[Any], min_change: float) -> Figure | None:
    """Each ratio B / A with its interval, one line per configuration and figure; the no-change band shaded."""
    shown = [r for r in rows if r.ratio is not None and r.low is not None]
    if not shown:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.26 * len(shown)))
    try:
        ax.axvspan(1 - min_change, 1 + min_change, color="0.92", label=f"within {min_change:.0%} of no change")
        ax.axvline(1.0, color="black", lw=1)
        for y, r in enumerate(reversed(shown)):
            colour = VERDICT_COLOURS.get(r.verdict if r.flagged else "", "0.45")
            ax.errorbar(r.ratio, y, xerr=[[r.ratio - r.low], [r.high - r.ratio]], fmt="o", color=colour, capsize=3)
        ax.set_yticks(range(len(shown)), [_short(f"{r.pair}: {r.figure}") for r in reversed(shown)], fontsize=7)
        ax.set(xlabel="B / A, with its 95% bootstrap interval", title="Each figure's ratio B / A")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    return Figure("ratios.png", "Each figure's ratio B / A with its 95% interval: green better, red worse, "
                  "orange changed (neither better nor worse), grey not supported by the repeats", png_uri(buf.getvalue()))
