"""Every rule docs/PROTOCOL.md states has a conformance test, and every test's rule is in the document."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from tests.support import ROOT

DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
STATED = re.compile(r"\*\*R(\d+)\.\*\*")  # where the document states rule n: **Rn.**
TESTED = re.compile(r"^def test_((?:r\d+_)+)", re.MULTILINE)  # test_r30_r34_... checks R30 and R34
RANGE = re.compile(r"numbered, R1 to R(\d+)")  # "Each rule a server keeps is numbered, R1 to R64"
RETIRED = re.compile(r"Retired numbers \(never given, never to be\s+used\): ([^.]*)\.")


def rules_stated() -> collections.Counter:
    return collections.Counter(int(n) for n in STATED.findall(DOC))


def rules_with_tests() -> set[int]:
    rules: set[int] = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for prefix in TESTED.findall(path.read_text()):
            rules |= {int(n) for n in re.findall(r"r(\d+)_", prefix)}
    return rules


def retired() -> set[int]:
    """The numbers the document says were never given: "R21–R29, R39, R47–R49"."""
    match = RETIRED.search(DOC)
    assert match, "docs/PROTOCOL.md lists its retired rule numbers"
    numbers: set[int] = set()
    for first, last in re.findall(r"R(\d+)(?:–R(\d+))?", match.group(1)):
        numbers |= set(range(int(first), int(last or first) + 1))
    return numbers


def test_every_rule_is_stated_once_and_tested():
    stated = rules_stated()
    assert len(stated) >= 40, "the rules are marked **Rn.** in docs/PROTOCOL.md"
    assert [n for n, times in stated.items() if times > 1] == []
    assert sorted(set(stated) - rules_with_tests()) == [], "rules without a test in tests/conformance/"


def test_every_test_names_a_rule_of_the_document():
    assert sorted(rules_with_tests() - set(rules_stated())) == []


def test_the_numbers_the_document_claims_are_the_rules_it_states():
    stated, gone = set(rules_stated()), retired()
    match = RANGE.search(DOC)
    assert match and int(match.group(1)) == max(stated), "the document's 'R1 to Rn' names its last rule"
    assert sorted(stated & gone) == [], "a retired number is stated as a rule"
    assert sorted(set(range(1, max(stated) + 1)) - stated - gone) == [], "a number neither stated nor retired"
