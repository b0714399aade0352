"""CURVE authentication and encryption for the frames and results sockets.

On loopback only processes on the microscope PC can connect, and the service needs no
keys. Listening on a lab network is different: anyone who can reach the frames port
could write into the archive, and anyone who can reach the results port could read
unpublished measurements. So a service bound beyond loopback requires ZeroMQ CURVE
(``zmq.auth``): the service holds a key pair, every client holds its own, and the
service's authenticator accepts only the client public keys found in one folder.
docs/security.md has the threat model.

Key files are pyzmq's certificate files (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key (safe to copy anywhere), ``NAME.key_secret`` holds
both keys (keep it on the machine it was made for).

References
----------
ZeroMQ RFC 26/CurveZMQ and RFC 27/ZAP; pyzmq, "Security: zmq.auth".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

__all__ = ["ClientCurve", "ServerCurve", "create_keys", "load_public_key"]


def create_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Make ``NAME.key`` (public) and ``NAME.key_secret`` in ``directory``.

    Refuses to overwrite: replacing a key pair silently locks out every client (or
    the service) that holds the old one.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"Expected a plain key name like 'server' or 'camera-pc'. Got {name!r}.")
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists; choose another name or folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        made = zmq.auth.create_certificates(folder, name)
        Path(made[1]).chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"Cannot write keys to {folder}: {exc.strerror or exc}.") from None
    return Path(made[0]), Path(made[1])


def _load(path: str | Path, *, secret: bool, what: str) -> tuple[bytes, bytes | None]:
    file = Path(path)
    try:
        public, secret_key = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the {what} {file}: {exc}. Expected a key file made "
                          "by `lithoscope keys`.") from None
    if secret and secret_key is None:
        raise ConfigError(f"The {what} {file} holds no secret key; give the "
                          "NAME.key_secret file, not NAME.key.")
    return public, secret_key


def load_public_key(path: str | Path) -> bytes:
    """The public key in a ``.key`` (or ``.key_secret``) file."""
    return _load(path, secret=False, what="public key")[0]


@dataclass(frozen=True)
class ServerCurve:
    """The service's side: its key pair and the folder of accepted client public keys."""

    public_key: bytes
    secret_key: bytes
    client_keys_dir: Path

    @classmethod
    def load(cls, server_secret: str | Path, client_keys_dir: str | Path) -> ServerCurve:
        public, secret = _load(server_secret, secret=True, what="server secret key")
        folder = Path(client_keys_dir)
        if not folder.is_dir() or not any(folder.glob("*.key")):
            raise ConfigError(f"Expected a folder of client public keys (*.key) at {folder}; "
                              "without one no client could connect.")
        assert secret is not None
        return cls(public_key=public, secret_key=secret, client_keys_dir=folder)

    def start_authenticator(self, context: zmq.Context[Any]) -> ThreadAuthenticator:
        """Accept only the client keys in ``client_keys_dir`` on every socket of ``context``.

        The authenticator (ZAP handler) runs in its own thread for the context's
        lifetime; stop it before terminating the context.
        """
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(self.client_keys_dir))
        return auth

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make a socket a CURVE server; call before ``bind``."""
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_server = True


@dataclass(frozen=True)
class ClientCurve:
    """A client's side: its own key pair and the service's public key."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, server_public: str | Path, client_secret: str | Path) -> ClientCurve:
        server_key = load_public_key(server_public)
        public, secret = _load(client_secret, secret=True, what="client secret key")
        assert secret is not None
        return cls(server_public_key=server_key, public_key=public, secret_key=secret)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make a socket a CURVE client of the service; call before ``connect``."""
        socket.curve_secretkey = self.secret_key
        socket.curve_publickey = self.public_key
        socket.curve_serverkey = self.server_public_key
