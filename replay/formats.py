"""Sources for microscope file formats: Gatan DM3/DM4, EMD (Velox and Berkeley), MRC.

The formats are read with the libraries the microscopy community maintains for them:
RosettaSciIO (HyperSpy's I/O, ``rsciio``) for DigitalMicrograph and EMD files, and
``mrcfile`` (CCP-EM) for MRC. Both open the pixel data lazily (a dask array over the
file for RosettaSciIO, a memory map for mrcfile), so a long in-situ stack streams one
frame at a time like a TIFF stack does.

A file holds either one image (a single 2-D frame) or a stack whose first axis is time
(an in-situ movie) or, for MRC, sections of a series; the frames are yielded in file
order. Calibrations are carried into ``SourceInfo``: the pixel size from the signal
axes' scale and unit (DM, EMD) or the voxel size (MRC, stored in ångström), the frame
rate from a time axis's scale, and the acquisition date and time, when the file records
them, into ``info.metadata["acquired_at"]`` (ISO 8601). Frames without a time axis
count frames (``t_s == index``, ``info.fps is None``), as the other readers do.

The heavy libraries are imported when a file is opened, so ``lithoscope --help`` and
sources that do not need them stay fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.registry import SourceKind, file_opener, register

from ._common import (
    TIME_UNIT_S,
    choose,
    decode_unicode_escapes,
    existing_file,
    frame_time_s,
    length_unit_nm,
    one_line,
    parse_optional_positive,
)

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = [
    "DM_SUFFIXES",
    "EMD_SUFFIXES",
    "MRC_SUFFIXES",
    "MrcSource",
    "RsciioSource",
]

DM_SUFFIXES: Final = frozenset({".dm3", ".dm4"})
"""Gatan DigitalMicrograph images and stacks, read with RosettaSciIO."""
EMD_SUFFIXES: Final = frozenset({".emd"})
"""Electron Microscopy Datasets (Thermo Fisher Velox and Berkeley/NCEM), RosettaSciIO."""
MRC_SUFFIXES: Final = frozenset({".mrc", ".mrcs", ".st", ".ali"})
"""MRC images and stacks (CCP-EM mrcfile); ``.st`` / ``.ali`` are IMOD's tilt series."""

_ANGSTROM_NM: Final = 0.1
_ENERGY_UNITS: Final = frozenset({"ev", "kev", "mev"})


def _time_scale_s(unit: object) -> float | None:
    if not isinstance(unit, str):
        return None
    return TIME_UNIT_S.get(decode_unicode_escapes(unit).strip().casefold())


