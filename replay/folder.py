"""Folders of frame files, one frame per file: exported image sequences and GMS In-Situ trees.

Which files are frames, their order and their colour policy are the service's
(:mod:`lithoscope.service.sources.imagefile`), shared with the live ``watch:`` folder;
each file is read by the reader registered for its suffix
(:func:`~lithoscope.service.sources.registry.frame_file_reader`): TIFF with its own
calibration (:mod:`.tiff`), DM3/DM4 through RosettaSciIO (:mod:`.rosetta`), MRC with
mrcfile, PNG / JPEG / BMP with OpenCV. So a frame's pixel size and exposure are its
own file's, not only the first file's.

A Gatan GMS In-Situ recording saves ``Hour_HH/Minute_MM/Second_SS/*.dm4``: the folder
is descended into and the frames come out in acquisition order (natural order of the
relative path). Such a tree records when each frame was taken to the second: without
``fps``, ``t_s`` is that second (from the first frame's) plus ``k / n`` for the
``k``-th of ``n`` frames saved in it, and ``info.metadata["gms_in_situ"]`` is true.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.imagefile import IMAGE_SUFFIXES, frame_files
from lithoscope.service.sources.registry import (
    SourceKind,
    file_opener,
    frame_file_reader,
    parse_optional_positive,
    register,
)

from ._common import choose, frame_time_s

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["FolderSource", "gms_times_s"]

_GMS_PATH: Final = re.compile(r"hour_(\d+)/minute_(\d+)/second_(\d+)/", re.IGNORECASE)


def _existing_directory(path: str | os.PathLike[str]) -> Path:
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise SourceError(f"Cannot read {resolved}: no such file or directory.")
    if not resolved.is_dir():
        raise SourceError(f"Cannot read {resolved}: not a directory.")
    return resolved


def gms_times_s(names: list[str]) -> list[float] | None:
    """Frame times from a GMS In-Situ tree's ``Hour_/Minute_/Second_`` folders, or ``None``
    if any name is outside such a tree.

    The ``k``-th of the ``n`` frames saved in one second is put at ``k / n`` into it;
    times count from the first frame's second.
    """
    seconds = []
    for name in names:
        match = _GMS_PATH.match(name)
        if match is None:
            return None
        hours, minutes, second = (int(group) for group in match.groups())
        seconds.append(3600 * hours + 60 * minutes + second)
    counts: dict[int, int] = {}
    for second in seconds:
        counts[second] = counts.get(second, 0) + 1
    seen: dict[int, int] = {}
    times = []
    for second in seconds:
        k = seen.get(second, 0)
        seen[second] = k + 1
        times.append(second - seconds[0] + k / counts[second])
    return times


class FolderSource(SourceBase):
    """Frames from a folder of frame files, one frame per file, subfolders included.

    Files with the suffixes in ``IMAGE_SUFFIXES`` or of a kind that reads single frame
    files (DM3/DM4, MRC), compared case-insensitively, are frames; hidden files and
    folders, temporary names and other suffixes are ignored. Files are ordered by
    *natural* sort of their path below the folder: runs of digits compare as numbers,
    text case-insensitively, so ``frame_2.png`` comes before ``frame_10.png`` and a GMS
    In-Situ tree comes out in acquisition order (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    fps : float, optional
        Frames per second; without it ``t_s`` counts frames (or, in a GMS In-Situ
        tree, comes from its folders) and ``info.fps`` is ``None``.
    pixel_size_nm : float, optional
        Pixel width in nanometres; overrides every file's calibration. Without it the
        first file's is the session's and each frame carries its own file's.

    Raises
    ------
    SourceError
        At construction when the folder is missing or holds no frame files, or the
        first cannot be read; during iteration for an unreadable file or one whose
        shape or dtype differs from the first (the message names the file).
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.

    Notes
    -----
    The listing is taken once, at construction; files added later are not seen (that
    is what ``watch:DIR`` is for).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        pixel_size_nm: float | None = None,
    ) -> None:
        fps = parse_optional_positive(fps, "fps")
        pixel_size_nm = parse_optional_positive(pixel_size_nm, "pixel_size_nm")
        self._path = _existing_directory(path)
        self._closed = False
        frame_suffixes, self._reader = frame_file_reader()
        suffixes = IMAGE_SUFFIXES | frame_suffixes
        self._files = frame_files(self._path, suffixes)
        if not self._files:
            raise SourceError(
                f"Cannot read {self._path}: the folder holds no image files "
                f"({', '.join(sorted(suffixes))}), in it or below it."
            )
        first = self._reader(self._path / self._files[0])
        self._first = first.image
        self._pixel_size_nm = pixel_size_nm
        self._gms_times_s = gms_times_s(self._files)
        metadata: dict[str, Any] = {
            "folder_name": self._path.name,
            "first_file": self._files[0],
            "last_file": self._files[-1],
            **{k: v for k, v in first.metadata.items() if k != "exposure_s"},
        }
        if self._gms_times_s is not None:
            metadata["gms_in_situ"] = True
        self._info = SourceInfo(
            name=f"folder:{self._path}",
            kind="folder",
            shape=(int(self._first.shape[0]), int(self._first.shape[1])),
            dtype=self._first.dtype.name,
            frame_count=len(self._files),
            fps=choose(fps, None, "fps", metadata),
            pixel_size_nm=choose(pixel_size_nm, first.pixel_size_nm, "pixel_size_nm", metadata),
            live=False,
            metadata=metadata,
        )
        self._first_file = first

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Generator[SourceFrame, None, None]:
        fps = self._info.fps
        first_name = self._files[0]
        for index, name in enumerate(self._files):
            if self._closed:
                raise SourceError(f"Cannot read {self._path}: the source is closed.")
            read = self._first_file if index == 0 else self._reader(self._path / name)
            image = read.image.copy() if index == 0 else read.image
            if image.shape != self._first.shape or image.dtype != self._first.dtype:
                raise SourceError(
                    f"Cannot read {self._path / name}: {_describe(image)} differs from "
                    f"{first_name}'s {_describe(self._first)}; all images in a folder must match."
                )
            metadata = {**read.metadata, "file_name": name}
            if read.pixel_size_nm is not None and self._pixel_size_nm is None:
                metadata["pixel_size_nm"] = read.pixel_size_nm
            if fps is None and self._gms_times_s is not None:
                t_s = self._gms_times_s[index]
            else:
                t_s = frame_time_s(index, fps)
            yield SourceFrame(image, t_s, index, metadata=metadata)

    def close(self) -> None:
        """Mark the source closed (files are opened per frame). Safe to call twice."""
        self._closed = True


def _describe(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} {image.dtype.name}"


register(SourceKind("folder", "image folder", file_opener(FolderSource),
                    claims_directory=lambda path: True, priority=100))
