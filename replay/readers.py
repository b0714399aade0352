"""Sources for recorded movies: TIFF stacks, AVI/MP4 files and folders of images.

Each reader is a :class:`~lithoscope.service.sources.SourceBase` that streams: it
opens the file once, learns shape, dtype and frame count from headers (and from the
first frame where the format has no header for them), and then decodes one frame per
iteration step. A 4096 x 4096 x 1000 stack never has to fit in memory.

Frames come out exactly as the file stores them (C-contiguous, 2-D, the file's
dtype), so an analysis run on a replayed TIFF sees the same pixels the camera wrote.
Colour is refused rather than silently averaged, except where the colour channels
are identical (a grayscale movie saved as RGB, which many export tools do) or the
format is lossy and colour-only anyway (video: converted with OpenCV's BGR2GRAY).

Times: ``t_s = index / fps`` when the frame rate is known (from the argument, from
ImageJ's ``finterval`` or from the video container). When it is not, ``info.fps`` is
``None`` and ``t_s`` counts frames (``t_s == index``); the CLI must then require
``--fps`` or warn that times are frame numbers, never pretend they are seconds.

Bad input raises :class:`~lithoscope.service.errors.SourceError` with one line that
names the file: at open for what the headers already show (missing, empty, not a
TIFF, colour frames), and during iteration for damage found later (a truncated page
mid-stack), after every good frame before it has been yielded.

Each reader registers itself with the service's source registry
(:mod:`lithoscope.service.sources.registry`), whose `open_source` picks the reader for
a path; ``open_source`` is re-exported here for convenience.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np
import tifffile

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.registry import (
    SourceKind,
    file_opener,
    open_source,
    parse_optional_positive,
    register,
)

from ._common import (
    TIME_UNIT_S,
    choose,
    decode_unicode_escapes,
    existing_file,
    frame_time_s,
    length_unit_nm,
    one_line,
)

if TYPE_CHECKING:
    from collections.abc import Generator


__all__ = [
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FolderSource",
    "TiffSource",
    "VideoSource",
    "open_source",
]

TIFF_SUFFIXES: Final = frozenset({".tif", ".tiff"})
"""File name suffixes read as TIFF stacks (compared case-insensitively)."""
VIDEO_SUFFIXES: Final = frozenset({".avi", ".mp4", ".mov", ".mkv"})
"""File name suffixes read with OpenCV's video decoder."""
IMAGE_SUFFIXES: Final = TIFF_SUFFIXES | frozenset({".png", ".jpg", ".jpeg", ".bmp"})
"""File name suffixes a `FolderSource` treats as frames; anything else is ignored."""

_TIFF_MAGIC: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# TIFF ResolutionUnit values that are lengths. INCH (2) is deliberately absent: writers
# that know nothing about the pixel size (PIL, Photoshop, most exporters) stamp 72 dpi,
# which would read as a confident, absurd 353 µm pixel.
_RESOLUTION_UNIT_NM: Final[Mapping[int, float]] = {
    3: 1e7,  # CENTIMETER
    4: 1e6,  # MILLIMETER (tifffile extension)
    5: 1e3,  # MICROMETER (tifffile extension)
}

# Leading TIFF axes that are channels, not time: a stack with more than one of them is
# not a movie of grayscale frames.
_CHANNEL_AXES: Final = frozenset("CS")

# Phrases tifffile logs when the IFD chain or the ImageJ layout is cut short.
_DAMAGE_MARKERS: Final = ("invalid page offset", "corrupted file", "corrupted IFD")
_OBJECT_PREFIX: Final = re.compile(r"^<[^>]*>\s*")

_DIGITS: Final = re.compile(r"(\d+)")


# --------------------------------------------------------------------------- validation


def _existing_directory(path: str | os.PathLike[str]) -> Path:
    resolved = Path(path).expanduser().absolute()
    if not resolved.exists():
        raise SourceError(f"Cannot read {resolved}: no such file or directory.")
    if not resolved.is_dir():
        raise SourceError(f"Cannot read {resolved}: not a directory.")
    return resolved


