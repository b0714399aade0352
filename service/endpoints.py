"""ZeroMQ endpoints: the defaults and the one check every command and setting passes.

Kept apart from :mod:`.config` (which pulls in the analysis options and with them
OpenCV) so that client commands can check an endpoint without loading the analysis.
"""

from __future__ import annotations

from urllib.parse import urlparse

from .errors import ConfigError

__all__ = ["DEFAULT_FRAMES_ENDPOINT", "DEFAULT_RESULTS_ENDPOINT", "is_loopback",
           "parse_endpoint"]

DEFAULT_FRAMES_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_RESULTS_ENDPOINT = "tcp://127.0.0.1:5556"
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def parse_endpoint(value: str, *, what: str = "endpoint", allow_remote: bool = False) -> str:
    """Check a ZeroMQ endpoint; refuse non-loopback tcp unless explicitly allowed.

    Frames and results carry unpublished data and the frames port accepts input
    from anyone who can reach it, so the service listens on loopback unless told
    otherwise (docs/security.md).
    """
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"Expected a ZeroMQ {what} like tcp://127.0.0.1:5555 or "
                          f"ipc:///tmp/lithoscope-frames. Got {value!r} instead.")
    scheme = value.split("://", 1)[0]
    if scheme not in ("tcp", "ipc", "inproc"):
        raise ConfigError(f"Expected a tcp://, ipc:// or inproc:// {what}. Got {value!r}.")
    if scheme == "tcp":
        host = urlparse(value).hostname or value.split("://", 1)[1].rsplit(":", 1)[0]
        if host not in _LOOPBACK and not allow_remote:
            raise ConfigError(
                f"The {what} {value} is not on loopback. lithoscope listens on 127.0.0.1 "
                "unless --allow-remote is given."
            )
    return value


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp on a loopback address: nothing off this machine
    can connect."""
    if not endpoint.startswith("tcp://"):
        return True
    host = urlparse(endpoint).hostname or endpoint.split("://", 1)[1].rsplit(":", 1)[0]
    return host in _LOOPBACK
