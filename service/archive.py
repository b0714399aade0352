"""Session archives in zarr v3: every frame and every number, written as they arrive.

Layout (docs/archive.md is the user-facing description)::

    SESSION.zarr/                 group; attrs["lithoscope"] = session metadata
      frames                      (T, Y, X) source dtype, one frame per chunk, blosc-lz4
      frame_table/                one row per archived frame
        seq index t_s acquired_at received_at exposure_s metadata_json
      cluster/                    one row per analysed frame
        frame t_s area_px area_nm2 particle_count relative_area needle_contact ...
      particles/                  one row per particle per analysed frame
        frame t_s label area_px area_nm2 centroid_row centroid_col ...
      events/                     one row per alert
        frame t_s kind magnitude confidence particle_ids message

      frame_log.jsonl             while recording: one JSON line per frame (see below)

Crash consistency: zarr's LocalStore replaces every chunk and metadata file atomically
(write to a temporary file, then rename), so a killed writer leaves whole old or whole
new chunks, never torn ones. Arrays grow in steps (resizing per frame costs a metadata
rewrite each time) and unwritten rows hold a fill value; each table's *key column*
(``seq`` for frame_table, ``frame`` for the others, fill -1) is written last when rows
are flushed, so the rows a reader may trust are exactly the leading rows whose key is
>= 0.

Tables are flushed in batches (every ``flush_interval_s``): a zarr write of one row
into a partial chunk rewrites that chunk (read, decode, modify, encode, rename) for
every column, more work than writing the frame itself. What must not wait for
a batch is the frame's own row, so after its pixels are written each frame's row is
appended to ``frame_log.jsonl`` (one short line, no zarr): a reader of an archive cut
short takes the zarr rows, then the log's rows after them. A torn last line is
ignored (its frame is then not counted). On a clean close the table is complete, the
log is removed, arrays are trimmed to their exact length and ``status`` becomes
``complete``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as _zarr_sync

from . import schema
from .errors import ArchiveError
from .ngff import frames_ngff_metadata

log = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_FORMAT_VERSION",
    "CLUSTER_COLUMNS",
    "ECHEM_COLUMNS",
    "EVENT_COLUMNS",
    "OPERANDO_COLUMNS",
    "PARTICLE_DOSE_COLUMNS",
    "REGION_DOSE_COLUMNS",
    "FRAME_TABLE_COLUMNS",
    "PARTICLE_COLUMNS",
    "ArchiveReader",
    "ArchiveWriter",
    "directory_size",
    "recover_abandoned",
    "safe_archive_name",
    "update_archive_meta",
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
_KEYS = {name: table.key for name, table in schema.TABLES.items()}
_LAZY_TABLES: dict[str, tuple[dict[str, Any], int]] = {
    name: (table.archive_dtypes(), table.chunk_rows)
    for name, table in schema.TABLES.items() if table.lazy}


def _fill_value(dtype: Any) -> Any:
    if dtype is str:
        return ""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return math.nan
    if kind == "b":
        return False
    return -1


def _write_all(writes: list[tuple[zarr.Array[Any], Any, np.ndarray]]) -> None:
    async def gather() -> None:
        await asyncio.gather(*(array.async_array.setitem(selection, value)
                               for array, selection, value in writes))

    _zarr_sync(gather())


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


class _Table:
    """Columns of one table, grown in whole chunks, appended through a row buffer."""

    def __init__(self, group: zarr.Group, name: str, columns: Mapping[str, Any],
                 *, chunk_rows: int) -> None:
        self.name = name
        self.key = _KEYS[name]
        self.chunk_rows = chunk_rows
        sub = group.create_group(name)
        self.arrays: dict[str, zarr.Array[Any]] = {
            column: sub.create_array(
                column, shape=(0,), chunks=(chunk_rows,), dtype=dtype,
                fill_value=_fill_value(dtype), config={"write_empty_chunks": True},
            )
            for column, dtype in columns.items()
        }
        self.dtypes = dict(columns)
        self.rows = 0
        self.capacity = 0
        self._pending: dict[str, list[np.ndarray]] = {column: [] for column in columns}
        self._pending_rows = 0

    def append(self, rows: Mapping[str, Any]) -> None:
        """Buffer rows given as columns (scalars for a single row)."""
        lengths = set()
        converted = {}
        missing = []
        for column, dtype in self.dtypes.items():
            if column not in rows and column != self.key:
                missing.append(column)  # filled below, once the row count is known
                continue
            value = np.atleast_1d(np.asarray(rows[column], dtype=object if dtype is str
                                             else dtype))
            converted[column] = value
            lengths.add(len(value))
        if len(lengths) != 1:
            raise ArchiveError(f"Table {self.name}: columns of unequal length {sorted(lengths)}.")
        # A writer that does not compute a column (an older analysis, a test) leaves
        # it at its fill value rather than failing the whole row.
        count = next(iter(lengths))
        for column in missing:
            dtype = self.dtypes[column]
            converted[column] = np.full(count, _fill_value(dtype),
                                        dtype=object if dtype is str else dtype)
        for column, value in converted.items():
            self._pending[column].append(value)
        self._pending_rows += lengths.pop()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self, *, also: list[tuple[zarr.Array[Any], Any, np.ndarray]] | None = None) -> None:
        """Write buffered rows; ``also`` are extra (array, selection, value) writes that
        must land before the key column (the frame pixels of frame_table rows)."""
        if not self._pending_rows:
            return
        start, stop = self.rows, self.rows + self._pending_rows
        if stop > self.capacity:
            capacity = -(-stop // self.chunk_rows) * self.chunk_rows
            for array in self.arrays.values():
                array.resize((capacity,))
            self.capacity = capacity
        values = {}
        for column, parts in self._pending.items():
            value = np.concatenate(parts)
            # Variable-length strings, as zarr stores them: a fixed-width "<U" array
            # would pad every row to the longest string of the batch.
            values[column] = (value.astype(np.dtypes.StringDType()) if self.dtypes[column] is str
                              else value)
        selection = slice(start, stop)
        first = [(self.arrays[c], selection, v) for c, v in values.items() if c != self.key]
        # One gathered round for the data, then the key column: a reader trusts a row
        # only once its key is written. Gathered, the columns' writes overlap.
        _write_all([*(also or []), *first])
        _write_all([(self.arrays[self.key], selection, values[self.key])])
        # Only now: after a failed write (disk full) the rows stay pending, so closing
        # the archive again once there is room writes them instead of losing them.
        for parts in self._pending.values():
            parts.clear()
        self.rows = stop
        self._pending_rows = 0

    def trim(self) -> None:
        for array in self.arrays.values():
            array.resize((self.rows,))
        self.capacity = self.rows


class ArchiveWriter:
    """Writes one session into a new zarr v3 group, frame by frame.

    Frames and their frame_table rows are written synchronously as each frame
    arrives (nothing the worker has accepted lives only in memory); measurement
    rows are buffered and flushed every ``flush_interval_s`` and on close, so after a
    kill at most that much *analysis* is missing, never a frame.
    """

    FRAME_GROWTH = 64

    def __init__(
        self,
        path: str | Path,
        *,
        session: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        software_version: str = "unknown",
        flush_interval_s: float = 1.0,
        compression_level: int = 1,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise ArchiveError(f"Archive {self.path} already exists; refusing to overwrite it.")
        self._meta: dict[str, Any] = {
            "format_version": ARCHIVE_FORMAT_VERSION,
            "software_version": software_version,
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "status": "recording",
            **{k: v for k, v in session.items() if k not in ("seq", "sent_at")},
            "config": dict(config or {}),
        }
        self._compressor = zarr.codecs.BloscCodec(cname="lz4", clevel=compression_level,
                                                  shuffle="bitshuffle")
        self.frames: zarr.Array[Any] | None = None
        self.frame_count = 0
        # Everything that touches the disk: a disk that fills while the tables are being
        # created must be an ArchiveError too, which the worker handles like any
        # archive failure (a bare OSError would escape it).
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.group = zarr.open_group(zarr.storage.LocalStore(self.path), mode="w-",
                                         zarr_format=3)
            self._write_meta()
            self.tables = {
                name: _Table(self.group, name, table.archive_dtypes(),
                             chunk_rows=table.chunk_rows)
                for name, table in schema.TABLES.items() if not table.lazy
            }
        except OSError as exc:
            reason = exc.strerror or exc
            raise ArchiveError(f"Cannot create archive {self.path}: {reason}.") from None
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.closed = False

    def _write_meta(self) -> None:
        self.group.attrs["lithoscope"] = json.loads(json.dumps(self._meta, default=str))

    def _create_frames(self, shape: tuple[int, int], dtype: np.dtype[Any]) -> zarr.Array[Any]:
        # write_empty_chunks=True: the default compares every chunk with the fill value
        # before writing, a full pass over each frame, and a dark frame must be kept anyway.
        frames = self.group.create_array(
            "frames", shape=(0, *shape), chunks=(1, *shape), dtype=dtype, fill_value=0,
            compressors=self._compressor, config={"write_empty_chunks": True},
            dimension_names=("t", "y", "x"),
        )
        # OME-Zarr (NGFF 0.5) multiscales: napari and other viewers open it at scale.
        self.group.attrs["ome"] = frames_ngff_metadata(self._meta)
        return frames

    def append_frame(
        self,
        image: np.ndarray,
        *,
        seq: int,
        index: int,
        t_s: float,
        acquired_at: float,
        exposure_s: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Write one frame and its frame_table row; returns its position in the archive."""
        if self.closed:
            raise ArchiveError(f"Archive {self.path} is closed.")
        if self.frames is None:
            self.frames = self._create_frames(image.shape, image.dtype)
        elif image.shape != self.frames.shape[1:] or image.dtype != self.frames.dtype:
            raise ArchiveError(
                f"Frame {index} is {image.shape} {image.dtype}; this session's archive holds "
                f"{self.frames.shape[1:]} {self.frames.dtype}."
            )
        position = self.frame_count
        try:
            if position >= self.frames.shape[0]:
                self.frames.resize((position + self.FRAME_GROWTH, *image.shape))
            row = {
                "seq": seq, "index": index, "t_s": t_s, "acquired_at": acquired_at,
                "received_at": time.time(),
                "exposure_s": math.nan if exposure_s is None else exposure_s,
                "metadata_json": json.dumps(dict(metadata or {}), default=_json_default),
            }
            _write_all([(self.frames, position, image)])
            # Pixels first, then the journal line: a logged frame always has its pixels.
            _append_line(self.path / FRAME_LOG, json.dumps(
                {"position": position,
                 **{k: None if isinstance(v, float) and math.isnan(v) else v
                    for k, v in row.items()}}))
            self.tables["frame_table"].append(row)
        except OSError as exc:
            raise ArchiveError(f"Cannot write frame {index} to {self.path}: "
                               f"{exc.strerror or exc}.") from None
        self.frame_count = position + 1
        self.flush_if_due()
        return position

    def append_rows(self, table: str, rows: Mapping[str, Any]) -> None:
        """Buffer measurement rows (``cluster``, ``particles``, ``events``, or an operando
        table: ``echem``, ``operando``, ``particle_dose``, ``region_dose``)."""
        if table not in self.tables and table in _LAZY_TABLES:
            columns, chunk_rows = _LAZY_TABLES[table]
            try:
                self.tables[table] = _Table(self.group, table, columns, chunk_rows=chunk_rows)
            except OSError as exc:
                raise ArchiveError(f"Cannot create table {table} in {self.path}: "
                                   f"{exc.strerror or exc}.") from None
        self.tables[table].append(rows)
        if table == "events":  # at once, and only this table: events can come in bursts
            try:
                self.tables["events"].flush()
            except OSError as exc:
                raise ArchiveError(f"Cannot write events to {self.path}: "
                                   f"{exc.strerror or exc}.") from None
        else:
            self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Flush if the last flush is ``flush_interval_s`` old; True if it flushed.

        The owner calls it when no frame arrives, so rows do not wait for the next one.
        """
        if time.monotonic() - self._last_flush < self.flush_interval_s:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        try:
            for name in list(self.tables):  # frame_table first: insertion order
                self.tables[name].flush()
        except OSError as exc:
            raise ArchiveError(f"Cannot write measurements to {self.path}: "
                               f"{exc.strerror or exc}.") from None
        self._last_flush = time.monotonic()

    def close(self, *, status: str = "complete", **summary: Any) -> None:
        """Flush, trim arrays to their exact length and record how the session ended."""
        if self.closed:
            return
        self.flush()
        if self.frames is not None:
            self.frames.resize((self.frame_count, *self.frames.shape[1:]))
        for table in self.tables.values():
            table.trim()
        self._meta.update(status=status, frame_count=self.frame_count,
                          closed_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                          **summary)
        self._write_meta()
        # The zarr frame_table now holds every row: the journal has done its job.
        (self.path / FRAME_LOG).unlink(missing_ok=True)
        self.closed = True


def _append_line(path: Path, line: str) -> None:
    """One ``write`` on an O_APPEND descriptor: the line reaches the OS whole (it then
    survives a kill of this process), and no descriptor stays open for a writer that
    is abandoned; opening per line costs little next to writing a frame."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _journal_row(line: str) -> dict[str, Any] | None:
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