def _to_grayscale(image: np.ndarray, *, sample_axis: int | None, where: str) -> np.ndarray:
    """Return the 2-D C-contiguous grayscale view of ``image``.

    ``sample_axis`` is the axis holding colour samples, or ``None`` for a plain 2-D
    frame. Frames whose first three samples are identical (grayscale saved as RGB) are
    reduced to one sample, which keeps the pixels bit-identical; a fourth sample
    (alpha), or the second of two (gray + alpha), is ignored. Real colour raises,
    because averaging channels would invent intensities the detector never measured.
    ``where`` names the frame in the message.
    """
    if sample_axis is None:
        return np.ascontiguousarray(image)
    samples = np.moveaxis(image, sample_axis, -1)
    first = samples[..., 0]
    # Three or more samples are RGB(A); fewer are gray plus an extra (alpha) sample.
    colours = 3 if samples.shape[-1] >= 3 else 1
    for channel in range(1, colours):
        if not np.array_equal(first, samples[..., channel]):
            raise SourceError(
                f"Cannot read {where}: colour frame (the RGB channels differ); "
                "lithoscope analyses grayscale frames, convert the movie to grayscale first."
            )
    return np.ascontiguousarray(first)


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key ordering ``frame_2`` before ``frame_10``.

    The name is split into runs of digits and non-digits; digit runs compare as
    integers, text runs case-insensitively. The full name breaks ties, so
    ``frame_01`` and ``frame_1`` still have a fixed order.
    """
    parts = _DIGITS.split(name.casefold())
    # re.split with one capturing group alternates text (even) and digits (odd), so
    # the same positions always hold the same type and tuples compare safely.
    key = tuple(int(part) if position % 2 else part for position, part in enumerate(parts))
    return key, name


# --------------------------------------------------------------------------- TIFF


class _TifffileLog(logging.Handler):
    """Collect what tifffile logs while parsing a file.

    tifffile reports a broken IFD chain or unparseable ImageJ metadata through
    ``logging`` and carries on with whatever it could read, so without listening a
    truncated stack would quietly look like a shorter one. While attached, the handler
    also keeps Python's last-resort handler from printing those lines on stderr; an
    application that configured logging still receives them through propagation.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []
        self._logger = logging.getLogger("tifffile")

    def emit(self, record: logging.LogRecord) -> None:
        # Drop tifffile's "<tifffile.TiffPages @8> " object prefix: users see file names.
        self.messages.append(_OBJECT_PREFIX.sub("", record.getMessage()))

    def damage(self) -> str | None:
        """The first message saying the file structure is broken, if any.

        Only these mean lost frames; other errors (an unparseable OME-XML block, say)
        make tifffile fall back to plain pages without losing any.
        """
        for message in self.messages:
            if any(marker in message for marker in _DAMAGE_MARKERS):
                return f"tifffile: {message}"
        return None

    def __enter__(self) -> _TifffileLog:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)


