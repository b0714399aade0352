"""Write small real media files with the libraries' own writers.

Readers are tested against files produced by tifffile and OpenCV rather than
hand-built bytes, so the tests exercise the layouts those tools really write
(tifffile's contiguous shaped stacks, ImageJ hyperstacks, FFV1 in AVI ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from numpy.typing import DTypeLike

__all__ = [
    "make_frames",
    "smooth_frames",
    "write_image_folder",
    "write_tiff_stack",
    "write_video",
]


def make_frames(
    count: int,
    shape: tuple[int, int] = (32, 48),
    dtype: DTypeLike = np.uint8,
    *,
    seed: int = 0,
) -> list[np.ndarray]:
    """Distinct noise frames spanning the dtype's range (uint16 values exceed 255).

    Noise makes any off-by-one frame, transposition or byte-order slip visible as a
    mismatch; the frame index is stamped in the corner so frames are never equal.
    """
    rng = np.random.default_rng(seed)
    info = np.iinfo(np.dtype(dtype))
    frames = []
    for index in range(count):
        frame = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        frame[0, 0] = index
        frames.append(frame)
    return frames


def smooth_frames(count: int, shape: tuple[int, int] = (32, 48)) -> list[np.ndarray]:
    """Smooth uint8 frames (a moving blob on a gradient) that lossy codecs keep close."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    frames = []
    for index in range(count):
        center_col = shape[1] * (0.3 + 0.4 * index / max(count - 1, 1))
        blob = 120.0 * np.exp(
            -((rows - shape[0] / 2) ** 2 + (cols - center_col) ** 2) / (2 * 5.0**2)
        )
        frames.append(np.clip(40.0 + cols + blob, 0, 255).astype(np.uint8))
    return frames


def write_tiff_stack(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    imagej: bool = False,
    pixel_size_nm: float | None = None,
    unit: str = "nm",
    frame_interval: float | None = None,
    time_unit: str | None = None,
    axes: str | None = None,
    shaped: bool = True,
    **options: Any,
) -> Path:
    """Write ``frames`` as one multi-page TIFF with :func:`tifffile.imwrite`.

    With ``imagej=True`` the file is an ImageJ hyperstack (``axes`` defaults to
    ``TYX``) whose description carries ``unit``, ``finterval`` and ``tunit``, and the
    pixel size goes into XResolution / YResolution in ``unit`` (``pixel_size_nm`` is
    then the value *in that unit*, as ImageJ stores it). Without ImageJ, a pixel
    size is written as resolution per centimetre. ``shaped=False`` leaves out
    tifffile's JSON shape description: a plain multi-page TIFF as other software
    writes it. ``options`` pass through (``compression``, ``photometric``,
    ``byteorder`` ...).
    """
    data = np.stack(list(frames))
    metadata: dict[str, Any] | None = {} if shaped else None
    if imagej:
        metadata = {"axes": axes or ("TYX" if data.ndim == 3 else "TYXS")}
        if pixel_size_nm is not None:
            metadata["unit"] = unit
        if frame_interval is not None:
            metadata["finterval"] = frame_interval
        if time_unit is not None:
            metadata["tunit"] = time_unit
        if pixel_size_nm is not None:
            options["resolution"] = (1.0 / pixel_size_nm, 1.0 / pixel_size_nm)
    elif pixel_size_nm is not None:
        per_cm = 1e7 / pixel_size_nm
        options["resolution"] = (per_cm, per_cm)
        options["resolutionunit"] = "CENTIMETER"
    if not imagej:
        # Without this, tifffile stores 3 or 4 frames as one RGB(A) page.
        options.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, imagej=imagej, metadata=metadata, **options)
    return path


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    fourcc: str = "FFV1",
    fps: float = 10.0,
    color: bool = False,
) -> Path:
    """Write uint8 grayscale ``frames`` with :class:`cv2.VideoWriter`.

    ``fourcc="FFV1"`` in an AVI is lossless (frames read back bit-identically);
    ``"mp4v"`` is lossy. ``color=True`` writes 3-channel frames: the gray value in
    every channel for 2-D input, or the given BGR frames as they are.
    """
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height), isColor=color
    )
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    try:
        for frame in frames:
            if color and frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            writer.write(frame)
    finally:
        writer.release()
    return path


def write_image_folder(
    folder: Path,
    frames: Sequence[np.ndarray],
    *,
    suffix: str = ".png",
    stem: str = "frame_",
    start: int = 1,
) -> list[Path]:
    """Write one file per frame, ``frame_1.png`` ... ``frame_12.png`` (no zero padding).

    Unpadded numbers make a plain string sort wrong (``frame_10`` before ``frame_2``),
    which is what a natural-sort reader must get right. TIFFs go through tifffile,
    everything else through :func:`cv2.imwrite`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, frame in enumerate(frames, start=start):
        path = folder / f"{stem}{number}{suffix}"
        if suffix.lower() in {".tif", ".tiff"}:
            tifffile.imwrite(path, frame)
        elif not cv2.imwrite(str(path), frame):
            raise RuntimeError(f"OpenCV cannot write {path}")
        paths.append(path)
    return paths
