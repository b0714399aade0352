"""lithoscope.service: what runs beside the microscope.

Stages, one module each: ``protocol`` (the wire), ``sources`` (frames in),
``publisher`` (frames onto ZeroMQ), ``worker`` (analysis, results, archive),
``analysis`` (per-frame image analysis), ``alerts`` (change detection),
``archive`` (zarr v3 sessions), ``config`` and ``cli``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import ArchiveError, ConfigError, LithoscopeError, ProtocolError, SourceError

try:
    __version__ = version("lithoscope")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = [
    "ArchiveError",
    "ConfigError",
    "LithoscopeError",
    "ProtocolError",
    "SourceError",
    "__version__",
]
