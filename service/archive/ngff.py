"""OME-Zarr (NGFF 0.5) metadata for a session's frames, so viewers open it at scale.

NGFF viewers (napari with napari-ome-zarr, ome-zarr-py, Fiji's MoBIE/N5 reader,
neuroglancer) look for ``attributes["ome"]["multiscales"]`` on a zarr v3 group: a list
of axes with types and units, and for each resolution level an array path and the
scale from array index to physical coordinates. A session archive has one level, the
``frames`` array, so the archive's root group is an NGFF image with a time axis and
two space axes, and its tables are children NGFF readers ignore.

Units are UDUNITS-2 names, as the specification requires (``nanometer``,
``second``). An axis whose scale the session does not know gets scale 1 and no
unit: pixels and frame numbers, rather than a made-up physical size.

References
----------
J. Moore et al., "OME-Zarr: a cloud-optimized bioimaging file format with
international community support", Histochem. Cell Biol. 160 (2023) 223-251;
https://ngff.openmicroscopy.org/0.5/ (multiscales, axes, coordinateTransformations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["NGFF_VERSION", "frames_ngff_metadata"]

NGFF_VERSION = "0.5"


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float64 (the wire refuses them; old archives)
        return None
    return number if math.isfinite(number) and number > 0 else None


def frames_ngff_metadata(session: Mapping[str, Any], *, path: str = "frames") -> dict[str, Any]:
    """The value of the archive group's ``attributes["ome"]``.

    Parameters
    ----------
    session : mapping
        Session metadata with ``pixel_size_nm``, ``fps`` and ``session_id`` (each may
        be missing or ``None``).
    path : str
        The frames array, relative to the group.

    Returns
    -------
    dict
        ``{"version": "0.5", "multiscales": [...]}`` with axes ``t, y, x``.
    """
    pixel_size_nm = _positive(session.get("pixel_size_nm"))
    fps = _positive(session.get("fps"))
    time_axis: dict[str, Any] = {"name": "t", "type": "time"}
    space: list[dict[str, Any]] = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if fps is not None:
        time_axis["unit"] = "second"
    if pixel_size_nm is not None:
        for axis in space:
            axis["unit"] = "nanometer"
    scale = [1.0 / fps if fps else 1.0, pixel_size_nm or 1.0, pixel_size_nm or 1.0]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": str(session.get("session_id") or "frames"),
            "axes": [time_axis, *space],
            "datasets": [{
                "path": path,
                "coordinateTransformations": [{"type": "scale", "scale": scale}],
            }],
        }],
    }
