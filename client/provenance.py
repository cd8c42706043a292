"""Where and from what a result came: the host, the checkout's commit, the time in UTC.

Recorded with every client result so that a CSV row or JSON file describes
itself. Reading the commit needs no `git` process: HEAD and the ref it names
are read from the checkout's .git directory (None outside a checkout).
"""

from __future__ import annotations

import functools
import platform
from datetime import datetime, timezone
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def hostname() -> str:
    return platform.node()


@functools.cache
def git_commit(root: Path = CHECKOUT) -> str | None:
    """The commit HEAD points at in the checkout at `root`, or None where there is none to read."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        for directory in (git, base):
            if (directory / ref).is_file():
                return (directory / ref).read_text().strip() or None
        for line in (base / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    except (OSError, IndexError):
        pass
    return None


def utc_timestamp(unix_s: float | None) -> str | None:
    """'2026-12-01T14:03:07.123Z' for a Unix time, None for None."""
    if unix_s is None:
        return None
    moment = datetime.fromtimestamp(unix_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
