"""Microscope file formats: MRC here, everything RosettaSciIO reads in :mod:`.rosetta`.

MRC images, stacks and volumes are read with CCP-EM's ``mrcfile`` (a memory map, so a
long stack streams one frame at a time); the voxel size (stored in ångström) is the
pixel size. MRC has no time axis: the frame rate must come from ``fps``, and without
it ``t_s`` counts frames (``info.fps is None``). Gatan DM3/DM4, EMD and the other
formats of RosettaSciIO's plugin registry are :class:`~.rosetta.RsciioSource`
(re-exported here).

mrcfile is imported when a file is opened (the ``[formats]`` extra), so ``lithoscope
--help`` and sources that do not need it stay fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Final

from lithoscope.service.errors import MissingExtraError, SourceError, require
from lithoscope.service.sources.imagefile import FrameFile
from lithoscope.service.sources.registry import SourceKind, file_opener, register

from ._common import existing_file, one_line, parse_optional_positive
from ._stack import StackSource
from .rosetta import RsciioSource

__all__ = ["MRC_SUFFIXES", "MrcSource", "RsciioSource"]

MRC_SUFFIXES: Final = frozenset({".mrc", ".mrcs", ".st", ".ali"})
"""MRC images and stacks (CCP-EM mrcfile); ``.st`` / ``.ali`` are IMOD's tilt series."""

_ANGSTROM_NM: Final = 0.1


class MrcSource(StackSource):
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
            mrcfile = require("mrcfile", extra="formats", purpose="Reading MRC files")
        except MissingExtraError as exc:
            raise SourceError(f"Cannot read {resolved}: {exc}") from exc
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


def read_mrc_frame(path: Path) -> FrameFile:
    """The single frame of an MRC file, with its voxel size (folders, watched folders)."""
    with MrcSource(path) as source:
        if source.info.frame_count != 1:
            raise SourceError(
                f"Cannot read {path}: it holds {source.info.frame_count} frames; a folder "
                "source expects one frame per file (open the file by itself)."
            )
        return FrameFile(next(iter(source)).image, source.info.pixel_size_nm)


register(SourceKind("mrc", "MRC file", file_opener(MrcSource), suffixes=MRC_SUFFIXES,
                    read_frame=read_mrc_frame))