class ArchiveReader:
    """Reads a session archive, complete or cut short by a crash.

    Needs nothing but zarr; an archive whose writer was killed opens with every
    frame whose frame_table row was written (see the module docstring).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise ArchiveError(f"{self.path} is not a lithoscope archive (no zarr.json).")
        try:
            self.group = zarr.open_group(zarr.storage.LocalStore(self.path, read_only=True),
                                         mode="r")
            meta = self.group.attrs.get("lithoscope")
        except (OSError, ValueError, RecursionError) as exc:
            raise ArchiveError(f"Cannot open archive {self.path}: {exc}.") from None
        if not isinstance(meta, dict):
            raise ArchiveError(f"{self.path} is a zarr group but not a lithoscope archive.")
        self.meta: dict[str, Any] = meta
        self.skipped_log_lines = 0
        """Journal lines not read (torn, or values out of range) and every one after."""
        self._valid = {name: self._valid_rows(name) for name in _KEYS}
        frames = self.group.get("frames")
        self._frames = frames if isinstance(frames, zarr.Array) else None
        stored = self._frames.shape[0] if self._frames is not None else 0
        self._logged = self._read_frame_log(self._valid["frame_table"])
        self.frame_count = min(self._valid["frame_table"] + len(self._logged), stored)
        self._logged = self._logged[: max(0, self.frame_count - self._valid["frame_table"])]
        """frame_table rows of an archive cut short, journalled but not yet in zarr."""

    def _read_frame_log(self, first: int) -> list[dict[str, Any]]:
        """Journal rows for positions ``first, first + 1, ...``, stopping at a gap, at
        a torn line (the writer was killed while writing it) or at a line whose values
        the frame_table could not hold (``skipped_log_lines`` counts what was left)."""
        try:
            lines = (self.path / FRAME_LOG).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"Cannot read {self.path / FRAME_LOG}: {exc}.") from None
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(lines):
            row = _journal_row(line)
            if row is None:
                self.skipped_log_lines = len(lines) - number
                if number < len(lines) - 1:  # a torn last line is a kill, not news
                    log.warning("%s line %d holds values a frame_table cannot store; "
                                "reading the %d frame(s) before it.",
                                self.path / FRAME_LOG, number + 1, first + len(rows))
                break
            if row["position"] < first + len(rows):
                continue  # already in the zarr table
            if row["position"] != first + len(rows):
                break
            rows.append(row)
        return rows

    def _valid_rows(self, name: str) -> int:
        key = self.group.get(f"{name}/{_KEYS[name]}")
        if not isinstance(key, zarr.Array) or key.shape[0] == 0:
            return 0
        values = np.asarray(key[:])
        invalid = np.flatnonzero(values < 0)
        return int(invalid[0]) if invalid.size else int(values.shape[0])

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def pixel_size_nm(self) -> float | None:
        value = self.meta.get("pixel_size_nm")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return _finite_or_none(value)

    @property
    def frames(self) -> zarr.Array[Any]:
        """The frames array (lazy). Rows beyond ``frame_count`` are not frames."""
        if self._frames is None:
            raise ArchiveError(f"Archive {self.path} holds no frames.")
        return self._frames

    def frame(self, position: int) -> np.ndarray:
        if not 0 <= position < self.frame_count:
            raise IndexError(f"Frame {position} outside 0..{self.frame_count - 1}.")
        return np.asarray(self.frames[position])

    def table(self, name: str) -> dict[str, np.ndarray]:
        """A table as a dict of equal-length numpy columns (trusted rows only)."""
        if name not in _KEYS:
            raise KeyError(f"Unknown table {name!r}; expected one of {sorted(_KEYS)}.")
        rows = self._valid[name]
        group = self.group.get(name)
        if not isinstance(group, zarr.Group):
            return {}
        columns = {column: np.asarray(array[:rows]) for column, array in group.arrays()}
        if name == "frame_table" and self._logged:
            for column, values in columns.items():
                dtype = FRAME_TABLE_COLUMNS.get(column)
                logged = [math.nan if r.get(column) is None and dtype is np.float64
                          else r.get(column) for r in self._logged]
                columns[column] = np.concatenate(
                    [values, np.asarray(logged, dtype=values.dtype)])
        return columns

    def events(self) -> list[dict[str, Any]]:
        table = self.table("events")
        return [
            {
                "kind": str(table["kind"][i]),
                "t_s": float(table["t_s"][i]),
                "frame": int(table["frame"][i]),
                "magnitude": float(table["magnitude"][i]),
                "confidence": float(table["confidence"][i]),
                "particle_ids": json.loads(str(table["particle_ids"][i]) or "[]"),
                "message": str(table["message"][i]),
                "context": (json.loads(str(table["context_json"][i]) or "{}")
                            if "context_json" in table else {}),
            }
            for i in range(len(table.get("frame", [])))
        ]

    def summary(self) -> dict[str, Any]:
        """What ``lithoscope inspect --json`` prints."""
        frame_table = self.table("frame_table")
        t = frame_table.get("t_s", np.zeros(0))[: self.frame_count]
        cluster = self.table("cluster")
        count = len(cluster.get("frame", []))
        return {
            "path": str(self.path),
            "session_id": self.meta.get("session_id"),
            "source": self.meta.get("source"),
            "status": self.status,
            "frames": self.frame_count,
            "frames_analysed": count,
            "shape": list(self.frames.shape[1:]) if self._frames is not None else None,
            "dtype": str(self.frames.dtype) if self._frames is not None else None,
            "duration_s": float(t[-1] - t[0]) if t.size else 0.0,
            "pixel_size_nm": self.pixel_size_nm,
            "fps": self.meta.get("fps"),
            "started_at": self.meta.get("created_at"),
            "software_version": self.meta.get("software_version"),
            "stop_reason": self.meta.get("stop_reason"),
            "continues": self.meta.get("continues"),
            "continued_in": self.meta.get("continued_in"),
            "archive_error": self.meta.get("archive_error"),
            "size_bytes": directory_size(self.path),
            "events": [{k: e[k] for k in ("kind", "t_s", "frame", "magnitude", "message")}
                       for e in self.events()],
            "cluster": [
                {
                    "frame": int(cluster["frame"][i]),
                    "t_s": float(cluster["t_s"][i]),
                    "area_px": int(cluster["area_px"][i]),
                    "relative_area": _finite_or_none(cluster["relative_area"][i]),
                    "needle_contact": bool(cluster["needle_contact"][i]),
                    "particle_diameter_px": (
                        _finite_or_none(cluster["particle_diameter_px"][i])
                        if "particle_diameter_px" in cluster else None),
                }
                for i in range(count)
            ],
        }


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except OverflowError:  # an int past float64: not a value this archive can hold
        return None
    return value if math.isfinite(value) else None


def update_archive_meta(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Rewrite keys of a closed or abandoned archive's session metadata; returns it.

    Only the group's ``zarr.json`` is replaced (atomically, by the store), so frames and
    tables are untouched whatever happens during the update.
    """
    try:
        group = zarr.open_group(zarr.storage.LocalStore(Path(path)), mode="r+")
        current = group.attrs.get("lithoscope")
        meta = dict(current) if isinstance(current, Mapping) else {}
        meta.update(changes)
        group.attrs["lithoscope"] = json.loads(json.dumps(meta, default=str))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"Cannot update archive {path}: {exc}.") from None
    return meta


