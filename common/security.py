"""Optional CURVE encryption and client authentication (ZeroMQ's zmq.auth).

Key directory layout (what `infer-keygen DIR` writes):

    DIR/server.key                   server public key   (give to clients)
    DIR/server.key_secret            server key pair     (server only)
    DIR/client.key                   client public key
    DIR/client.key_secret            client key pair     (client only)
    DIR/authorized_clients/*.key     public keys the server accepts

The server accepts only clients whose public key is in authorized_clients/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class KeyFileError(Exception):
    """A key file is missing or unreadable."""


def generate_keys(directory: Path, client_name: str = "client") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    authorized = directory / "authorized_clients"
    authorized.mkdir(exist_ok=True)
    if not (directory / "server.key_secret").exists():
        zmq.auth.create_certificates(str(directory), "server")
    public, secret = zmq.auth.create_certificates(str(directory), client_name)
    shutil.copy(public, authorized / Path(public).name)
    return {
        "server_public": directory / "server.key",
        "server_secret": directory / "server.key_secret",
        "client_public": Path(public),
        "client_secret": Path(secret),
    }


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    if need_secret and not secret:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def start_server_auth(ctx: zmq.Context, sock: zmq.Socket, curve_dir: Path) -> ThreadAuthenticator:
    """Make `sock` a CURVE server that admits only authorised client keys."""
    authorized = curve_dir / "authorized_clients"
    if not authorized.is_dir():
        raise KeyFileError(f"{authorized} does not exist (run infer-keygen {curve_dir})")
    public, secret = _load(curve_dir / "server.key_secret", need_secret=True)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def configure_client(sock: zmq.Socket, client_secret_file: Path, server_public_file: Path) -> None:
    """Make `sock` a CURVE client; must be called before connect()."""
    public, secret = _load(client_secret_file, need_secret=True)
    server_public, _ = _load(server_public_file, need_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def keygen_main() -> None:
    """`infer-keygen DIR [--client NAME]`: create server and client CURVE keys under DIR."""
    import click

    from common import __version__
    from common.options import check_writable_file

    @click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
    @click.version_option(__version__, prog_name="infer-keygen")
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--client", "client_name", default="client",
                  help="Name of the client key pair to add (DIR/NAME.key, DIR/NAME.key_secret).")
    def cli(directory: Path, client_name: str) -> None:
        """Create CURVE keys under DIRECTORY (made if missing): the server's pair once, a client's pair each time.

        The client's public key is also copied to DIRECTORY/authorized_clients/, the keys the server accepts.
        """
        if not client_name or "/" in client_name or client_name.startswith("."):
            raise click.BadParameter(f"{client_name!r} is not a plain file name", param_hint="--client")
        try:
            check_writable_file(directory / f"{client_name}.key")  # an unwritable DIR is a usage error
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        try:
            paths = generate_keys(directory, client_name)
        except OSError as exc:
            raise click.ClickException(f"cannot write keys under {directory}: {exc.strerror or exc}") from None
        for name, path in paths.items():
            click.echo(f"{name}: {path}")

    cli()
