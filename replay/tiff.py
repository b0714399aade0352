"""TIFF stacks: plain multi-page, tifffile's shaped, ImageJ, OME and vendor TIFFs.

A stack is opened once and decoded one frame per iteration step (uncompressed
contiguous data by offset arithmetic, anything else page by page), so a 4096 x 4096
x 1000 stack never has to fit in memory. Frames come out exactly as the file stores
them (C-contiguous, 2-D, the file's dtype); colour follows
:mod:`lithoscope.service.sources.imagefile`'s policy (equal channels reduced, real
colour refused).

Calibration, in this order: OME-XML ``PhysicalSizeX``; ImageJ's ``unit`` with the
resolution tags; ResolutionUnit centimetre / millimetre / micrometre; and, for the
vendor TIFFs these do not cover (FEI/Thermo Fisher, Zeiss, TVIPS, Olympus SIS, JEOL
SightX, DigitalMicrograph-exported or RosettaSciIO-written TIFFs), RosettaSciIO's
``rsciio.tiff`` reader, which also maps the instrument's beam energy, magnification and
exposure (:func:`.rosetta.instrument_metadata`). The frame rate comes from OME's
``TimeIncrement`` or ImageJ's ``finterval``.

Bad input raises :class:`~lithoscope.service.errors.SourceError` with one line that
names the file: at open for what the headers already show (missing, empty, not a
TIFF, colour frames), and during iteration for damage found later (a truncated page
mid-stack), after every good frame before it has been yielded.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import tifffile

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.imagefile import FrameFile, to_grayscale
from lithoscope.service.sources.registry import (
    SourceKind,
    file_opener,
    parse_optional_positive,
    register,
)

from . import rosetta
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

__all__ = ["TIFF_SUFFIXES", "TiffSource", "read_tiff_frame"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES: Final = frozenset({".tif", ".tiff"})
"""File name suffixes read as TIFF stacks (compared case-insensitively)."""

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

# Vendor metadata rsciio.tiff reads and tifffile's OME / ImageJ / resolution do not:
# tifffile's flags, and the private tags DigitalMicrograph (and rsciio's writer) use.
_VENDOR_FLAGS: Final = frozenset({"fei", "sem", "sis", "tvips"})
_DM_TAGS: Final = frozenset({65003, 65004, 65009, 65010})
_VENDOR_READ_BYTES: Final = 512 << 20
"""Largest vendor TIFF read whole by rsciio.tiff for its calibration (it is read once)."""


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

    def is_vendor_tiff(self) -> bool:
        """Does the file carry vendor metadata only RosettaSciIO's TIFF reader reads?"""
        if _VENDOR_FLAGS & set(self._tif.flags):
            return True
        tags = self._tif.pages.first.tags
        return any(code in tags for code in _DM_TAGS) or "SightX_Notes" in tags

    def calibration(self) -> tuple[float | None, dict[str, Any]]:
        """The pixel size (nm) and what else the file records about its acquisition.

        tifffile's own readings first (OME, ImageJ, resolution tags); for a vendor TIFF
        without them, RosettaSciIO's ``rsciio.tiff`` (the ``[formats]`` extra), whose
        instrument metadata (beam energy, magnification, exposure ...) comes along.
        """
        own = self.pixel_size_nm()
        if not self.is_vendor_tiff():
            return own, {}
        if self._file_size > _VENDOR_READ_BYTES:
            # rsciio.tiff keeps a lazily read file open; read whole, it closes it.
            note = (f"vendor calibration not read: the file is larger than "
                    f"{_VENDOR_READ_BYTES >> 20} MiB")
            log.warning("%s: %s", self.path, note)
            return own, {"calibration_note": note}
        try:
            signals = rosetta.read_with(self.path, "rsciio.tiff", lazy=False)
        except rosetta.MissingExtra as exc:
            log.warning("%s", exc)
            return own, {"calibration_note": str(exc)}
        except SourceError as exc:
            log.warning("%s", exc)
            return own, {}
        signal = rosetta.pick_image_signal(self.path, signals)
        axes = list(signal.get("axes", []))
        metadata: dict[str, Any] = {"calibration_reader": "rsciio.tiff",
                                    **rosetta.instrument_metadata(rosetta.mapped_metadata(signal))}
        original = rosetta.flat_metadata(signal.get("original_metadata", {}))
        if original:
            metadata["original_metadata"] = original
        return (own if own is not None else rosetta.axis_pixel_size_nm(axes)), metadata

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
        return to_grayscale(image, sample_axis=self._sample_axis, where=where)

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
    so (OME, ImageJ ``unit`` with XResolution, ResolutionUnit centimetre / millimetre /
    micrometre, or a vendor's tags through ``rsciio.tiff``: see the module docstring),
    the frame rate from OME or ImageJ's ``finterval``; explicit arguments override the
    file, and the file's values are kept in ``info.metadata``. A vendor TIFF's
    exposure time is every frame's ``exposure_s``.

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
            file_pixel_size_nm, vendor = self._stack.calibration()
            metadata.update(vendor)
            self._exposure_s = vendor.get("exposure_s")
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
        per_frame = {"exposure_s": self._exposure_s} if self._exposure_s else {}
        for index in range(self._stack.frame_count):
            yield SourceFrame(self._stack.read(index), frame_time_s(index, fps), index,
                              metadata=per_frame)
        self._stack.check_complete()

    def close(self) -> None:
        """Close the file. Safe to call more than once."""
        self._stack.close()


def read_tiff_frame(path: Path) -> FrameFile:
    """One single-frame TIFF as a frame file, with its own calibration (folders, watch)."""
    stack = _TiffStack(existing_file(path))
    try:
        if stack.frame_count != 1:
            raise SourceError(
                f"Cannot read {path}: it holds {stack.frame_count} frames; a folder "
                "source expects one frame per file (open the file as a TIFF stack)."
            )
        image = stack.read(0)
        pixel_size_nm, metadata = stack.calibration()
        instrument = {k: metadata[k] for k in rosetta.FRAME_KEYS if k in metadata}
        return FrameFile(image, pixel_size_nm, instrument)
    finally:
        stack.close()


register(SourceKind("tiff", "TIFF stack", file_opener(TiffSource), suffixes=TIFF_SUFFIXES,
                    read_frame=read_tiff_frame))