class _TiffStack:
    """An open TIFF file seen as a sequence of 2-D grayscale frames.

    Shared by `TiffSource` (one file, many frames) and `FolderSource` (one frame per
    file). Frames are read one at a time: uncompressed contiguous data (tifffile's own
    stacks, ImageJ stacks) by offset arithmetic, anything else page by page.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closed = False
        try:
            with path.open("rb") as handle:
                magic = handle.read(4)
        except OSError as exc:
            raise SourceError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
        if magic not in _TIFF_MAGIC:
            raise SourceError(f"Cannot read {path}: not a TIFF file (it starts with {magic!r}).")
        try:
            with _TifffileLog() as log:
                self._tif = tifffile.TiffFile(path)
                try:
                    self._inspect(log)
                except BaseException:
                    self._tif.close()
                    raise
        except SourceError:
            raise
        except Exception as exc:
            # tifffile raises a zoo of types (TiffFileError, struct.error, ValueError,
            # IndexError ...) for damaged headers; all mean the same to the user.
            raise SourceError(
                f"Cannot read {path}: not a readable TIFF file "
                f"(truncated or corrupt: {one_line(exc)})."
            ) from exc

    def _inspect(self, log: _TifffileLog) -> None:
        tif = self._tif
        if not tif.series:
            raise SourceError(f"Cannot read {self.path}: the TIFF file holds no images.")
        series = tif.series[0]
        # tifffile walks the IFD chain lazily, while building the series.
        damage = log.damage()
        shape = tuple(int(size) for size in series.shape)
        axes = str(series.axes)
        frame_axes = axes[len(axes.rstrip("YXS")) :]
        leading = list(zip(axes[: len(axes) - len(frame_axes)], shape, strict=False))
        frame_shape = shape[len(leading) :]
        if "Y" not in frame_axes or "X" not in frame_axes or len(frame_axes) > 3:
            raise SourceError(
                f"Cannot read {self.path}: unsupported TIFF layout (axes {axes}, shape {shape})."
            )
        varying = [(axis, size) for axis, size in leading if size > 1]
        for axis, size in varying:
            if axis in _CHANNEL_AXES:
                raise SourceError(
                    f"Cannot read {self.path}: the stack has {size} channels (axes {axes}); "
                    "expected one grayscale frame per time point."
                )
        if len(varying) > 1:
            raise SourceError(
                f"Cannot read {self.path}: the stack has several frame axes (axes {axes}, "
                f"shape {shape}); expected a single time axis of 2-D frames."
            )
        self.axes = axes
        self.kind = str(series.kind)
        self.frame_count = math.prod(size for _, size in leading)
        self.shape = (frame_shape[frame_axes.index("Y")], frame_shape[frame_axes.index("X")])
        self.dtype = np.dtype(series.dtype).newbyteorder("=")
        self._sample_axis = frame_axes.index("S") if "S" in frame_axes else None
        self._frame_shape = frame_shape
        self._file_size = int(tif.filehandle.size)
        self._typecode = tif.byteorder + self.dtype.char
        self._offset: int | None = series.dataoffset
        self._pages: Sequence[Any] = series
        # Frames reachable at all; reading past them is truncation.
        self._available = self.frame_count if self._offset is not None else len(series)
        self._damage = damage
        # Without a frame count from the metadata, a broken IFD chain only shows as
        # a shorter series: the end of iteration must then report the damage.
        self.end_uncertain = damage is not None

        expected = self._announced_frame_count(self.kind, math.prod(frame_shape))
        if expected is None:
            return
        self.end_uncertain = False
        if expected > self.frame_count:
            # tifffile gave up on the metadata and fell back to what the IFD chain
            # still reaches: the file is truncated. Serve what is left, then fail.
            self.frame_count = expected
            first = tif.pages.first
            if tif.is_imagej and first.is_final:
                # ImageJ always stores a stack's pixels contiguously after page 0.
                self._offset = int(first.dataoffsets[0])
                self._available = expected
            else:
                self._offset = None
                self._pages = tif.pages
                self._available = min(len(tif.pages), expected)
            if self._damage is None:
                self._damage = f"the metadata announces {expected} frames"

    def _announced_frame_count(self, kind: str, frame_size: int) -> int | None:
        """Frame count the file's own metadata announces, if any."""
        tif = self._tif
        if tif.is_imagej and tif.imagej_metadata is not None:
            if kind == "imagej":
                # tifffile made sense of the metadata; its count is the better one
                # (ImageJ's ``images`` also counts channels and is "not reliable").
                return self.frame_count
            images = tif.imagej_metadata.get("images")
            return images if isinstance(images, int) and images > 0 else None
        if tif.is_shaped and tif.shaped_metadata and frame_size:
            declared = tif.shaped_metadata[0].get("shape")
            if isinstance(declared, list | tuple):
                return math.prod(int(size) for size in declared) // frame_size
        return None

    def _ome_pixels(self) -> Mapping[str, str]:
        """Attributes of the first OME-XML ``Pixels`` element (empty if not OME-TIFF)."""
        if not self._tif.is_ome or not self._tif.ome_metadata:
            return {}
        import xml.etree.ElementTree as ElementTree

        try:
            root = ElementTree.fromstring(self._tif.ome_metadata)
        except ElementTree.ParseError:
            return {}  # tifffile already fell back to plain pages; no calibration then
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == "Pixels":
                return dict(element.attrib)
        return {}

    def pixel_size_nm(self) -> float | None:
        """Pixel width from OME-XML ``PhysicalSizeX``, ImageJ's ``unit`` or the TIFF
        resolution tags, if stated."""
        ome = self._ome_pixels()
        if "PhysicalSizeX" in ome:
            # OME's default unit is the micrometre (schema 2016-06).
            unit_nm = length_unit_nm(ome.get("PhysicalSizeXUnit", "µm"))
            try:
                size = float(ome["PhysicalSizeX"])
            except ValueError:
                return None
            valid = unit_nm is not None and math.isfinite(size) and size > 0
            return size * unit_nm if valid else None  # type: ignore[operator]
        page = self._tif.pages.first
        x_resolution = float(page.resolution[0])  # pixels per unit length
        if not (math.isfinite(x_resolution) and x_resolution > 0):
            return None
        metadata = self._tif.imagej_metadata or {}
        if "unit" in metadata:
            # ImageJ keeps the unit in its description and ResolutionUnit at NONE.
            unit_nm = length_unit_nm(metadata["unit"])
        else:
            unit_nm = _RESOLUTION_UNIT_NM.get(int(page.resolutionunit))
        return unit_nm / x_resolution if unit_nm is not None else None

    def frame_interval_s(self) -> float | None:
        """Frame interval from OME-XML ``TimeIncrement`` or ImageJ's ``finterval``, in
        their units (seconds by default)."""
        ome = self._ome_pixels()
        if "TimeIncrement" in ome:
            scale = TIME_UNIT_S.get(ome.get("TimeIncrementUnit", "s").strip().casefold())
            try:
                increment = float(ome["TimeIncrement"])
            except ValueError:
                return None
            valid = scale is not None and math.isfinite(increment) and increment > 0
            return increment * scale if valid else None  # type: ignore[operator]
        metadata = self._tif.imagej_metadata or {}
        interval = metadata.get("finterval")
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            return None
        unit = str(metadata.get("tunit", "sec"))
        scale = TIME_UNIT_S.get(decode_unicode_escapes(unit).strip().casefold())
        if scale is None or not (math.isfinite(interval) and interval > 0):
            return None
        return float(interval) * scale

    def read(self, index: int) -> np.ndarray:
        """Decode frame ``index`` as a 2-D C-contiguous array in the file's dtype."""
        where = f"{self.path} (frame {index})"
        if self.closed:
            raise SourceError(f"Cannot read {self.path}: the source is closed.")
        if index >= self._available:
            raise self._truncated(index)
        if self._offset is not None:
            count = math.prod(self._frame_shape)
            nbytes = count * self.dtype.itemsize
            offset = self._offset + index * nbytes
            if offset + nbytes > self._file_size:
                raise self._truncated(index)
            handle = self._tif.filehandle
            try:
                with handle.lock:
                    flat = handle.read_array(self._typecode, count, offset)
            except (OSError, ValueError) as exc:
                raise SourceError(f"Cannot read {where}: {one_line(exc)}.") from exc
            image = flat.reshape(self._frame_shape)
        else:
            page = self._pages[index]
            if page is None:
                raise self._truncated(index)
            try:
                image = page.asarray().reshape(self._frame_shape)
            except Exception as exc:
                # Decoder errors (zlib, LZW, short reads) or a stray page of another
                # shape: the page is not a frame of this stack.
                raise SourceError(
                    f"Cannot read {where}: the page is damaged or truncated ({one_line(exc)})."
                ) from exc
        if image.dtype != self.dtype:
            raise SourceError(
                f"Cannot read {where}: the page holds {image.dtype.name} pixels, "
                f"the stack {self.dtype.name}."
            )
        return _to_grayscale(image, sample_axis=self._sample_axis, where=where)

    def check_complete(self) -> None:
        """Raise after the last frame if tifffile reported a broken file on opening."""
        if self.end_uncertain:
            raise SourceError(
                f"Cannot read {self.path}: the file is damaged after frame "
                f"{self.frame_count - 1} ({self._damage}); later frames may be lost."
            )

    def _truncated(self, index: int) -> SourceError:
        detail = f"; {self._damage}" if self._damage else ""
        return SourceError(
            f"Cannot read {self.path}: the file ends before frame {index} of "
            f"{self.frame_count} (truncated or corrupt{detail})."
        )

    def close(self) -> None:
        self.closed = True
        self._tif.close()


