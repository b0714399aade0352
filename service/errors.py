"""One exception family for lithoscope.

Each error also subclasses the builtin a caller would naturally catch (as zarr's
``errors.py`` does), so ``except ValueError`` around a decoder or ``except OSError``
around a file read keeps working, while the CLI can turn any ``LithoscopeError``
into one line and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "ConfigError",
    "LithoscopeError",
    "ProtocolError",
    "SourceError",
]


class LithoscopeError(Exception):
    """Base of every error lithoscope raises on purpose."""


class ProtocolError(LithoscopeError, ValueError):
    """A message on the wire could not be decoded or broke the protocol.

    ``reason`` is a short, stable token (``bad_header``, ``size_mismatch``, ...) used
    as the key of the worker's rejection counters.
    """

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class SourceError(LithoscopeError, OSError):
    """A frame source (file, folder, camera, simulator) could not deliver frames."""


class ArchiveError(LithoscopeError, OSError):
    """An archive could not be created, written or read."""


class ConfigError(LithoscopeError, ValueError):
    """A configuration value or command-line option is invalid."""
