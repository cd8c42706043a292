"""infer-keygen: keys where asked, secrets private, an existing pair kept, one line (exit 2) for what it refuses."""

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


def _modes(keys: Path) -> dict[str, int]:
    return {str(p.relative_to(keys)): p.stat().st_mode & 0o777 for p in (keys, *keys.rglob("*"))}


def test_secret_files_are_0600_and_their_folders_0700_whatever_the_umask(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    proc = subprocess.run([sys.executable, *KEYGEN, str(keys)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, umask=0)  # the loosest umask: nothing may come from it
    assert proc.returncode == 0, proc.stderr
    assert _modes(keys) == {
        ".": 0o700, "authorized_clients": 0o700, "authorized_clients/client.key": 0o644,
        "server.key": 0o644, "server.key_secret": 0o600, "client.key": 0o644, "client.key_secret": 0o600,
    }
    # The authorised copy is the client's public key file itself, and zmq.auth reads what was written.
    import zmq.auth

    assert (keys / "authorized_clients" / "client.key").read_bytes() == (keys / "client.key").read_bytes()
    public, secret = zmq.auth.load_certificate(keys / "client.key_secret")
    assert secret and zmq.auth.load_certificates(keys / "authorized_clients") == {public: True}


def test_an_existing_key_pair_is_kept_unless_forced(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert _keygen(str(keys)).returncode == 0
    before = {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()}
    again = _keygen(str(keys))
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    assert again.stderr.splitlines() == [
        f"Error: {keys / 'client.key'} exists: a new key pair for 'client' would lock out the host holding the old "
        "one; --force replaces it, --client NAME adds another"]
    assert {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()} == before
    # An authorised key alone (a host's public key copied in) is not replaced either.
    (keys / "authorized_clients" / "hostb.key").write_bytes(before[keys / "client.key"])
    assert _keygen(str(keys), "--client", "hostb").returncode == 2
    forced = _keygen(str(keys), "--force")
    assert forced.returncode == 0, forced.stderr
    after = {p: p.read_bytes() for p in keys.rglob("*") if p.is_file()}
    assert {str(p.relative_to(keys)) for p in before if after[p] != before[p]} == {
        "client.key", "client.key_secret", "authorized_clients/client.key"}
    assert _modes(keys)["client.key_secret"] == 0o600
