"""File writes that an interrupted run never leaves half done, in formats any reader takes.

`write_atomic` replaces a whole file by rename; `append_csv_row` appends one
whole row with a single write() on a file opened for appending; `json_text` is
standard JSON (RFC 8259), which has no Infinity or NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path | str, text: str) -> None:
    """Write to a temporary file beside `path` and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def finite(value: Any) -> Any:
    """`value` with every float that is not finite (an unbounded figure, a mean of nothing) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: Any, **dumps: Any) -> str:
    """`json.dumps(value)` as standard JSON: a figure that is not finite is null, which every parser reads
    (Python's own `Infinity` and `NaN` are not JSON: jq, JavaScript and most other readers refuse them)."""
    return json.dumps(finite(value), allow_nan=False, **dumps)


CSV_DIGITS = 6  # significant digits of a float cell: past a latency histogram's 3, without repr noise


def _csv_value(v: Any) -> Any:
    """A value as one CSV cell: None empty, floats to CSV_DIGITS significant digits, lists space-separated."""
    if isinstance(v, list):
        return " ".join("" if x is None else str(_csv_value(x)) for x in v)
    if isinstance(v, float):
        return f"{v:.{CSV_DIGITS}g}"
    return "" if v is None else v


def append_csv_row(path: Path | str, row: dict[str, Any]) -> None:
    """Append one row, writing the header first if the file is new or empty.

    If the file's header differs from the row's keys, the row follows the
    file's columns (keys it lacks are left empty, keys it does not know dropped),
    so rows from older and newer versions can share one file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(row)
    header_needed = not path.exists() or path.stat().st_size == 0
    if not header_needed:
        with open(path, newline="") as f:
            existing = next(csv.reader(f), None)
        if existing:
            columns = existing
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header_needed:
        writer.writerow(columns)
    writer.writerow([_csv_value(row.get(c)) for c in columns])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, buf.getvalue().encode())
    finally:
        os.close(fd)
