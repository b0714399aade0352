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

from .layout import (
    ARCHIVE_FORMAT_VERSION,
    CLUSTER_COLUMNS,
    ECHEM_COLUMNS,
    EVENT_COLUMNS,
    FRAME_LOG,
    FRAME_TABLE_COLUMNS,
    MAX_NAME_CHARS,
    OPERANDO_COLUMNS,
    PARTICLE_COLUMNS,
    PARTICLE_DOSE_COLUMNS,
    REGION_DOSE_COLUMNS,
    directory_size,
    safe_archive_name,
)
from .reader import ArchiveReader
from .recovery import recover_abandoned, update_archive_meta
from .writer import ArchiveWriter

__all__ = [
    "ARCHIVE_FORMAT_VERSION",
    "CLUSTER_COLUMNS",
    "ECHEM_COLUMNS",
    "EVENT_COLUMNS",
    "FRAME_LOG",
    "FRAME_TABLE_COLUMNS",
    "MAX_NAME_CHARS",
    "OPERANDO_COLUMNS",
    "PARTICLE_COLUMNS",
    "PARTICLE_DOSE_COLUMNS",
    "REGION_DOSE_COLUMNS",
    "ArchiveReader",
    "ArchiveWriter",
    "directory_size",
    "recover_abandoned",
    "safe_archive_name",
    "update_archive_meta",
]
