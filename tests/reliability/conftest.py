"""Reliability figures: each test records what it tried, so the README's numbers are reproducible.

Figures are appended as JSON lines to $RELIABILITY_FIGURES (default
results/reliability_figures.jsonl) and printed (visible with `pytest -s`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import ROOT


def record_figures(name: str, **figures: object) -> None:
    path = Path(os.environ.get("RELIABILITY_FIGURES", ROOT / "results" / "reliability_figures.jsonl"))
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    with open(path, "a") as f:  # one whole line per write: an interrupted run leaves whole rows
        f.write(line + "\n")
    print(f"\nRELIABILITY {line}")
