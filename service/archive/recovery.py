"""Start-up recovery: archives a dead worker left ``recording`` become ``interrupted``."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ArchiveError
from .reader import ArchiveReader

log = logging.getLogger(__name__)

__all__ = ["recover_abandoned", "update_archive_meta"]


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
