"""lithoscope.service: what runs beside the microscope.

Stages, one module each: ``protocol`` (the wire), ``sources`` (frames in),
``publisher`` (frames onto ZeroMQ), ``worker`` (analysis, results, archive),
``analysis`` (per-frame image analysis), ``alerts`` (change detection),
``archive`` (zarr v3 sessions), ``config`` and ``cli``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    "open_archive",
]


def __getattr__(name: str) -> Any:
    # open_archive pulls in xarray and dask: imported on first use, not with the package.
    if name == "open_archive":
        from .xr import open_archive

        return open_archive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
