"""Helpers every reader of recorded movies shares: argument checks, unit tables, times.

Shared by the readers of :mod:`lithoscope.replay` (:mod:`.tiff`, :mod:`.video`,
:mod:`.folder`, :mod:`.rosetta`, :mod:`.formats`, :mod:`._stack`), so none imports
another's private names, and by nothing outside the package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.registry import parse_optional_positive

__all__ = [
    "LENGTH_UNIT_NM",
    "TIME_UNIT_S",
    "choose",
    "decode_unicode_escapes",
    "existing_file",
    "frame_time_s",
    "length_unit_nm",
    "one_line",
    "parse_optional_positive",
]

# Length units as ImageJ and TIFF writers spell them, after str.casefold() (which maps
# the micro sign U+00B5 to the Greek mu and the angstrom sign to 'å'), in nanometres.
LENGTH_UNIT_NM: Final[Mapping[str, float]] = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "å": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "nanometers": 1.0,
    "nanometres": 1.0,
    "μm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "micrometers": 1e3,
    "micrometres": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "centimetre": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
}

# ImageJ's time units (Calibration.getTimeUnit, written as ``tunit``), in seconds.
TIME_UNIT_S: Final[Mapping[str, float]] = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "millisecond": 1e-3,
    "milliseconds": 1e-3,
    "μs": 1e-6,
    "us": 1e-6,
    "µsec": 1e-6,
    "usec": 1e-6,
    "microsecond": 1e-6,
    "microseconds": 1e-6,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}

_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")


def existing_file(path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` and check it is a non-empty regular file, with one-line errors."""
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise SourceError(f"Cannot read {resolved}: no such file or directory.")
    if not resolved.is_file():
        raise SourceError(f"Cannot read {resolved}: not a regular file.")
    try:
        size = resolved.stat().st_size
    except OSError as exc:
        raise SourceError(f"Cannot read {resolved}: {exc.strerror or exc}.") from exc
    if size == 0:
        raise SourceError(f"Cannot read {resolved}: the file is empty (0 bytes).")
    return resolved


def frame_time_s(index: int, fps: float | None) -> float:
    # Without a frame rate the time axis counts frames; SourceInfo.fps is None so
    # callers can tell (module docstring).
    return index / fps if fps is not None else float(index)


def one_line(exc: BaseException) -> str:
    """A library's exception text, shortened to its first line for a one-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def decode_unicode_escapes(text: str) -> str:
    # ImageJ writes non-ASCII units as Java escapes, e.g. "\u00B5m" for µm.
    return _UNICODE_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


def length_unit_nm(unit: object) -> float | None:
    if not isinstance(unit, str):
        return None
    return LENGTH_UNIT_NM.get(decode_unicode_escapes(unit).strip().casefold())


def choose(
    argument: float | None, from_file: float | None, name: str, metadata: dict[str, Any]
) -> float | None:
    """Prefer the explicit argument, keep the file's value for the record."""
    if from_file is not None:
        metadata[f"file_{name}"] = from_file
    if argument is not None:
        metadata[f"{name}_origin"] = "argument"
        return argument
    if from_file is not None:
        metadata[f"{name}_origin"] = "file"
    return from_file