class TiffSource(SourceBase):
    """Frames of a multi-page TIFF stack, read one page at a time.

    Reads plain multi-page TIFFs, tifffile's shaped stacks and ImageJ stacks and
    hyperstacks whose only non-trivial leading axis is time (or Z, or an unnamed axis:
    stacks saved as Z-series are common). Pixel size comes from the file when it says
    so (ImageJ ``unit`` with XResolution, or ResolutionUnit centimetre / millimetre /
    micrometre), the frame rate from ImageJ's ``finterval``; explicit arguments
    override the file, and the file's values are kept in ``info.metadata``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.tif`` / ``.tiff`` file.
    fps : float, optional
        Frames per second; overrides the file's frame interval.
    pixel_size_nm : float, optional
        Pixel width in nanometres; overrides the file's calibration.

    Raises
    ------
    SourceError
        At construction when the file is missing, empty, not a TIFF, has channels or
        colour frames; during iteration when a page turns out truncated or damaged
        (after yielding every frame before it).
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.

    Notes
    -----
    The first series (tifffile's ``series[0]``) is the movie; further series
    (thumbnails, pyramid levels) are ignored. RGB frames whose channels are identical
    are reduced to one channel; true colour raises `SourceError`.
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
        self._stack = _TiffStack(self._path)
        try:
            # Refuse colour now rather than after the user has started a session.
            self._stack.read(0)
            metadata: dict[str, Any] = {
                "file_name": self._path.name,
                "tiff_axes": self._stack.axes,
                "tiff_series_kind": self._stack.kind,
            }
            file_pixel_size_nm = self._stack.pixel_size_nm()
            interval_s = self._stack.frame_interval_s()
            file_fps = 1.0 / interval_s if interval_s is not None else None
            fps = choose(fps, file_fps, "fps", metadata)
            pixel_size_nm = choose(pixel_size_nm, file_pixel_size_nm, "pixel_size_nm", metadata)
        except BaseException:
            self._stack.close()
            raise
        self._info = SourceInfo(
            name=f"tiff:{self._path}",
            kind="tiff",
            shape=self._stack.shape,
            dtype=self._stack.dtype.name,
            # A broken IFD chain without a count in the metadata: unknown, not short.
            frame_count=None if self._stack.end_uncertain else self._stack.frame_count,
            fps=fps,
            pixel_size_nm=pixel_size_nm,
            live=False,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._stack.closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Generator[SourceFrame, None, None]:
        fps = self._info.fps
        for index in range(self._stack.frame_count):
            yield SourceFrame(self._stack.read(index), frame_time_s(index, fps), index)
        self._stack.check_complete()

    def close(self) -> None:
        """Close the file. Safe to call more than once."""
        self._stack.close()


# --------------------------------------------------------------------------- video


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


# --------------------------------------------------------------------------- folder


def _read_image_file(path: Path) -> tuple[np.ndarray, float | None]:
    """Read one image file as a 2-D frame, with the pixel size a TIFF states."""
    if path.suffix.casefold() in TIFF_SUFFIXES:
        stack = _TiffStack(existing_file(path))
        try:
            if stack.frame_count != 1:
                raise SourceError(
                    f"Cannot read {path}: it holds {stack.frame_count} frames; a folder "
                    "source expects one frame per file (open the file as a TIFF stack)."
                )
            return stack.read(0), stack.pixel_size_nm()
        finally:
            stack.close()
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SourceError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    # cv2.imdecode from a buffer rather than cv2.imread: no locale trouble with
    # non-ASCII paths, and an empty file is reported here instead of as a cv2.error.
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    if image is None:
        raise SourceError(f"Cannot read {path}: not a readable image (truncated or corrupt).")
    sample_axis = 2 if image.ndim == 3 else None
    return _to_grayscale(image, sample_axis=sample_axis, where=str(path)), None


class FolderSource(SourceBase):
    """Frames from a folder of image files, one frame per file.

    Files with the suffixes in `IMAGE_SUFFIXES` (case-insensitive) are frames; hidden
    files (names starting with ``.``), subfolders and other suffixes are ignored. TIFFs
    are read with tifffile, PNG / JPEG / BMP with OpenCV (unchanged depth, so 16-bit
    PNGs stay 16-bit).

    Files are ordered by *natural* sort: runs of digits compare as numbers and text
    case-insensitively, so ``frame_2.png`` comes before ``frame_10.png`` (a plain
    string sort would put ``frame_10`` first). The full name breaks ties.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    fps : float, optional
        Frames per second; image files do not record it, so without it ``info.fps``
        is ``None`` and ``t_s`` counts frames.
    pixel_size_nm : float, optional
        Pixel width in nanometres; overrides a calibration found in the first file
        (TIFF only).

    Raises
    ------
    SourceError
        At construction when the folder is missing or holds no image files, or the
        first image cannot be read; during iteration for an unreadable image or one
        whose shape or dtype differs from the first (the message names the file).
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.

    Notes
    -----
    The listing is taken once, at construction; files added later are not seen.
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
        try:
            entries = [
                entry
                for entry in self._path.iterdir()
                if not entry.name.startswith(".")
                and entry.suffix.casefold() in IMAGE_SUFFIXES
                and entry.is_file()
            ]
        except OSError as exc:
            raise SourceError(f"Cannot read {self._path}: {exc.strerror or exc}.") from exc
        if not entries:
            raise SourceError(
                f"Cannot read {self._path}: the folder holds no image files "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})."
            )
        self._files = sorted(entries, key=lambda entry: _natural_key(entry.name))
        first, file_pixel_size_nm = _read_image_file(self._files[0])
        self._first = first
        metadata: dict[str, Any] = {
            "folder_name": self._path.name,
            "first_file": self._files[0].name,
            "last_file": self._files[-1].name,
        }
        self._info = SourceInfo(
            name=f"folder:{self._path}",
            kind="folder",
            shape=(int(first.shape[0]), int(first.shape[1])),
            dtype=first.dtype.name,
            frame_count=len(self._files),
            fps=choose(fps, None, "fps", metadata),
            pixel_size_nm=choose(pixel_size_nm, file_pixel_size_nm, "pixel_size_nm", metadata),
            live=False,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _frames(self) -> Generator[SourceFrame, None, None]:
        fps = self._info.fps
        first_name = self._files[0].name
        for index, file in enumerate(self._files):
            if self._closed:
                raise SourceError(f"Cannot read {self._path}: the source is closed.")
            image = self._first.copy() if index == 0 else _read_image_file(file)[0]
            if image.shape != self._first.shape or image.dtype != self._first.dtype:
                raise SourceError(
                    f"Cannot read {file}: {_describe(image)} differs from {first_name}'s "
                    f"{_describe(self._first)}; all images in a folder must match."
                )
            yield SourceFrame(
                image, frame_time_s(index, fps), index, metadata={"file_name": file.name}
            )

    def close(self) -> None:
        """Mark the source closed (files are opened per frame). Safe to call twice."""
        self._closed = True


def _describe(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} {image.dtype.name}"


# --------------------------------------------------------------------------- registry


register(SourceKind("tiff", "TIFF stack", file_opener(TiffSource), suffixes=TIFF_SUFFIXES))
register(SourceKind("video", "AVI/MP4 movie", file_opener(VideoSource), suffixes=VIDEO_SUFFIXES))
register(SourceKind("folder", "image folder", file_opener(FolderSource),
                    claims_directory=lambda path: True, priority=100))
