"""One exception family for lithoscope.

Each error also subclasses the builtin a caller would naturally catch (as zarr's
``errors.py`` does), so ``except ValueError`` around a decoder or ``except OSError``
around a file read keeps working, while the CLI can turn any ``LithoscopeError``
into one line and a non-zero exit.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "ArchiveError",
    "ConfigError",
    "LithoscopeError",
    "MissingExtraError",
    "ProtocolError",
    "SourceError",
    "require",
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


class MissingExtraError(LithoscopeError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, *, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency, or fail with one line naming the extra to install.

    Parameters
    ----------
    module : str
        What to import (``"xarray"``, ``"rsciio.digitalmicrograph"``).
    extra : str
        The extra of ``lithoscope`` that installs it (``"scale"``, ``"formats"``).
    purpose : str
        What needs it, as the start of a sentence ("Reading DM4 files").
    package : str, optional
        The distribution's name when it differs from the module's (``"rosettasciio"``).

    Raises
    ------
    MissingExtraError
        The module (or one it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        name = package or module.split(".")[0]
        root = module.split(".")[0]
        missing = (f" ({exc.name} is missing)"
                   if exc.name and exc.name.split(".")[0] != root else "")
        raise MissingExtraError(
            f"{purpose} needs {name}{missing}, which the [{extra}] extra installs: "
            f"pip install 'lithoscope[{extra}]'."
        ) from exc
