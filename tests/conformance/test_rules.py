"""Every rule docs/PROTOCOL.md states has a conformance test, and every test's rule is in the document."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from tests.conftest import ROOT

STATED = re.compile(r"\*\*R(\d+)\.\*\*")  # where the document states rule n: **Rn.**
TESTED = re.compile(r"^def test_((?:r\d+_)+)", re.MULTILINE)  # test_r30_r34_... checks R30 and R34


def rules_stated() -> collections.Counter:
    return collections.Counter(int(n) for n in STATED.findall((ROOT / "docs" / "PROTOCOL.md").read_text()))


def rules_with_tests() -> set[int]:
    rules: set[int] = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for prefix in TESTED.findall(path.read_text()):
            rules |= {int(n) for n in re.findall(r"r(\d+)_", prefix)}
    return rules


def test_every_rule_is_stated_once_and_tested():
    stated = rules_stated()
    assert len(stated) >= 40, "the rules are marked **Rn.** in docs/PROTOCOL.md"
    assert [n for n, times in stated.items() if times > 1] == []
    assert sorted(set(stated) - rules_with_tests()) == [], "rules without a test in tests/conformance/"


def test_every_test_names_a_rule_of_the_document():
    assert sorted(rules_with_tests() - set(rules_stated())) == []
