"""What the tests under tests/common share: docs/PROTOCOL.md's keys."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tests.conftest import ROOT

PROTOCOL_DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()
# A key counts as documented when it appears in backticks in the document.
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", PROTOCOL_DOC))


def undocumented(keys: Iterable[str]) -> list[str]:
    """The keys docs/PROTOCOL.md does not name, sorted."""
    return sorted(k for k in keys if k not in DOCUMENTED)