class _StackSource(SourceBase):
    """A lazily indexed (T, Y, X) or (Y, X) array as a `Source`.

    Subclasses open the file and hand over the array (anything indexable along its
    first axis whose items convert with ``np.asarray``: a dask array, a memory map)
    with what the file says about its calibration.
    """

    def _setup(
        self,
        *,
        path: Path,
        kind: str,
        data: Any,
        fps: float | None,
        pixel_size_nm: float | None,
        file_fps: float | None,
        file_pixel_size_nm: float | None,
        metadata: dict[str, Any],
        release: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._release = release
        self._closed = False
        shape = tuple(int(size) for size in data.shape)
        if len(shape) == 2:
            self._data = data[np.newaxis]
            self._count = 1
        elif len(shape) == 3:
            self._data = data
            self._count = shape[0]
        else:
            raise SourceError(
                f"Cannot read {path}: the file holds a {len(shape)}-D dataset (shape {shape}); "
                "expected one 2-D image or a stack of them."
            )
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "uif":
            raise SourceError(
                f"Cannot read {path}: {dtype} pixels; expected grayscale integer or float frames."
            )
        self._dtype = dtype.newbyteorder("=")
        metadata["file_name"] = path.name
        self._info = SourceInfo(
            name=f"{kind}:{path}",
            kind=kind,
            shape=(shape[-2], shape[-1]),
            dtype=self._dtype.name,
            frame_count=self._count,
            fps=choose(fps, file_fps, "fps", metadata),
            pixel_size_nm=choose(pixel_size_nm, file_pixel_size_nm, "pixel_size_nm", metadata),
            live=False,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _read(self, index: int) -> np.ndarray:
        try:
            # A copy, always: a memory-mapped frame must outlive the closed file.
            return np.array(self._data[index], dtype=self._dtype, order="C", copy=True)
        except Exception as exc:
            # A truncated stack surfaces as whatever the library's decoder raises.
            raise SourceError(
                f"Cannot read {self._path} (frame {index}): {one_line(exc)}."
            ) from exc

    def _frames(self) -> Generator[SourceFrame, None, None]:
        fps = self._info.fps
        for index in range(self._count):
            if self._closed:
                raise SourceError(f"Cannot read {self._path}: the source is closed.")
            yield SourceFrame(self._read(index), frame_time_s(index, fps), index)

    def close(self) -> None:
        """Release the file. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._data = None
        if self._release is not None:
            self._release()


# --------------------------------------------------------------------------- RosettaSciIO


def _pick_image_signal(path: Path, signals: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The image (or image stack) among what RosettaSciIO found in the file.

    Velox files hold several signals (images from each detector, spectra); the first
    one with two signal axes is the camera image. Spectra and line profiles are not
    frames.
    """
    for signal in signals:
        axes = signal.get("axes", [])
        if not (2 <= len(axes) <= 3 and np.ndim(signal["data"]) == len(axes)):
            continue
        # A spectrum image is 3-D too: its last axis is energy, its first two navigate.
        if any(axis.get("navigate") for axis in axes[-2:]):
            continue
        if str(axes[-1].get("units", "")).strip().casefold() in _ENERGY_UNITS:
            continue
        return signal
    found = ", ".join(str(tuple(np.shape(s["data"]))) for s in signals) or "nothing"
    raise SourceError(
        f"Cannot read {path}: no 2-D image or image stack in the file (found {found})."
    )


def _axis_pixel_size_nm(axes: Sequence[Mapping[str, Any]]) -> float | None:
    """Pixel width from the last (x) signal axis, when its unit is a length."""
    x_axis = axes[-1]
    unit_nm = length_unit_nm(x_axis.get("units"))
    scale = x_axis.get("scale")
    if unit_nm is None or not isinstance(scale, int | float) or not scale > 0:
        return None
    return float(scale) * unit_nm


def _axis_fps(axes: Sequence[Mapping[str, Any]]) -> float | None:
    """Frame rate from the stack axis, when its unit is a time (in-situ stacks)."""
    if len(axes) != 3:
        return None
    unit_s = _time_scale_s(axes[0].get("units"))
    scale = axes[0].get("scale")
    if unit_s is None or not isinstance(scale, int | float) or not scale > 0:
        return None
    interval_s = float(scale) * unit_s
    return 1.0 / interval_s if math.isfinite(1.0 / interval_s) else None


def _acquired_at(metadata: Mapping[str, Any]) -> str | None:
    """HyperSpy's ``General.date`` / ``General.time`` as one ISO 8601 string."""
    general = metadata.get("General", {})
    date, clock = general.get("date"), general.get("time")
    if not date:
        return None
    text = f"{date}T{clock}" if clock else str(date)
    zone = general.get("time_zone")
    return f"{text} {zone}" if zone else text


class RsciioSource(_StackSource):
    """Frames of a Gatan DM3/DM4 or EMD file, read with RosettaSciIO.

    Single images give one frame; in-situ stacks (a navigation axis of time or of
    image index, then two signal axes) give one frame per slice, read lazily. The
    pixel size comes from the x signal axis when its unit is a length (nm, µm, Å ...),
    the frame rate from the stack axis when its unit is a time, and the acquisition
    time from the file's date and time tags (``info.metadata["acquired_at"]``).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.dm3``, ``.dm4`` or ``.emd`` file.
    fps, pixel_size_nm : float, optional
        Override the file's calibration (or supply what it lacks).

    Raises
    ------
    SourceError
        Missing, empty or unreadable file, or a file holding no image (spectra only).
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.

    Notes
    -----
    RosettaSciIO has no DigitalMicrograph or Velox writer; see docs/formats.md for what
    was tested with which real files.
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
        resolved = existing_file(path)
        suffix = resolved.suffix.casefold()
        kind = "dm" if suffix in DM_SUFFIXES else "emd"
        try:
            if kind == "dm":
                from rsciio.digitalmicrograph import file_reader
            else:
                from rsciio.emd import file_reader
            signals = file_reader(str(resolved), lazy=True)
        except ImportError as exc:
            raise SourceError(
                f"Cannot read {resolved}: RosettaSciIO is not installed "
                f"(pip install rosettasciio): {exc}."
            ) from exc
        except Exception as exc:
            # rsciio raises plain exceptions (ValueError, KeyError, OSError from h5py,
            # struct.error ...) for files that are not what the suffix says.
            raise SourceError(
                f"Cannot read {resolved}: not a readable {suffix[1:].upper()} file "
                f"({one_line(exc)})."
            ) from exc
        signal = _pick_image_signal(resolved, signals)
        axes = list(signal.get("axes", []))
        general_metadata = signal.get("metadata", {})
        metadata: dict[str, Any] = {
            "reader": "rosettasciio",
            "axes": [
                {key: axis.get(key) for key in ("name", "units", "scale", "size")}
                for axis in axes
            ],
        }
        title = general_metadata.get("General", {}).get("title")
        if title:
            metadata["title"] = str(title)
        acquired_at = _acquired_at(general_metadata)
        if acquired_at:
            metadata["acquired_at"] = acquired_at
        self._setup(
            path=resolved,
            kind=kind,
            data=signal["data"],
            fps=fps,
            pixel_size_nm=pixel_size_nm,
            file_fps=_axis_fps(axes),
            file_pixel_size_nm=_axis_pixel_size_nm(axes),
            metadata=metadata,
        )


# --------------------------------------------------------------------------- MRC


class MrcSource(_StackSource):
    """Frames of an MRC image, image stack or volume, memory-mapped with mrcfile.

    A 3-D file gives one frame per section (image stacks and volumes alike: MRC has
    no time axis, so the frame rate must come from ``fps``). The pixel size is the
    header's voxel size (ångström) converted to nm, when set (mrcfile reports 0 for
    an uncalibrated file).

    Parameters
    ----------
    path : str or os.PathLike
        An ``.mrc`` / ``.mrcs`` / ``.st`` / ``.ali`` file.
    fps, pixel_size_nm : float, optional
        Frame rate (the format has none) and a pixel size overriding the header's.

    Raises
    ------
    SourceError
        Missing, empty or invalid MRC file (mrcfile's strict validation, so a
        truncated file is refused at open), or a 4-D file.
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.
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
        resolved = existing_file(path)
        try:
            import mrcfile
        except ImportError as exc:
            raise SourceError(
                f"Cannot read {resolved}: mrcfile is not installed (pip install mrcfile)."
            ) from exc
        try:
            mrc = mrcfile.mmap(str(resolved), mode="r")
        except Exception as exc:
            raise SourceError(
                f"Cannot read {resolved}: not a readable MRC file ({one_line(exc)})."
            ) from exc
        try:
            voxel_x = float(mrc.voxel_size.x)
            file_pixel_size_nm = (
                voxel_x * _ANGSTROM_NM if math.isfinite(voxel_x) and voxel_x > 0 else None
            )
            metadata: dict[str, Any] = {
                "reader": "mrcfile",
                "mrc_image_stack": bool(mrc.is_image_stack()),
                "mrc_mode": int(mrc.header.mode),
            }
            self._setup(
                path=resolved,
                kind="mrc",
                data=mrc.data,
                fps=fps,
                pixel_size_nm=pixel_size_nm,
                file_fps=None,
                file_pixel_size_nm=file_pixel_size_nm,
                metadata=metadata,
                release=mrc.close,
            )
        except BaseException:
            mrc.close()
            raise


def _read_one_frame(cls: Callable[[Path], SourceBase]) -> Callable[[Path], np.ndarray]:
    """The first frame of a file: how a watched folder reads a DM or MRC frame file."""

    def read(path: Path) -> np.ndarray:
        with cls(path) as source:
            return next(iter(source)).image

    return read


register(SourceKind("dm", "DM3/DM4", file_opener(RsciioSource), suffixes=DM_SUFFIXES,
                    read_frame=_read_one_frame(RsciioSource)))
register(SourceKind("emd", "EMD", file_opener(RsciioSource), suffixes=EMD_SUFFIXES))
register(SourceKind("mrc", "MRC file", file_opener(MrcSource), suffixes=MRC_SUFFIXES,
                    read_frame=_read_one_frame(MrcSource)))
