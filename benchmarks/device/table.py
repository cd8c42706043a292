"""What the device run prints and writes: one row per step, the key row, the verdict, run.log.

Every line the run prints also goes into run.log, written by the program itself (not through
a `tee` a tool may end early), and every row is in results.md and results.jsonl the moment
it exists, so a run that is stopped keeps what it measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

TARGET_SAMPLES_S = 20_000
TARGET_CEILING_FRACTION = 0.8
TARGET_BATCH = 128
TARGET_POINTS = (("shm", "float32"), ("tcp", "uint8"))
TARGET_IMAGE_SIZE = 250
KEY_POINTS = (("shm", "float32"), ("tcp", "float32"), ("tcp", "uint8"))
NOTE_CHARS = 240
COLUMNS = ("transport", "wire", "batch", "in flight", "samples/s", "of ceiling", "p50 ms", "GPU busy %", "W",
           "samples/J", "failed", "lost", "server mean ms by stage (+ transport)", "s (est.)", "note")


class Output:
    """Everything the run writes under one folder; rewritten after every row."""

    def __init__(self, folder: Path, started: float | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic() if started is None else started
        self.header: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.environment: dict[str, Any] = {}
        self.ceiling: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.folder / name

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, line: str, err: bool = False) -> None:
        """Print a line (progress on stderr, results on stdout) and append it to run.log."""
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
        with open(self.path("run.log"), "a") as f:
            f.write(line + "\n")

    def log(self, message: str) -> None:
        self.say(f"[{self.elapsed():5.0f} s] {message}", err=True)

    def write_environment(self) -> None:
        """environment.json: versions, flags, the GPU, and the ceiling's rows once measured."""
        data = {**self.environment, "ceiling": self.ceiling}
        self.path("environment.json").write_text(json.dumps(data, indent=2, default=str) + "\n")

    def add_row(self, row: dict[str, Any]) -> None:
        row.setdefault("at_s", round(self.elapsed(), 1))
        line = render_row(row)
        self.say(line)
        self.rows.append(row)
        self.lines.append(line)
        with open(self.path("results.jsonl"), "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        self.write_table()

    def add_lines(self, lines: list[str]) -> None:
        """Lines that belong in the table's flow (the key row), in order with the rows."""
        for line in lines:
            self.say(line)
            self.lines.append(line)
        self.write_table()

    def write_table(self, footer: list[str] | None = None) -> None:
        text = "\n".join([*self.header, *self.lines, *(footer or [])]) + "\n"
        self.path("results.md").write_text(text)


def render_header(title: str) -> list[str]:
    return [title, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]


def _num(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, fmt)


def render_row(row: dict[str, Any]) -> str:
    stages = row.get("server_mean_ms") or {}
    breakdown = ", ".join(f"{s} {v:.2f}" for s, v in stages.items() if v is not None) or "-"
    took = row.get("took_s")
    timing = f"{took:.0f} ({row['est_s']:.0f})" if took is not None and row.get("est_s") is not None else (
        f"- ({row['est_s']:.0f})" if row.get("est_s") is not None else "-")
    cells = [row.get("transport") or "-", row["wire"], str(row["batch"]), _num(row, "in_flight", "d"),
             _num(row, "samples_s", ",.0f"), _num(row, "of_ceiling", ".2f"), _num(row, "p50_ms", ".2f"),
             _num(row, "gpu_busy_pct", ".0f"), _num(row, "gpu_power_w", ".0f"), _num(row, "samples_per_joule", ".1f"),
             _num(row, "failed", "d"), _num(row, "lost", "d"), breakdown, timing, row.get("note") or ""]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def failed_row(step_fields: dict[str, Any], note: str, est_s: float | None = None) -> dict[str, Any]:
    return {**step_fields, "samples_s": None, "est_s": est_s, "note": " ".join(note.split())[:NOTE_CHARS]}


def key_lines(rows: list[dict[str, Any]], batch: int, at_s: float, mode: str = "default") -> list[str]:
    """The row that matters most: served against the ceiling at the target batch, for each key point."""
    ceilings = {r["wire"]: r for r in rows if r.get("kind") == "ceiling" and r["batch"] == batch
                and r.get("planned_mode") == mode and r.get("samples_s")}
    parts = [f"in-process {w} {r['samples_s']:,.0f}" for w, r in ceilings.items()] or ["in-process: none measured"]
    for transport, wire in KEY_POINTS:
        r = next((r for r in rows if r.get("kind") == "point" and r["batch"] == batch
                  and (r.get("transport"), r["wire"]) == (transport, wire)), None)
        if r is None or not r.get("samples_s"):
            parts.append(f"{transport} {wire} -" + (f" ({r['note'][:60]})" if r and r.get("note") else ""))
            continue
        frac = f" = {r['of_ceiling']:.2f} of ceiling" if r.get("of_ceiling") else ""
        parts.append(f"{transport} {wire} {r['samples_s']:,.0f}{frac}")
    return ["", f"**KEY (batch {batch}, at {at_s:.0f} s): samples/s " + "; ".join(parts) + "**", ""]


def verdict(device: str, image_size: int, rows: list[dict[str, Any]]) -> list[str]:
    """The target, restated, and whether each target combination met it."""
    lines = [f"target (ResNet-18 3x{TARGET_IMAGE_SIZE}x{TARGET_IMAGE_SIZE}, one H200): >= {TARGET_SAMPLES_S:,} "
             f"samples/s end to end over shm float32 or tcp uint8, and >= {TARGET_CEILING_FRACTION} of the "
             f"in-process ceiling at batch {TARGET_BATCH}"]
    if not device.startswith("cuda") or image_size != TARGET_IMAGE_SIZE:
        return [*lines, "target: not applicable (no CUDA device)" if not device.startswith("cuda")
                else f"target: not applicable (image size {image_size})"]
    met_any = False
    points = [r for r in rows if r.get("kind", "point") == "point"]
    for transport, wire in TARGET_POINTS:
        done = [r for r in points if (r["transport"], r["wire"]) == (transport, wire) and r["samples_s"]]
        best = max(done, key=lambda r: r["samples_s"], default=None)
        at_target = next((r for r in done if r["batch"] == TARGET_BATCH), None)
        fraction = at_target.get("of_ceiling") if at_target else None
        met = bool(best and best["samples_s"] >= TARGET_SAMPLES_S and fraction and fraction >= TARGET_CEILING_FRACTION)
        met_any |= met
        best_s = f"best {best['samples_s']:,.0f} samples/s at batch {best['batch']}" if best else "no point completed"
        frac_s = f"{fraction:.2f}" if fraction is not None else "unknown"
        lines.append(f"  {transport} {wire}: {best_s}; batch {TARGET_BATCH} at {frac_s} of the ceiling: "
                     f"{'met' if met else 'NOT met'}")
    return [*lines, f"target: {'met' if met_any else 'NOT met'}"]
