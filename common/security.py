"""Optional CURVE encryption and client authentication (ZeroMQ's zmq.auth).

Key directory layout (what `infer-keygen DIR` writes):

    DIR/server.key                   server public key   (give to clients)
    DIR/server.key_secret            server key pair     (server only)
    DIR/client.key                   client public key
    DIR/client.key_secret            client key pair     (client only)
    DIR/authorized_clients/*.key     public keys the server accepts

The server accepts only clients whose public key is in authorized_clients/.
Secret files are written 0600 and the directories infer-keygen makes 0700,
whatever the umask: a secret key readable by other users is no secret.

A key file is read in full here before zmq sees it, so that a file of the wrong
kind (a public key where a secret one belongs, or the server's secret given to
a client) is one line naming the file and what was expected. Reading needs no
zmq, so the command lines check their keys before importing anything heavy.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

KEY_FILE_LIMIT = 64 << 10  # bytes: a key file is ~350; anything larger is not one
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")  # a 32-byte key in Z85 (ZeroMQ's RFC 32)

CLIENT_SECRET = "this client's secret key file (NAME.key_secret from infer-keygen)"
SERVER_PUBLIC = "the server's public key file (server.key from infer-keygen; its secret stays on the server's host)"
SERVER_SECRET = "the server's secret key file (server.key_secret from infer-keygen)"
AUTHORIZED = "a client's public key file (NAME.key from infer-keygen)"


class KeyFileError(ValueError):
    """A key file is missing, unreadable, or not the kind of key expected; the message is one line."""


def read_key_file(path: Path, secret: bool, expected: str) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys of `path`, which must hold a secret key if `secret`, else only a public one.

    `expected` says what the file should have been, for the error.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path} ({exc.strerror or exc}): expected {expected}") from None
    keys = _parse_key_file(data) if len(data) <= KEY_FILE_LIMIT else {}
    public, secret_key = keys.get(b"public-key"), keys.get(b"secret-key")
    if public is None or not all(_Z85_KEY.fullmatch(k) for k in (public, secret_key) if k is not None):
        raise KeyFileError(f"{path} is not a CURVE key file: expected {expected}")
    if secret and secret_key is None:
        raise KeyFileError(f"{path} is a public key file: expected {expected}")
    if not secret and secret_key is not None:
        raise KeyFileError(f"{path} holds a secret key: expected {expected}")
    return public, secret_key


def _parse_key_file(data: bytes) -> dict[bytes, bytes]:
    """The `public-key = "..."` and `secret-key = "..."` lines of a ZPL certificate, as zmq.auth reads them."""
    keys = {}
    for line in data.splitlines():
        name, sep, value = line.strip().partition(b"=")
        if sep and name.strip() in (b"public-key", b"secret-key"):
            keys[name.strip()] = value.strip(b" \t'\"")
    return keys


def check_client_keys(client_secret: Path, server_public: Path) -> None:
    """For the command lines, before any work: KeyFileError naming the option, the file and what was expected."""
    for flag, path, secret, expected in (("--curve-client-key", client_secret, True, CLIENT_SECRET),
                                         ("--curve-server-key", server_public, False, SERVER_PUBLIC)):
        try:
            read_key_file(path, secret, expected)
        except KeyFileError as exc:
            raise KeyFileError(f"{flag}: {exc}") from None


def check_server_keys(curve_dir: Path) -> tuple[bytes, bytes]:
    """The server's (public, secret) keys, once the whole of `curve_dir` is known to be what the server needs."""
    if not curve_dir.is_dir():
        raise KeyFileError(f"--curve-dir: {curve_dir} is not a directory: expected infer-keygen's key directory")
    authorized = curve_dir / "authorized_clients"
    if not authorized.is_dir():
        raise KeyFileError(f"--curve-dir: {authorized} does not exist: expected the public keys of the clients "
                           f"to admit (run infer-keygen {curve_dir})")
    try:
        public, secret = read_key_file(curve_dir / "server.key_secret", True, SERVER_SECRET)
        for key in sorted(authorized.glob("*.key")):
            read_key_file(key, False, AUTHORIZED)
    except KeyFileError as exc:
        raise KeyFileError(f"--curve-dir: {exc}") from None
    assert secret is not None  # read_key_file checked it
    return public, secret


