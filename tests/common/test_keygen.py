"""infer-keygen: keys where asked, and one readable line (exit 2) for a directory it cannot write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.integration  # every test here starts a process

KEYGEN = ("-c", "from common.security import keygen_main; keygen_main()")


def _keygen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *KEYGEN, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_keys_are_written_and_a_second_client_added(tmp_path: Path) -> None:
    keys = tmp_path / "new" / "keys"
    first = _keygen(str(keys))
    assert first.returncode == 0, first.stderr
    assert {p.name for p in keys.iterdir()} >= {"server.key", "server.key_secret", "client.key", "client.key_secret"}
    second = _keygen(str(keys), "--client", "hostb")
    assert second.returncode == 0 and (keys / "authorized_clients" / "hostb.key").exists()


def test_an_unwritable_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for target, expected in ((blocker, "is a file"), (blocker / "keys", "cannot write")):
        proc = _keygen(str(target))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
        assert len(errors) == 1 and expected in errors[0], proc.stderr


def test_a_client_name_that_is_a_path_is_refused(tmp_path: Path) -> None:
    proc = _keygen(str(tmp_path / "keys"), "--client", "../elsewhere")
    assert proc.returncode == 2 and "not a plain file name" in proc.stderr
    assert not (tmp_path / "elsewhere.key").exists()
