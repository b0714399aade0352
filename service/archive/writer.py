"""Writes a session archive as frames and rows arrive (see the package docstring)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as _zarr_sync

from .. import schema
from ..errors import ArchiveError
from .chunks import ChunkFiles, chunk_files, write_chunks
from .labels import ArchiveLabels, LabelImages
from .layout import (
    ARCHIVE_FORMAT_VERSION,
    FRAME_LOG,
    KEYS,
    LAZY_TABLES,
    ROW_DIMENSION,
    fill_value,
)
from .ngff import frames_ngff_metadata

log = logging.getLogger(__name__)

__all__ = ["ArchiveWriter"]


def _write_all(writes: list[tuple[zarr.Array[Any], Any, np.ndarray]]) -> None:
    async def gather() -> None:
        await asyncio.gather(*(array.async_array.setitem(selection, value)
                               for array, selection, value in writes))

    _zarr_sync(gather())


class _Table:
    """Columns of one table, grown in whole chunks, appended through a row buffer."""

    def __init__(self, group: zarr.Group, name: str, columns: Mapping[str, Any],
                 *, chunk_rows: int) -> None:
        self.name = name
        self.key = KEYS[name]
        self.chunk_rows = chunk_rows
        sub = group.create_group(name)
        self.arrays: dict[str, zarr.Array[Any]] = {
            column: sub.create_array(
                column, shape=(0,), chunks=(chunk_rows,), dtype=dtype,
                fill_value=fill_value(dtype), config={"write_empty_chunks": True},
                # xarray (open_zarr, open_datatree) needs every array's dimension names.
                dimension_names=(ROW_DIMENSION,),
            )
            for column, dtype in columns.items()
        }
        self.dtypes = dict(columns)
        self.rows = 0
        self.capacity = 0
        self._pending: dict[str, list[np.ndarray]] = {column: [] for column in columns}
        self._pending_rows = 0
        self._files = {column: chunk_files(array) for column, array in self.arrays.items()}
        """Columns written as chunk files (:mod:`.chunks`; None: through zarr)."""
        self._tails: dict[str, tuple[int, np.ndarray]] = {}
        """Each such column's last chunk written (its index and every row of it, fill
        values past the rows): a flush completes it in memory rather than reading it
        back from the disk."""

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
            converted[column] = np.full(count, fill_value(dtype),
                                        dtype=object if dtype is str else dtype)
        for column, value in converted.items():
            self._pending[column].append(value)
        self._pending_rows += lengths.pop()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self) -> None:
        """Write buffered rows, the key column last."""
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
        tails: dict[str, tuple[int, np.ndarray]] = {}
        chunks = {c: self._chunks(c, v, start, tails) for c, v in values.items()
                  if self._files[c] is not None}
        first = [(self.arrays[c], selection, v) for c, v in values.items()
                 if c != self.key and c not in chunks]
        # The data first, then the key column: a reader trusts a row only once its key
        # is written. Within each round the columns' writes overlap.
        if first:
            _write_all(first)
        write_chunks([(self._file(c), coords, chunk) for c, written in chunks.items()
                      if c != self.key for coords, chunk in written])
        if self.key in chunks:
            write_chunks([(self._file(self.key), coords, chunk)
                          for coords, chunk in chunks[self.key]])
        else:
            _write_all([(self.arrays[self.key], selection, values[self.key])])
        # Only now: after a failed write (disk full) the rows stay pending, so closing
        # the archive again once there is room writes them instead of losing them.
        self._tails.update(tails)
        for parts in self._pending.values():
            parts.clear()
        self.rows = stop
        self._pending_rows = 0

    def _chunks(self, column: str, value: np.ndarray, start: int,
                tails: dict[str, tuple[int, np.ndarray]],
                ) -> list[tuple[tuple[int, ...], np.ndarray]]:
        """The whole chunks of ``column`` that rows ``start ..`` (``value``) fall in,
        each as the disk will hold it; the last one goes to ``tails``."""
        size = self.chunk_rows
        dtype = self.arrays[column].dtype
        out: list[tuple[tuple[int, ...], np.ndarray]] = []
        tail = self._tails.get(column)
        for k in range(start // size, (start + len(value) - 1) // size + 1):
            if tail is not None and tail[0] == k:
                chunk = tail[1].copy()
            else:
                chunk = np.full(size, fill_value(self.dtypes[column]), dtype=dtype)
            lo, hi = max(start, k * size), min(start + len(value), (k + 1) * size)
            chunk[lo - k * size: hi - k * size] = value[lo - start: hi - start]
            out.append(((k,), chunk))
        tails[column] = (out[-1][0][0], out[-1][1])
        return out

    def _file(self, column: str) -> ChunkFiles:
        files = self._files[column]
        assert files is not None
        return files

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
        compression: str = "lz4",
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
        self._compressors = frame_compressors(compression, compression_level)
        self.frames: zarr.Array[Any] | None = None
        self._chunks: ChunkFiles | None = None
        """Writes the frames as chunk files (.chunks), when the array allows it."""
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
        self.labels = ArchiveLabels(self.group, self._meta)
        """The ``labels/`` group (OME-Zarr label images), created at the first labels."""

    def _write_meta(self) -> None:
        self.group.attrs["lithoscope"] = json.loads(json.dumps(self._meta, default=str))

    def _create_frames(self, shape: tuple[int, int], dtype: np.dtype[Any]) -> zarr.Array[Any]:
        # write_empty_chunks=True: the default compares every chunk with the fill value
        # before writing, a full pass over each frame, and a dark frame must be kept anyway.
        frames = self.group.create_array(
            "frames", shape=(0, *shape), chunks=(1, *shape), dtype=dtype, fill_value=0,
            compressors=self._compressors, config={"write_empty_chunks": True},
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
        return self.append_frames([(image, {
            "seq": seq, "index": index, "t_s": t_s, "acquired_at": acquired_at,
            "exposure_s": exposure_s, "metadata": metadata})])

    def append_frames(self, frames: Sequence[tuple[np.ndarray, Mapping[str, Any]]]) -> int:
        """Write frames and their frame_table rows; returns the first one's position.

        Each item is the pixels and the row's values (``seq``, ``index``, ``t_s``,
        ``acquired_at``, optional ``exposure_s`` and ``metadata``). The pixels of all
        of them go in one gathered zarr call, which encodes and stores the chunks in
        parallel (the archive thread hands over the frames that queued up while it
        was writing); then their journal lines, in one write; then their rows. On a
        failure nothing of the batch is counted, so its frames can be written again
        (one at a time, to find the one the disk refused).
        """
        if self.closed:
            raise ArchiveError(f"Archive {self.path} is closed.")
        if not frames:
            return self.frame_count
        first = frames[0][0]
        if self.frames is None:
            self.frames = self._create_frames(first.shape, first.dtype)
            self._chunks = chunk_files(self.frames)
        for image, row in frames:
            if image.shape != self.frames.shape[1:] or image.dtype != self.frames.dtype:
                raise ArchiveError(
                    f"Frame {row.get('index')} is {image.shape} {image.dtype}; this session's "
                    f"archive holds {self.frames.shape[1:]} {self.frames.dtype}.")
        position = self.frame_count
        stop = position + len(frames)
        received_at = time.time()
        rows = []
        for _, row in frames:
            exposure_s = row.get("exposure_s")
            rows.append({
                "seq": row["seq"], "index": row["index"], "t_s": row["t_s"],
                "acquired_at": row["acquired_at"], "received_at": received_at,
                "exposure_s": math.nan if exposure_s is None else exposure_s,
                "metadata_json": json.dumps(dict(row.get("metadata") or {}),
                                            default=_json_default),
            })
        try:
            if stop > self.frames.shape[0]:
                grown = -(-stop // self.FRAME_GROWTH) * self.FRAME_GROWTH
                self.frames.resize((grown, *first.shape))
            if self._chunks is not None:
                self._chunks.write([(position + k, image) for k, (image, _) in enumerate(frames)])
            else:
                _write_all([(self.frames, position + k, image)
                            for k, (image, _) in enumerate(frames)])
            # Pixels first, then the journal lines: a logged frame always has its pixels.
            _append_line(self.path / FRAME_LOG, "\n".join(json.dumps(
                {"position": position + k,
                 **{key: None if isinstance(v, float) and math.isnan(v) else v
                    for key, v in row.items()}}) for k, row in enumerate(rows)))
            table = self.tables["frame_table"]
            for row in rows:
                table.append(row)
        except OSError as exc:
            raise ArchiveError(f"Cannot write frame {frames[0][1].get('index')} to "
                               f"{self.path}: {exc.strerror or exc}.") from None
        self.frame_count = stop
        for k, (_, row) in enumerate(frames):
            self.labels.frame_written(row["index"], position + k)
        self.flush_if_due()
        return position

    def append_labels(self, index: int, images: LabelImages) -> bool:
        """Write analysed frame ``index``'s label images beside its pixels (see
        :mod:`.labels`); False if the frame is not in this archive."""
        if self.closed:
            raise ArchiveError(f"Archive {self.path} is closed.")
        try:
            placed = self.labels.append(index, images)
        except OSError as exc:
            raise ArchiveError(f"Cannot write the labels of frame {index} to {self.path}: "
                               f"{exc.strerror or exc}.") from None
        self.flush_if_due()
        return placed

    def append_rows(self, table: str, rows: Mapping[str, Any]) -> None:
        """Buffer measurement rows (``cluster``, ``particles``, ``events``, or an operando
        table: ``echem``, ``operando``, ``particle_dose``, ``region_dose``)."""
        if table not in self.tables and table in LAZY_TABLES:
            columns, chunk_rows = LAZY_TABLES[table]
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
        """Write the buffered rows of every table and the pending label images."""
        try:
            for name in list(self.tables):  # frame_table first: insertion order
                self.tables[name].flush()
        except OSError as exc:
            raise ArchiveError(f"Cannot write measurements to {self.path}: "
                               f"{exc.strerror or exc}.") from None
        try:
            self.labels.flush()
        except OSError as exc:
            raise ArchiveError(f"Cannot write label images to {self.path}: "
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
        self.labels.close(self.frame_count)
        self._meta.update(status=status, frame_count=self.frame_count,
                          closed_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                          **summary)
        self._write_meta()
        # The zarr frame_table now holds every row: the journal has done its job.
        (self.path / FRAME_LOG).unlink(missing_ok=True)
        self.closed = True


def frame_compressors(compression: str, level: int) -> tuple[zarr.codecs.BloscCodec, ...]:
    """The codecs of the ``frames`` array for ``[archive] compression``: blosc with
    bitshuffle (``lz4`` or ``zstd``), or none (``none``: raw chunks)."""
    if compression == "none":
        return ()
    if compression not in ("lz4", "zstd"):
        raise ArchiveError(f"Expected compression lz4, zstd or none. Got {compression!r}.")
    cname: Literal["lz4", "zstd"] = "lz4" if compression == "lz4" else "zstd"
    return (zarr.codecs.BloscCodec(cname=cname, clevel=level, shuffle="bitshuffle"),)


def _append_line(path: Path, line: str) -> None:
    """One ``write`` on an O_APPEND descriptor: the line reaches the OS whole (it then
    survives a kill of this process), and no descriptor stays open for a writer that
    is abandoned; opening per line costs little next to writing a frame."""
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):  # a disk that filled mid-write
            raise OSError(errno.ENOSPC, "short write to the frame journal")
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


