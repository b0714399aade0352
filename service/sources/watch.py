"""A folder the camera software writes frames into, streamed as the files appear.

In-situ acquisition commonly saves frame by frame (one TIFF, PNG or DM4 per frame).
`WatchFolderSource` polls the folder and yields each new frame once its file is
complete, in acquisition order, until a sentinel file appears or the folder stays
quiet for ``idle_timeout_s``.

*Complete* means: the file's size and modification time were the same on two
consecutive polls (``settle_polls``), and the file is not hidden and has no
temporary suffix (``.tmp``, ``.part``, ``~``...). Writers that save under a
temporary name and rename when done are picked up one poll after the rename; writers
that write in place are picked up once they stop growing. A file that is still
unreadable after settling (a writer that paused mid-file longer than a poll) is
retried until ``unreadable_timeout_s``, then raises.

*Acquisition order* is natural order of the path below the folder (``frame_2`` before
``frame_10``), the order camera software numbers its files in; subfolders are watched
too, so a GMS In-Situ recording (``Hour_00/Minute_00/Second_07/...``) streams in order.
A frame is yielded only when every new file that sorts before it has been yielded, so a
slow write of frame 9 holds back frame 10 rather than being overtaken; a file that shows
up sorting before frames already yielded (a clock or naming mistake) is yielded late
with a warning, never dropped.

Each file's own calibration comes with its frame (``pixel_size_nm`` in the frame's
metadata when the file records one and none was given; the first file's is the
session's). Colour follows :mod:`.imagefile`'s policy, as in the folder replay.

Times: ``t_s`` is each file's modification time relative to the first frame's (when
the camera finished writing it), never decreasing; ``info.fps`` is ``None`` unless
given, in which case ``t_s = index / fps``.

The end: a file named ``sentinel`` (default ``lithoscope.stop``) in the folder ends
the stream after every frame written before it; otherwise ``idle_timeout_s`` (default
60 s) without a new file ends it. Both are normal ends (``session_stop`` reason
``end_of_source``); closing the source from another thread also ends it within one poll.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import ConfigError, SourceError
from .base import SourceBase, SourceFrame, SourceInfo
from .imagefile import (
    IMAGE_SUFFIXES,
    FrameFile,
    FrameFileReader,
    frame_files,
    natural_key,
    read_image_file,
)

__all__ = ["WATCH_SUFFIXES", "WatchFolderSource", "read_image_file"]

log = logging.getLogger(__name__)

WATCH_SUFFIXES: Final = IMAGE_SUFFIXES
"""Frame file suffixes the default reader understands (compared case-insensitively)."""

FrameReader = FrameFileReader
"""Reads one complete frame file; raises on a torn or foreign file."""


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_polls: int = 0
    first_failure: float | None = None


class WatchFolderSource(SourceBase):
    """Frames written into a folder, one file per frame, yielded as each file completes.

    Parameters
    ----------
    path : str or os.PathLike
        The folder (must exist).
    suffixes : collection of str, optional
        Frame file suffixes; default `WATCH_SUFFIXES`, or what ``reader`` understands.
    reader : callable, optional
        ``reader(path) -> FrameFile``; default `read_image_file`. The replay package
        passes one that also reads DM3/DM4 and MRC frames.
    include_existing : bool
        Also stream files already in the folder when the source opens (default True:
        starting the publisher a little after the camera loses nothing).
    poll_s : float
        Interval between folder listings.
    settle_polls : int
        Polls a file's size and mtime must stay unchanged before it is read.
    idle_timeout_s : float
        End the stream after this long without a new frame.
    unreadable_timeout_s : float
        A settled file that still fails to read for this long raises `SourceError`.
    sentinel : str
        File name that ends the stream.
    fps, pixel_size_nm : float, optional
        Frame rate (times then come from the index) and pixel size.
    stop : threading.Event, optional
        Ends the stream at the next poll when set (the CLI sets it on Ctrl-C).

    Raises
    ------
    SourceError
        The folder is missing; during iteration, a frame that stays unreadable or whose
        shape or dtype differs from the first frame's (the message names the file).
    ConfigError
        Non-positive timings.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        suffixes: frozenset[str] | None = None,
        reader: FrameReader | None = None,
        include_existing: bool = True,
        poll_s: float = 0.1,
        settle_polls: int = 2,
        idle_timeout_s: float = 60.0,
        unreadable_timeout_s: float = 10.0,
        sentinel: str = "lithoscope.stop",
        fps: float | None = None,
        pixel_size_nm: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        for name, value in (("poll_s", poll_s), ("idle_timeout_s", idle_timeout_s),
                            ("unreadable_timeout_s", unreadable_timeout_s)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"Expected {name} > 0. Got {value!r} instead.")
        if not (isinstance(settle_polls, int) and settle_polls >= 1):
            raise ConfigError(f"Expected settle_polls >= 1. Got {settle_polls!r} instead.")
        self._path = Path(path).expanduser().absolute()
        if not self._path.is_dir():
            raise SourceError(f"Cannot watch {self._path}: no such directory.")
        self._suffixes = frozenset(s.casefold() for s in (suffixes or WATCH_SUFFIXES))
        self._reader = reader or read_image_file
        self._poll_s = float(poll_s)
        self._settle_polls = settle_polls
        self._idle_timeout_s = float(idle_timeout_s)
        self._unreadable_timeout_s = float(unreadable_timeout_s)
        self._sentinel = sentinel
        self._fps = fps
        self._pixel_size_nm = pixel_size_nm
        self._closed = threading.Event()
        self._stop = stop
        self._ignored = set() if include_existing else set(self._listing())
        metadata: dict[str, Any] = {
            "folder_name": self._path.name,
            "sentinel": sentinel,
            "idle_timeout_s": self._idle_timeout_s,
        }
        self._info = SourceInfo(
            name=f"watch:{self._path}", kind="watch", fps=fps, pixel_size_nm=pixel_size_nm,
            live=True, metadata=metadata)

    def _listing(self) -> list[str]:
        """Frame files, relative to the folder, subfolders included (GMS In-Situ)."""
        return frame_files(self._path, self._suffixes)

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed.is_set():
            raise SourceError(f"Cannot watch {self._path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Iterator[SourceFrame]:
        done: set[str] = set(self._ignored)
        pending: dict[str, _Pending] = {}
        index = 0
        first: np.ndarray | None = None
        t0_ns: int | None = None
        last_t = 0.0
        last_name: tuple[tuple[str | int, ...], str] | None = None
        last_activity = time.monotonic()
        stopping = False
        while not self._closed.is_set():
            if self._stop is not None and self._stop.is_set():
                return
            if (self._path / self._sentinel).exists():
                stopping = True
            listing = [name for name in self._listing() if name not in done]
            for name in list(pending):
                if name not in listing:  # renamed away or deleted before it settled
                    del pending[name]
            for name in listing:
                try:
                    stat = (self._path / name).stat()
                except FileNotFoundError:
                    continue
                state = pending.get(name)
                if state is None or (state.size, state.mtime_ns) != (stat.st_size,
                                                                     stat.st_mtime_ns):
                    pending[name] = _Pending(stat.st_size, stat.st_mtime_ns)
                    last_activity = time.monotonic()
                elif stat.st_size > 0:
                    state.stable_polls += 1
            for name in sorted(pending, key=natural_key):
                if self._closed.is_set():
                    break
                state = pending[name]
                if state.size == 0 or state.stable_polls < self._settle_polls - 1:
                    break  # an earlier frame is still being written: keep the order
                file = self._path / name
                try:
                    read = self._reader(file)
                except Exception as exc:
                    now = time.monotonic()
                    state.first_failure = state.first_failure or now
                    if now - state.first_failure < self._unreadable_timeout_s:
                        break  # perhaps a writer that paused; retry next poll
                    raise SourceError(
                        f"Cannot read {file}: still unreadable after "
                        f"{self._unreadable_timeout_s:g} s ({exc})."
                    ) from exc
                image = read.image
                if first is None:
                    first = image
                    self._info = _with_first_frame(self._info, read)
                elif image.shape != first.shape or image.dtype != first.dtype:
                    raise SourceError(
                        f"Cannot read {file}: {image.shape} {image.dtype} differs from the "
                        f"first frame's {first.shape} {first.dtype}; all frames must match."
                    )
                key = natural_key(name)
                if last_name is not None and key < last_name:
                    log.warning("%s arrived after %s, which sorts after it; streamed late.",
                                name, last_name[1])
                else:
                    last_name = key
                t0_ns = state.mtime_ns if t0_ns is None else t0_ns
                if self._fps:
                    t_s = index / self._fps
                else:
                    t_s = max(last_t, (state.mtime_ns - t0_ns) / 1e9)
                last_t = t_s
                del pending[name]
                done.add(name)
                last_activity = time.monotonic()
                # Each file's own calibration: a GMS In-Situ file records its own.
                metadata = {**read.metadata, "file_name": name}
                if read.pixel_size_nm is not None and self._pixel_size_nm is None:
                    metadata["pixel_size_nm"] = read.pixel_size_nm
                yield SourceFrame(image, t_s, index, metadata=metadata)
                index += 1
            if stopping and not pending:
                return
            if time.monotonic() - last_activity >= self._idle_timeout_s:
                if pending:
                    log.warning("Stopping after %.0f s idle with %d file(s) never complete: %s",
                                self._idle_timeout_s, len(pending), ", ".join(sorted(pending)))
                return
            self._closed.wait(self._poll_s)
        raise SourceError(f"Cannot watch {self._path}: the source is closed.")

    def close(self) -> None:
        """Stop watching (also from another thread, within one poll). Idempotent."""
        self._closed.set()


def _with_first_frame(info: SourceInfo, read: FrameFile) -> SourceInfo:
    """The info once the first frame has shown the shape and dtype (unknown before), and
    the pixel size its file records when none was given."""
    image = read.image
    pixel_size_nm = info.pixel_size_nm if info.pixel_size_nm is not None else read.pixel_size_nm
    return replace(info, shape=(int(image.shape[0]), int(image.shape[1])),
                   dtype=image.dtype.name, pixel_size_nm=pixel_size_nm)
