"""Protochips holder logs (Fusion / Poseidon biasing and heating) as electrochemistry sources.

Protochips' software logs a ``.csv``: a first line of column names (``Time, Notes``,
then one column per logged quantity, e.g. ``Channel A Current, Channel A Voltage``),
header lines ``, <name> = <value>`` (``Time units = Milliseconds``, ``Current units =
Amps``, ``Voltage units = Volts``, ``Date (yyyy.mm.dd)``, ``Time (hh:mm:ss.ms)``, and
last ``User``), then one row per sample. RosettaSciIO's ``rsciio.protochips`` reads
it (the ``[formats]`` extra); this module takes its time axis, the first voltage as
the bias and the first current, converted to V and A, and the logged start (the
holder PC's local time, read in this machine's time zone, as EC-Lab's) as the time
base. :class:`~.echem.ProtochipsSource` re-reads the file whenever it grows, as
:class:`~.echem.EcLabSource` does.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import MissingExtraError, SourceError, require

__all__ = ["is_protochips_log", "read_protochips"]

_TIME_UNIT_S: Final[Mapping[str, float]] = {"milliseconds": 1e-3, "seconds": 1.0}
_VOLTS: Final[Mapping[str, float]] = {"volts": 1.0, "millivolts": 1e-3, "microvolts": 1e-6}
_AMPS: Final[Mapping[str, float]] = {"amps": 1.0, "milliamps": 1e-3, "microamps": 1e-6,
                                     "nanoamps": 1e-9, "picoamps": 1e-12}


def is_protochips_log(path: Path) -> bool:
    """Does the file start with Protochips' column line (``Time`` and ``Notes``)?"""
    try:
        with path.open("r", encoding="latin1") as handle:
            first = handle.readline()
    except OSError:
        return False
    names = [name.strip() for name in first.split(",")]
    return "Time" in names and "Notes" in names and len(names) >= 3


def _quantity(signal: Mapping[str, Any]) -> tuple[str, str]:
    """``("Voltage", "volts")`` from a signal's ``Signal.quantity`` ("Voltage (Volts)")."""
    quantity = str(signal.get("metadata", {}).get("Signal", {}).get("quantity", ""))
    name, _, unit = quantity.partition(" (")
    return name.strip().casefold(), unit.rstrip(")").strip().casefold()


def read_protochips(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Time (s since start), bias (V), current (A) and start (Unix s) of a Protochips log.

    NaN where the log has no voltage (or no current) column.

    Raises
    ------
    SourceError
        Not a Protochips log (yet: a file being written may be cut mid-header), or
        RosettaSciIO is not installed (the message names the ``[formats]`` extra).
    """
    path = Path(path)
    try:
        reader = require("rsciio.protochips", extra="formats", package="rosettasciio",
                         purpose="Reading Protochips holder logs")
    except MissingExtraError as exc:
        raise SourceError(str(exc)) from None
    try:
        with warnings.catch_warnings():
            # Its uniform-axis estimate (unused here: the raw times are) warns on short
            # or irregular logs.
            warnings.simplefilter("ignore")
            signals = reader.file_reader(str(path))
    except Exception as exc:
        raise SourceError(f"Cannot read Protochips log {path}: {exc}.") from None
    if not signals:
        raise SourceError(f"Protochips log {path} logs no quantity.")
    header = signals[0]["original_metadata"]["Protochips_header"]
    axis = header["Time axis"]
    scale = _TIME_UNIT_S.get(str(axis.get("units", "")).casefold())
    if scale is None:
        raise SourceError(f"Protochips log {path}: time units {axis.get('units')!r}; "
                          "expected Milliseconds or Seconds.")
    t = np.atleast_1d(np.asarray(axis["value"], dtype=np.float64)) * scale
    n = t.size
    bias = current = None
    for signal in signals:
        name, unit = _quantity(signal)
        values = np.atleast_1d(np.asarray(signal["data"], dtype=np.float64))
        if name == "voltage" and bias is None and unit in _VOLTS:
            bias = values * _VOLTS[unit]
        elif name == "current" and current is None and unit in _AMPS:
            current = values * _AMPS[unit]
    start = header.get("Start time")
    start_unix = None
    if isinstance(start, np.datetime64):
        moment = start.astype("datetime64[us]").astype(_dt.datetime)
        start_unix = moment.timestamp() if isinstance(moment, _dt.datetime) else None
    return (t, bias if bias is not None else np.full(n, math.nan),
            current if current is not None else np.full(n, math.nan), start_unix)