def start_server_auth(ctx: zmq.Context, sock: zmq.Socket, curve_dir: Path) -> ThreadAuthenticator:
    """Make `sock` a CURVE server that admits only authorised client keys."""
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = check_server_keys(curve_dir)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve_dir / "authorized_clients"))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def configure_client(sock: zmq.Socket, client_secret_file: Path, server_public_file: Path) -> None:
    """Make `sock` a CURVE client; must be called before connect()."""
    public, secret = read_key_file(client_secret_file, True, CLIENT_SECRET)
    server_public, _ = read_key_file(server_public_file, False, SERVER_PUBLIC)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


# -- writing keys ----------------------------------------------------------------


class KeysExist(Exception):
    """A key pair (or its authorised copy) would be replaced; the message says which and what to do."""


def pair_files(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """NAME's public key file, secret key file, and (for a client) the server's authorised copy."""
    return directory / f"{name}.key", directory / f"{name}.key_secret", directory / "authorized_clients" / f"{name}.key"


def generate_keys(directory: Path, client_name: str = "client", force: bool = False) -> dict[str, Path]:
    """The server's key pair once, and a new pair for `client_name`, authorised; KeysExist unless `force`.

    Directories made here are 0700, secret files 0600; each file is written whole, then renamed into place.
    """
    public, secret, authorised = pair_files(directory, client_name)
    taken = [p for p in (public, secret, authorised) if p.exists()]
    if taken and not force:
        raise KeysExist(f"{taken[0]} exists: a new key pair for {client_name!r} would lock out the host holding the "
                        f"old one; --force replaces it, --client NAME adds another")
    _private_dir(directory)
    _private_dir(authorised.parent)
    if not (directory / "server.key_secret").exists():
        _write_pair(directory, "server")
    _write_file(authorised, _write_pair(directory, client_name), private=False)
    return {
        "server_public": directory / "server.key",
        "server_secret": directory / "server.key_secret",
        "client_public": public,
        "client_secret": secret,
    }


def _private_dir(path: Path) -> None:
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is reduced by the umask, never raised: this makes it exact


def _write_pair(directory: Path, name: str) -> str:
    """NAME.key_secret (0600) and NAME.key (0644); returns the public key file's text."""
    import zmq

    public, secret = zmq.curve_keypair()
    public_file, secret_file, _ = pair_files(directory, name)
    _write_file(secret_file, _certificate(public, secret), private=True)
    text = _certificate(public, None)
    _write_file(public_file, text, private=False)
    return text


def _certificate(public: bytes, secret: bytes | None) -> str:
    """A ZPL certificate as zmq.auth writes it (and reads it)."""
    kind = "Secret" if secret else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now()} by infer-keygen  ****",
             f"#   ZeroMQ CURVE **{kind}** Certificate",
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." if secret
             else "#   Exchange securely, or use a secure mechanism to verify the contents of this file after exchange.",
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_file(path: Path, text: str, private: bool) -> None:
    """Write `text` whole, then rename it into place: 0600 from its creation if `private`, else 0644."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if not private:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keygen_main() -> None:
    """`infer-keygen DIR [--client NAME] [--force]`: create server and client CURVE keys under DIR."""
    import click

    from common import __version__

    class Refused(click.ClickException):
        exit_code = 2  # bad usage: nothing was written

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
    @click.version_option(__version__, prog_name="infer-keygen")
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--client", "client_name", default="client",
                  help="Name of the client key pair to add (DIR/NAME.key, DIR/NAME.key_secret).")
    @click.option("--force", is_flag=True,
                  help="Replace NAME's key pair if it exists: hosts holding the old secret key are locked out.")
    def cli(directory: Path, client_name: str, force: bool) -> None:
        """Create CURVE keys under DIRECTORY (made 0700 if missing): the server's pair once, a client's pair each time.

        The client's public key is also copied to DIRECTORY/authorized_clients/, the keys the server accepts.
        Secret key files are 0600. An existing pair of that name is kept unless --force.
        """
        if not client_name or "/" in client_name or client_name.startswith("."):
            raise click.BadParameter(f"{client_name!r} is not a plain file name", param_hint="--client")
        try:
            paths = generate_keys(directory, client_name, force)
        except KeysExist as exc:
            raise Refused(str(exc)) from None
        except OSError as exc:  # an unwritable DIR is a usage error too
            raise Refused(f"cannot write keys under {directory}: {exc.strerror or exc}") from None
        for name, path in paths.items():
            click.echo(f"{name}: {path}")

    cli()
