"""Movies: AVI / MP4 / MOV / MKV files decoded with OpenCV.

Video is the one format whose colour is converted rather than refused: the codecs are
lossy and colour-only, so a grayscale movie usually comes back with three (nearly)
equal channels. Equal channels are taken unchanged; others get OpenCV's BGR2GRAY.

Times: ``t_s = index / fps`` from the argument or the container's frame rate; without
either, ``info.fps`` is ``None`` and ``t_s`` counts frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.registry import (
    SourceKind,
    file_opener,
    parse_optional_positive,
    register,
)

from ._common import choose, existing_file, frame_time_s

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["VIDEO_SUFFIXES", "VideoSource"]

VIDEO_SUFFIXES: Final = frozenset({".avi", ".mp4", ".mov", ".mkv"})
"""File name suffixes read with OpenCV's video decoder."""


def _video_grayscale(frame: np.ndarray) -> np.ndarray:
    """8-bit BGR from OpenCV to 2-D grayscale, exact when the channels are equal."""
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    blue = frame[..., 0]
    if np.array_equal(blue, frame[..., 1]) and np.array_equal(blue, frame[..., 2]):
        return np.ascontiguousarray(blue)
    gray: np.ndarray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return gray


def _open_capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise SourceError(
            f"Cannot read {path}: not a movie OpenCV can decode (truncated, corrupt or "
            "an unsupported codec)."
        )
    return capture


class VideoSource(SourceBase):
    """Frames of an AVI / MP4 / MOV / MKV movie, decoded with OpenCV.

    Frames come out as 2-D ``uint8``: when the decoded channels are equal (a grayscale
    movie) one channel is taken unchanged, otherwise OpenCV's BGR2GRAY weighting is
    applied. Lossless codecs (FFV1) replay bit-identically; lossy ones (MPEG-4, H.264,
    MJPEG) do not, which matters for intensity measurements.

    Parameters
    ----------
    path : str or os.PathLike
        The movie file.
    fps : float, optional
        Frames per second; overrides the container's frame rate.
    pixel_size_nm : float, optional
        Pixel width in nanometres (movie containers carry none).

    Raises
    ------
    SourceError
        At construction when the file is missing, empty or cannot be decoded; during
        iteration when the movie ends before the frame count its container announced.
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.

    Notes
    -----
    Each iteration opens its own decoder, so the source can be replayed more than
    once; ``frame_count`` is the container's (exact for AVI and MP4 indices, an
    estimate for some streaming formats).
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
        self._path = existing_file(path)
        self._closed = False
        self._captures: list[cv2.VideoCapture] = []
        capture = _open_capture(self._path)
        try:
            container_fps = float(capture.get(cv2.CAP_PROP_FPS))
            container_count = float(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
            backend = capture.getBackendName()
            ok, first = capture.read()
        finally:
            capture.release()
        if not ok or first is None:
            raise SourceError(f"Cannot read {self._path}: the movie holds no decodable frames.")
        first_gray = _video_grayscale(first)
        self._frame_shape = first.shape
        metadata: dict[str, Any] = {
            "file_name": self._path.name,
            "codec": "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00"),
            "video_backend": backend,
        }
        file_fps = container_fps if math.isfinite(container_fps) and container_fps > 0 else None
        frame_count = int(container_count) if container_count > 0 else None
        self._info = SourceInfo(
            name=f"video:{self._path}",
            kind="video",
            shape=(int(first_gray.shape[0]), int(first_gray.shape[1])),
            dtype=first_gray.dtype.name,
            frame_count=frame_count,
            fps=choose(fps, file_fps, "fps", metadata),
            pixel_size_nm=choose(pixel_size_nm, None, "pixel_size_nm", metadata),
            live=False,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Generator[SourceFrame, None, None]:
        capture = _open_capture(self._path)
        self._captures.append(capture)
        fps = self._info.fps
        index = 0
        try:
            while True:
                if self._closed:
                    raise SourceError(f"Cannot read {self._path}: the source is closed.")
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                if frame.shape != self._frame_shape:
                    raise SourceError(
                        f"Cannot read {self._path} (frame {index}): frame size "
                        f"{frame.shape[1]}x{frame.shape[0]} differs from the first frame's "
                        f"{self._frame_shape[1]}x{self._frame_shape[0]}."
                    )
                yield SourceFrame(_video_grayscale(frame), frame_time_s(index, fps), index)
                index += 1
        finally:
            capture.release()
            if capture in self._captures:
                self._captures.remove(capture)
        expected = self._info.frame_count
        if expected is not None and index < expected:
            raise SourceError(
                f"Cannot read {self._path}: the movie ends after {index} of {expected} "
                "frames (truncated or corrupt)."
            )

    def close(self) -> None:
        """Release every open decoder. Safe to call more than once."""
        self._closed = True
        for capture in self._captures:
            capture.release()
        self._captures.clear()


register(SourceKind("video", "AVI/MP4 movie", file_opener(VideoSource), suffixes=VIDEO_SUFFIXES))
