"""The package layers and no import cycles: pyproject.toml's import-linter contracts hold.

`make test` runs `lint-imports` too; this keeps the check in every pytest run, `make unit` included.
import-linter reads every import statement, those inside functions included.
"""

from __future__ import annotations

import sys

import pytest

from tests.support import ROOT

cli = pytest.importorskip("importlinter.cli")


def test_the_import_contracts_hold(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports puts the working directory first
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out
