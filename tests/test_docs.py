"""Every code block of README.md and docs/*.md marked runnable, run as written.

How to mark a block: words after the language in its opening fence (GitHub highlights by the first word
alone, so readers see nothing of them):

    ```bash runnable            run with bash -e (after `. .venv/bin/activate`, as docs/ assumes)
    ```python runnable          run with the venv's python
    ```python file=mymodels.py  not run: written to mymodels.py beside every runnable block of the same document
    ```bash runnable timeout=600   a longer bound than DEFAULT_TIMEOUT_S (a bound on a hang, not a speed claim)

A runnable block must not need anything the reader has to fill in (HOSTA, a GPU, another host) and should
run in seconds on a CPU: pass small sizes (`--batch-size 4 --image-size 64 --num-iters 20`), not the
client's defaults. It passes when it exits 0 without a traceback. Each block runs on its own, from a scratch
directory holding links to the repository's top-level entries (so `python sweep.py`, `examples/` and
`.venv/bin/...` work as from the repository root) and an empty `results/`, in a network namespace of its
own when root (tests/test_readme.py), so the fixed ports the documents use are free. Processes a block
leaves running (a server started with `&`) are killed with its process group.

An unknown word in an info string fails `test_every_marker_is_understood`: a misspelt `runable` would
otherwise quietly leave its block untested.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.test_readme import _isolated

DEFAULT_TIMEOUT_S = 300  # a ResNet-18 server's start on a busy 2-core machine, then a short run
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```$", re.S | re.M)
LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}


@dataclass
class Block:
    document: Path
    line: int
    language: str
    code: str
    runnable: bool = False
    file: str | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S
    unknown: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced code blocks of `document` whose info string has more than a language."""
    text = document.read_text()
    found = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        if len(words) < 2:
            continue
        block = Block(document, text.count("\n", 0, match.start()) + 1, words[0], match.group(2))
        for word in words[1:]:
            key, _, value = word.partition("=")
            if word == "runnable":
                block.runnable = True
            elif key == "file" and value and "/" not in value:
                block.file = value
            elif key == "timeout" and value.isdigit():
                block.timeout_s = int(value)
            else:
                block.unknown.append(word)
        found.append(block)
    return found


ALL = [b for d in DOCUMENTS for b in blocks(d)]
RUNNABLE = [b for b in ALL if b.runnable]


def test_every_marker_is_understood() -> None:
    wrong = [f"{b.name}: {' '.join(b.unknown) or b.language}" for b in ALL
             if b.unknown or (b.runnable and b.language not in LANGUAGES) or (b.runnable and b.file)]
    assert not wrong, "info strings this test does not understand (see its docstring): " + "; ".join(wrong)
    assert RUNNABLE, "no block is marked runnable"


def _scratch(tmp_path: Path, block: Block) -> Path:
    """The repository root's entries, linked, an empty results/, and the document's file= blocks."""
    for entry in ROOT.iterdir():
        if entry.name not in ("results", ".git") and not entry.name.startswith((".pytest", ".ruff")):
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "results").mkdir()
    for other in ALL:
        if other.document == block.document and other.file:
            (tmp_path / other.file).write_text(other.code)
    return tmp_path


def _script(block: Block) -> str:
    if LANGUAGES[block.language] == "python":
        return f".venv/bin/python - <<'RUNNABLE_BLOCK'\n{block.code}RUNNABLE_BLOCK\n"
    return f"set -e\n. .venv/bin/activate\n{block.code}"


@pytest.mark.integration
@pytest.mark.parametrize("block", [pytest.param(b, id=b.name, marks=pytest.mark.timeout(b.timeout_s + 60))
                                   for b in RUNNABLE])
def test_runnable_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    cwd = _scratch(tmp_path, block)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out_file, err_file = tmp_path / "block.out", tmp_path / "block.err"
    with out_file.open("w") as out, err_file.open("w") as err:
        # Files, not pipes: a server the block left running would hold a pipe open after the block ended.
        proc = subprocess.Popen(_isolated(_script(block)), cwd=cwd, env=env, stdout=out, stderr=err,
                                start_new_session=True)
    try:
        proc.wait(timeout=block.timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running
        except ProcessLookupError:
            pass
        proc.wait()
    stdout, stderr = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 0 and "Traceback" not in stderr, (
        f"{block.name} exited {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-3000:]}")
