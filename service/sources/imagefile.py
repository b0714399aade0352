"""One frame per file: the colour policy, the acquisition order and the fallback reader.

A folder of frame files is read by two sources, the folder replay
(:mod:`lithoscope.replay.folder`) and the live ``watch:`` folder (:mod:`.watch`); both
apply the rules here, so a file that one accepts the other accepts too:

* **Colour**: a frame whose first three samples are equal (grayscale saved as RGB,
  which many export tools do) is reduced to one sample, bit-identically; an alpha
  sample is ignored; real colour is refused, because averaging channels would invent
  intensities the detector never measured (:func:`to_grayscale`).
* **Order**: natural name order (``frame_2`` before ``frame_10``) of the path
  relative to the folder, so that a GMS In-Situ recording's
  ``Hour_00/Minute_01/Second_07/...`` tree comes out in acquisition order
  (:func:`natural_key`, :func:`frame_files`).

The replay package registers a reader for each frame-file suffix it knows (TIFF with
its calibration, PNG / JPEG / BMP, DM3 / DM4, MRC); :func:`read_image_file` is the
fallback the service uses alone (TIFF with tifffile, others with OpenCV).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from ..errors import SourceError

__all__ = [
    "IMAGE_SUFFIXES",
    "TEMPORARY_SUFFIXES",
    "FrameFile",
    "FrameFileReader",
    "decode_image",
    "frame_files",
    "natural_key",
    "read_image_file",
    "to_grayscale",
]

IMAGE_SUFFIXES: Final = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"})
"""Plain image files (compared case-insensitively)."""
TEMPORARY_SUFFIXES: Final = (".tmp", ".temp", ".part", ".partial", ".crdownload", "~")
"""Names a writer uses while a file is incomplete: never a frame."""
_DIGITS: Final = re.compile(r"(\d+)")


@dataclass(frozen=True, slots=True)
class FrameFile:
    """One frame file as read: the 2-D frame and what the file says about it."""

    image: np.ndarray
    pixel_size_nm: float | None = None
    """The file's own pixel size (nm), when it records one."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Per-frame values the file records, unit in the name (``exposure_s`` ...)."""


FrameFileReader = Callable[[Path], FrameFile]
"""Reads one complete frame file; raises `SourceError` on a torn or foreign file."""


def to_grayscale(image: np.ndarray, *, sample_axis: int | None, where: str) -> np.ndarray:
    """Return the 2-D C-contiguous grayscale view of ``image``.

    ``sample_axis`` is the axis holding colour samples, or ``None`` for a plain 2-D
    frame. Frames whose first three samples are identical are reduced to one sample
    (bit-identical pixels); a fourth sample (alpha), or the second of two (gray +
    alpha), is ignored. Real colour raises `SourceError` naming ``where``.
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


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key ordering ``frame_2`` before ``frame_10`` (and ``Second_9/`` before
    ``Second_10/``).

    The name is split into runs of digits and non-digits; digit runs compare as
    integers, text runs case-insensitively. The full name breaks ties, so
    ``frame_01`` and ``frame_1`` still have a fixed order.
    """
    parts = _DIGITS.split(name.casefold())
    # re.split with one capturing group alternates text (even) and digits (odd), so
    # the same positions always hold the same type and tuples compare safely.
    key = tuple(int(part) if position % 2 else part for position, part in enumerate(parts))
    return key, name


def _is_frame_name(name: str, suffixes: Iterable[str]) -> bool:
    return (not name.startswith((".", "~"))
            and not name.casefold().endswith(TEMPORARY_SUFFIXES)
            and os.path.splitext(name)[1].casefold() in suffixes)


def frame_files(folder: Path, suffixes: frozenset[str]) -> list[str]:
    """Frame files under ``folder`` as ``/``-separated relative paths, in acquisition order.

    Subfolders are descended into (a GMS In-Situ recording nests its frames as
    ``Hour_HH/Minute_MM/Second_SS/...``); hidden files and folders, temporary names
    and other suffixes are skipped. The order is natural order of the relative path,
    which for such a tree is the order of acquisition.

    Raises
    ------
    SourceError
        The folder (or a subfolder) cannot be listed.
    """
    found: list[str] = []
    pending = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir():
                        pending.append((Path(entry.path), f"{prefix}{entry.name}/"))
                    elif _is_frame_name(entry.name, suffixes) and entry.is_file():
                        found.append(prefix + entry.name)
        except OSError as exc:
            raise SourceError(f"Cannot read {directory}: {exc.strerror or exc}.") from exc
    return sorted(found, key=natural_key)


def decode_image(path: Path) -> np.ndarray:
    """A PNG / JPEG / BMP file with OpenCV, at its own depth (16-bit PNGs stay 16-bit)."""
    import cv2

    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SourceError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    # cv2.imdecode from a buffer rather than cv2.imread: no locale trouble with
    # non-ASCII paths, and an empty file is reported here instead of as a cv2.error.
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    if image is None:
        raise SourceError(f"Cannot read {path}: not a readable image (truncated or corrupt).")
    return np.asarray(image)


def read_image_file(path: Path) -> FrameFile:
    """The service's own frame-file reader (TIFF with tifffile, others with OpenCV),
    used when the replay package's readers are not loaded. Same colour policy."""
    if path.suffix.casefold() in {".tif", ".tiff"}:
        import tifffile

        try:
            image = np.asarray(tifffile.imread(path))
        except Exception as exc:
            raise SourceError(f"Cannot read {path}: not a readable TIFF file ({exc}).") from exc
        sample_axis = 2 if image.ndim == 3 and image.shape[-1] in (2, 3, 4) else None
    else:
        image = decode_image(path)
        sample_axis = 2 if image.ndim == 3 else None
    if image.ndim - (sample_axis is not None) != 2:
        raise SourceError(f"Cannot read {path}: {image.ndim}-D image; expected one 2-D frame.")
    return FrameFile(to_grayscale(image, sample_axis=sample_axis, where=str(path)))