def recover_abandoned(sessions_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Mark archives left ``recording`` by a worker that died as ``interrupted``.

    Call it only from the service that owns ``sessions_dir``, before it accepts frames:
    an archive still ``recording`` then has no writer. Nothing is trimmed or moved: the
    reader's rules already say which rows count, and ``frame_count``
    records how many frames survived. Unreadable folders are left alone.
    """
    recovered = []
    root = Path(sessions_dir)
    for path in sorted(root.glob("*.zarr")) if root.is_dir() else []:
        try:
            recovered += _recover_one(path)
        except Exception as exc:  # noqa: BLE001 - one bad archive must not stop the service
            log.warning("Left %s as it is: cannot recover it (%s: %s).", path,
                        type(exc).__name__, exc)
    return recovered


def _recover_one(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    try:
        reader = ArchiveReader(path)
    except (ArchiveError, OSError, ValueError):
        return []
    if reader.status != "recording":
        return []
    try:
        meta = update_archive_meta(
            path, status="interrupted", stop_reason="worker_died",
            frame_count=reader.frame_count,
            recovered_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    except ArchiveError as exc:  # e.g. a read-only copy: the service must still start
        log.warning("Left %s as it is: %s", path, exc)
        return []
    seq = reader.table("frame_table").get("seq", np.zeros(0, np.int64))[:reader.frame_count]
    # Not stored: lets the next worker count the frames lost across the restart.
    return [(path, {**meta, "last_seq": int(seq[-1]) if len(seq) else None})]
