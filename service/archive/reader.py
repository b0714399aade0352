"""Reads a session archive, complete or cut short by a crash."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ArchiveError
from .layout import FRAME_LOG, FRAME_TABLE_COLUMNS, KEYS, directory_size, journal_row

log = logging.getLogger(__name__)

__all__ = ["ArchiveReader"]


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
        self._valid = {name: self._valid_rows(name) for name in KEYS}
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
            row = journal_row(line)
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
        key = self.group.get(f"{name}/{KEYS[name]}")
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
        if name not in KEYS:
            raise KeyError(f"Unknown table {name!r}; expected one of {sorted(KEYS)}.")
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


