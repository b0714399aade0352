"""lithoscope.service: what runs beside the microscope.

The rooms (docs/architecture.md, enforced by tests/test_architecture.py):

* ground floor: ``errors``, ``schema`` (every table's columns), ``protocol`` (the
  wire), ``settings`` (options parsed from their annotations), ``physics``, ``sockets``;
* ``sources`` (frames in; ``sources.registry`` opens any spec, live or file);
* analysis: ``analysis`` (per frame and across frames), ``alerts``, ``operando``
  (``context``, ``dose``, ``echem``), ``pipeline`` (one frame in, every table's rows
  and messages out);
* ``archive`` (zarr v3 sessions: writer, reader, recovery, ``ngff``, ``thread``);
* live I/O: ``publisher`` (frames onto ZeroMQ), ``live`` (``worker``: receive,
  archive, analyse, publish; ``fanout``: measuring processes; ``session``),
  ``security``, ``config``, ``endpoints``;
* ``offline`` tools: ``reanalyze``, ``export``, ``xr`` (``open_archive``);
* ``cli`` (the ``lithoscope`` command, split by audience).
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
        from .offline.xr import open_archive

        return open_archive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
