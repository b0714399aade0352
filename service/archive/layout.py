"""What a session archive is on disk: its format version, the columns of its tables
(views of :mod:`lithoscope.service.schema`), the frame log's line format, archive names
and sizes. Shared by the writer, the reader and recovery; see the package docstring for
the layout and the crash-consistency rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema

__all__ = [
    "ARCHIVE_FORMAT_VERSION",
    "CLUSTER_COLUMNS",
    "ECHEM_COLUMNS",
    "EVENT_COLUMNS",
    "FRAME_LOG",
    "FRAME_TABLE_COLUMNS",
    "KEYS",
    "LAZY_TABLES",
    "MAX_NAME_CHARS",
    "OPERANDO_COLUMNS",
    "PARTICLE_COLUMNS",
    "PARTICLE_DOSE_COLUMNS",
    "REGION_DOSE_COLUMNS",
    "directory_size",
    "fill_value",
    "journal_row",
    "safe_archive_name",
]

ARCHIVE_FORMAT_VERSION = 1
FRAME_LOG = "frame_log.jsonl"

# The columns of every table are declared in .schema; these are the writer's views of them.
FRAME_TABLE_COLUMNS: dict[str, Any] = schema.FRAME_TABLE.archive_dtypes()
CLUSTER_COLUMNS: dict[str, Any] = schema.CLUSTER.archive_dtypes()
PARTICLE_COLUMNS: dict[str, Any] = schema.PARTICLES.archive_dtypes()
EVENT_COLUMNS: dict[str, Any] = schema.EVENTS.archive_dtypes()
ECHEM_COLUMNS: dict[str, Any] = schema.ECHEM.archive_dtypes()
OPERANDO_COLUMNS: dict[str, Any] = schema.OPERANDO.archive_dtypes()
PARTICLE_DOSE_COLUMNS: dict[str, Any] = schema.PARTICLE_DOSE.archive_dtypes()
REGION_DOSE_COLUMNS: dict[str, Any] = schema.REGION_DOSE.archive_dtypes()
KEYS = {name: table.key for name, table in schema.TABLES.items()}
LAZY_TABLES: dict[str, tuple[dict[str, Any], int]] = {
    name: (table.archive_dtypes(), table.chunk_rows)
    for name, table in schema.TABLES.items() if table.lazy}


def fill_value(dtype: Any) -> Any:
    if dtype is str:
        return ""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return math.nan
    if kind == "b":
        return False
    return -1


def directory_size(path: str | Path) -> int:
    """Bytes on disk under ``path`` (the archive size shown to users)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                # A chunk's temporary file, renamed into place since it was listed: the
                # archive is being written by another thread while we count.
                continue
    return total


MAX_NAME_CHARS = 120
"""Longest archive name (before ``-N.zarr``): far below the 255 bytes most file systems
allow, so a suffix, a temporary-file prefix or a copy's ``-2`` still fits."""


def safe_archive_name(requested: str) -> str:
    """A flat, bounded file name for an archive asked for by a publisher.

    The last path component only, reduced to ``[A-Za-z0-9._-]`` (a remote publisher must
    not choose where we write), without a ``.zarr`` suffix. A name longer than
    ``MAX_NAME_CHARS`` keeps its first characters plus a short hash of the whole
    request, so two long ids that share a prefix still get different archives and no
    name can fail with ENAMETOOLONG.
    """
    name = Path(requested).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "session"
    name = name.removesuffix(".zarr")
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(requested.encode("utf-8", "replace")).hexdigest()[:12]
        name = f"{name[:MAX_NAME_CHARS - 13].rstrip('._-') or 'session'}-{digest}"
    return name


def journal_row(line: str) -> dict[str, Any] | None:
    """One frame_log line as a row, or None if it is torn or any value does not fit its
    frame_table column (an int64 out of range, a non-number, a non-finite time)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # torn JSON, or an int past Python's digit limit
        return None
    if not isinstance(row, dict) or type(row.get("position")) is not int or row["position"] < 0:
        return None
    for column, dtype in FRAME_TABLE_COLUMNS.items():
        value = row.get(column)
        if dtype is str:
            ok = value is None or isinstance(value, str)
        elif dtype is np.int64:
            ok = type(value) is int and -(2**63) <= value < 2**63
        else:
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                                   and abs(value) < 2**1023 and math.isfinite(float(value)))
        if not ok:
            return None
    return row


