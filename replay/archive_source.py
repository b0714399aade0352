"""Replay an archived lithoscope session as a source: same frames, same clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.errors import ArchiveError, SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.registry import SourceKind, file_opener, register

__all__ = ["ArchiveSource"]


class ArchiveSource(SourceBase):
    """Frames of an archive in archive order, with their original ``t_s``, index and metadata.

    An archive cut short by a crash replays every frame it holds. ``fps`` re-times the
    frames (``t_s = index / fps``) only when given; ``pixel_size_nm`` overrides the
    archive's value.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None,
                 pixel_size_nm: float | None = None) -> None:
        try:
            self.reader = ArchiveReader(path)
        except ArchiveError as exc:
            raise SourceError(str(exc)) from None
        reader = self.reader
        self._fps = fps
        self._closed = False
        table = reader.table("frame_table")
        self._t = table.get("t_s")
        self._index = table.get("index")
        self._metadata = table.get("metadata_json")
        shape = tuple(reader.frames.shape[1:]) if reader.frame_count else None
        self._info = SourceInfo(
            name=f"archive:{reader.path.resolve()}", kind="archive",
            shape=shape,  # type: ignore[arg-type]
            dtype=str(reader.frames.dtype) if reader.frame_count else None,
            frame_count=reader.frame_count,
            fps=fps if fps is not None else reader.meta.get("fps"),
            pixel_size_nm=pixel_size_nm if pixel_size_nm is not None else reader.pixel_size_nm,
            live=False,
            metadata={"replayed_session_id": reader.meta.get("session_id"),
                      "replayed_source": reader.meta.get("source")},
        )

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self.reader.path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Iterator[SourceFrame]:
        for position in range(self.reader.frame_count):
            if self._closed:
                return
            image = self.reader.frame(position)
            metadata = json.loads(str(self._metadata[position])) if self._metadata is not None \
                else {}
            truth = metadata.pop("truth", None)
            index = int(self._index[position]) if self._index is not None else position
            t_s = index / self._fps if self._fps else float(self._t[position])  # type: ignore[index]
            yield SourceFrame(image=image, t_s=t_s, index=index, metadata=metadata, truth=truth)


register(SourceKind("archive", "lithoscope archive", file_opener(ArchiveSource),
                    claims_directory=lambda path: (path / "zarr.json").is_file()))
