"""A wrong CURVE key file, wherever keys are read: one line naming the file and what was expected, exit 2.

Real command lines (infer-client, infer-stats, infer-server) run against key files of the wrong kind: a public
key where a secret one belongs, the server's secret handed to a client, garbage, a file that is not there. No
server runs: each must refuse before connecting (the client would otherwise wait out its 30 s HELLO timeout)
or, for the server, before loading its model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.security import (
    AUTHORIZED,
    CLIENT_SECRET,
    SERVER_PUBLIC,
    SERVER_SECRET,
    KeyFileError,
    check_client_keys,
    generate_keys,
    read_key_file,
)
from tests.support import run_cli

pytestmark = pytest.mark.integration

NO_SERVER = "tcp://127.0.0.1:9"  # discard port: nothing answers there


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    paths = generate_keys(root / "keys")
    paths["garbage"] = root / "garbage.key"
    paths["garbage"].write_text("not a key\n")
    paths["missing"] = root / "missing.key"
    return paths


def _one_error_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# (client secret, server public, the flag at fault, the file at fault, what the line says)
WRONG_CLIENT_KEYS = [
    ("client_public", "server_public", "--curve-client-key", "client_public",
     f"is a public key file: expected {CLIENT_SECRET}"),
    ("client_secret", "server_secret", "--curve-server-key", "server_secret",
     f"holds a secret key: expected {SERVER_PUBLIC}"),
    ("garbage", "server_public", "--curve-client-key", "garbage", f"is not a CURVE key file: expected {CLIENT_SECRET}"),
    ("client_secret", "garbage", "--curve-server-key", "garbage", f"is not a CURVE key file: expected {SERVER_PUBLIC}"),
]


@pytest.mark.parametrize("tool", ["client", "client.stats_cli"])
@pytest.mark.parametrize(("secret", "public", "flag", "culprit", "says"), WRONG_CLIENT_KEYS)
def test_a_client_given_the_wrong_key_file_says_which_and_what_was_expected(
        keys, tool: str, secret: str, public: str, flag: str, culprit: str, says: str) -> None:
    args = ("--server", NO_SERVER) if tool == "client" else (NO_SERVER,)
    proc = run_cli(tool, *args, "--curve-client-key", str(keys[secret]), "--curve-server-key", str(keys[public]),
                   timeout=60)
    assert _one_error_line(proc) == f"Error: {flag}: {keys[culprit]} {says}"


@pytest.mark.parametrize("tool", ["client", "client.stats_cli"])
def test_a_missing_key_file_is_named(keys, tool: str) -> None:
    args = ("--server", NO_SERVER) if tool == "client" else (NO_SERVER,)
    proc = run_cli(tool, *args, "--curve-client-key", str(keys["client_secret"]),
                   "--curve-server-key", str(keys["missing"]), timeout=60)
    line = _one_error_line(proc)
    assert "--curve-server-key" in line and str(keys["missing"]) in line and "does not exist" in line


def _curve_dir(tmp_path: Path, server_secret: str, authorised: dict[str, str]) -> Path:
    """A key directory as infer-keygen lays it out, with the given contents."""
    root = tmp_path / "curve"
    (root / "authorized_clients").mkdir(parents=True)
    (root / "server.key_secret").write_text(server_secret)
    for name, text in authorised.items():
        (root / "authorized_clients" / name).write_text(text)
    return root


def test_a_server_given_a_wrong_key_directory_refuses_before_loading_its_model(keys, tmp_path: Path) -> None:
    public, secret = keys["server_public"].read_text(), keys["server_secret"].read_text()
    cases = [  # (key directory, the file at fault, what the line says)
        (_curve_dir(tmp_path / "a", public, {}), "server.key_secret", f"is a public key file: expected {SERVER_SECRET}"),
        (_curve_dir(tmp_path / "b", secret, {"hostb.key": "garbage"}), "authorized_clients/hostb.key",
         f"is not a CURVE key file: expected {AUTHORIZED}"),
        (_curve_dir(tmp_path / "c", secret, {"hostc.key": keys["client_secret"].read_text()}),
         "authorized_clients/hostc.key", f"holds a secret key: expected {AUTHORIZED}"),
    ]
    for curve_dir, culprit, says in cases:
        # resnet18 with compile: minutes of work, were the keys checked after it.
        proc = run_cli("server", "--curve-dir", str(curve_dir), "--device", "cpu", "--model", "resnet18",
                       timeout=60)
        assert _one_error_line(proc) == f"Error: --curve-dir: {curve_dir / culprit} {says}"
    no_authorised = tmp_path / "d"
    no_authorised.mkdir()
    line = _one_error_line(run_cli("server", "--curve-dir", str(no_authorised), "--model", "noop", timeout=60))
    assert line.startswith(f"Error: --curve-dir: {no_authorised / 'authorized_clients'} does not exist")


def test_reading_a_key_checks_its_kind_and_bounds_its_size(keys, tmp_path: Path) -> None:
    public, secret = read_key_file(keys["client_secret"], True, CLIENT_SECRET)
    assert len(public) == len(secret or b"") == 40
    assert read_key_file(keys["server_public"], False, SERVER_PUBLIC)[1] is None
    huge = tmp_path / "huge.key"
    huge.write_bytes(keys["server_public"].read_bytes() + b"#" * (1 << 20))
    with pytest.raises(KeyFileError, match="is not a CURVE key file"):
        read_key_file(huge, False, SERVER_PUBLIC)
    with pytest.raises(KeyFileError, match=r"^--curve-client-key: cannot read .*missing\.key \(No such file"):
        check_client_keys(keys["missing"], keys["server_public"])
