"""common/fileio.py: whole-file writes, and JSON that strict parsers read."""

from __future__ import annotations

import json
import math

import pytest

from common.fileio import json_text, write_atomic


def _strict(text: str) -> object:
    """Parse as RFC 8259 JSON: Python's Infinity and NaN extensions refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_figures_that_are_not_finite_are_written_as_null_everywhere_in_the_value() -> None:
    value = {"bound": math.inf, "rows": [1.5, -math.inf, {"std": math.nan}], "pair": (2, math.nan), "n": 3}
    with pytest.raises(ValueError):
        _strict(json.dumps(value))  # what json.dumps alone writes
    assert _strict(json_text(value)) == {"bound": None, "rows": [1.5, None, {"std": None}], "pair": [2, None], "n": 3}
    assert value["bound"] == math.inf  # the caller's value is left as it was


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_atomic(path, json_text({"a": 1}))
    write_atomic(path, json_text({"a": math.inf}, indent=1))
    assert _strict(path.read_text()) == {"a": None} and [p.name for p in path.parent.iterdir()] == ["r.json"]
