"""The size limits the layers keep: no module over 400 lines, no function over 60.

Past those a module holds more than one role, or a function more than one step; split it.
"""

from __future__ import annotations

import ast

from tests.support import ROOT

PACKAGES = ("common", "server", "client", "sweeps")
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_module_is_over_400_lines() -> None:
    modules = _modules()
    assert len(modules) > 50  # the packages are where this test looks for them
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := p.read_text().count("\n")) > MAX_LINES}
    assert long == {}


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}
