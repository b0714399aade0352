"""An archive's frames in the formats other microscopy tools open at scale.

* **OME-TIFF** (``export --to ome-tiff``), for Fiji / Bio-Formats, QuPath, napari and
  anything reading OME-XML: the frames as a ``TYX`` series with ``PhysicalSizeX/Y``
  in nm, ``TimeIncrement`` in s and each plane's ``DeltaT`` (the archived ``t_s``),
  written with tifffile one frame at a time (BigTIFF when it would exceed 4 GiB).
* **HSPY** (``export --to hspy``), for HyperSpy: HyperSpy's HDF5 format, written by
  RosettaSciIO's own writer from a dask array over the archive (so a session larger
  than memory exports as well), with a time navigation axis (s) and two calibrated
  signal axes (nm), the session's metadata as ``original_metadata`` and the beam
  energy, magnification and exposure in HyperSpy's metadata tree when the session
  recorded them.
* **ZSPY** (``export --to zspy``), HyperSpy's zarr flavour of the same layout (a
  ``.zspy`` folder: ``Experiments/<title>/data`` with ``axis-0..2``, ``metadata`` and
  ``original_metadata`` groups), for sessions too big for one HDF5 file or kept on
  object storage. RosettaSciIO's ``zspy.file_writer`` opens its store with zarr 2's
  ``NestedDirectoryStore``, which zarr 3 has no more; so the group is opened here with
  zarr-python 3 as ``zarr_format=2`` and RosettaSciIO's own ``ZspyWriter`` fills it
  (one call adapted: a numeric list in the metadata). The result is a plain zarr v2
  hierarchy with consolidated metadata that ``rsciio.zspy.file_reader`` reads under
  zarr 2 and zarr 3 alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..archive import ArchiveReader
from ..errors import require

__all__ = ["export_hspy", "export_ome_tiff", "export_zspy"]

_CLASSIC_TIFF_LIMIT_BYTES = 4 * 2**30 - 2**20


def _frames(reader: ArchiveReader, progress: Callable[[int], None] | None
            ) -> Iterator[np.ndarray]:
    for position in range(reader.frame_count):
        yield reader.frame(position)
        if progress is not None:
            progress(1)


def _times_s(reader: ArchiveReader) -> np.ndarray:
    t_s = reader.table("frame_table").get("t_s", np.zeros(0))[: reader.frame_count]
    return np.asarray(t_s, dtype=np.float64)


def _interval_s(reader: ArchiveReader, t_s: np.ndarray) -> float | None:
    fps = reader.meta.get("fps")
    if isinstance(fps, int | float) and not isinstance(fps, bool) and fps > 0:
        return 1.0 / float(fps)
    steps = np.diff(t_s)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    return float(np.median(steps)) if steps.size else None


def export_ome_tiff(reader: ArchiveReader, target: Path, *,
                    progress: Callable[[int], None] | None = None) -> None:
    """Write the archive's frames as one OME-TIFF series (see the module docstring).

    ``progress(n)`` is called with the number of frames written since its last call.
    """
    import tifffile

    shape = (reader.frame_count, *reader.frames.shape[1:])
    dtype = np.dtype(reader.frames.dtype)
    t_s = _times_s(reader)
    metadata: dict[str, Any] = {"axes": "TYX", "Name": str(reader.meta.get("session_id", ""))}
    pixel_size_nm = reader.pixel_size_nm
    if pixel_size_nm is not None:
        metadata.update(PhysicalSizeX=pixel_size_nm, PhysicalSizeXUnit="nm",
                        PhysicalSizeY=pixel_size_nm, PhysicalSizeYUnit="nm")
    interval = _interval_s(reader, t_s)
    if interval is not None:
        metadata.update(TimeIncrement=interval, TimeIncrementUnit="s")
    if len(t_s) == shape[0] and np.all(np.isfinite(t_s)):
        metadata["Plane"] = {"DeltaT": [float(t) for t in t_s],
                             "DeltaTUnit": ["s"] * shape[0]}
    bigtiff = math.prod(shape) * dtype.itemsize >= _CLASSIC_TIFF_LIMIT_BYTES
    tifffile.imwrite(target, _frames(reader, progress), shape=shape, dtype=dtype, ome=True,
                     bigtiff=bigtiff, photometric="minisblack", metadata=metadata)


def _hyperspy_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """HyperSpy's metadata tree from what the session recorded (lithoscope names)."""
    source = meta.get("metadata", {}) if isinstance(meta.get("metadata"), Mapping) else {}
    tem: dict[str, Any] = {}
    if isinstance(source.get("beam_energy_kev"), int | float):
        tem["beam_energy"] = float(source["beam_energy_kev"])
    if isinstance(source.get("magnification"), int | float):
        tem["magnification"] = float(source["magnification"])
    if isinstance(source.get("exposure_s"), int | float):
        tem["Detector"] = {"Camera": {"exposure": float(source["exposure_s"])}}
    if isinstance(source.get("camera"), str):
        tem.setdefault("Detector", {}).setdefault("Camera", {})["name"] = source["camera"]
    tree: dict[str, Any] = {
        "General": {"title": str(meta.get("session_id", "lithoscope session")),
                    "original_filename": str(meta.get("source", ""))},
        "Signal": {"signal_type": "", "quantity": "Intensity (counts)"},
    }
    if tem:
        tree["Acquisition_instrument"] = {"TEM": tem}
    return tree


def _counted(data: Any, progress: Callable[[int], None] | None) -> Any:
    """``data`` (a dask array over the frames) that reports each block's frames to
    ``progress`` as the writer computes it, so a long export shows it moving."""
    if progress is None:
        return data

    def count(block: np.ndarray) -> np.ndarray:
        progress(int(block.shape[0]))
        return block

    # meta given: dask would otherwise call ``count`` on an empty block to learn it.
    return data.map_blocks(count, dtype=data.dtype,
                           meta=np.empty((0,) * data.ndim, dtype=data.dtype))


def _hyperspy_signal(reader: ArchiveReader, purpose: str,
                     progress: Callable[[int], None] | None) -> dict[str, Any]:
    """The archive's frames as RosettaSciIO's signal dictionary: a dask array over the
    archive (nothing is read before the writer asks), a time navigation axis and two
    calibrated signal axes, HyperSpy's metadata tree and the session as
    ``original_metadata``."""
    da = require("dask.array", extra="scale", package="dask", purpose=purpose)
    count = reader.frame_count
    stored = reader.frames
    data = _counted(da.from_array(stored, chunks=stored.chunks)[:count], progress)
    t_s = _times_s(reader)
    interval = _interval_s(reader, t_s)
    pixel_size_nm = reader.pixel_size_nm
    space_units = "nm" if pixel_size_nm is not None else ""
    axes = [
        {"name": "time", "size": count, "scale": interval or 1.0, "offset": 0.0,
         "units": "s" if interval else "", "navigate": True},
        *({"name": name, "size": int(size), "scale": pixel_size_nm or 1.0, "offset": 0.0,
           "units": space_units, "navigate": False}
          for name, size in zip("yx", stored.shape[1:], strict=True)),
    ]
    session = json.loads(json.dumps(dict(reader.meta), default=str))
    return {
        "data": data, "axes": axes, "metadata": _hyperspy_metadata(reader.meta),
        "original_metadata": {"lithoscope": session},
        "tmp_parameters": {}, "attributes": {"_lazy": True}, "learning_results": {},
        "models": {}, "package_info": {"package": "lithoscope", "package_version": ""},
    }


def export_hspy(reader: ArchiveReader, target: Path, *,
                progress: Callable[[int], None] | None = None) -> None:
    """Write the archive's frames as a HyperSpy ``.hspy`` file (see the module docstring).

    ``progress(n)`` is called with the number of frames written since its last call.

    Raises
    ------
    MissingExtraError
        RosettaSciIO (the ``[formats]`` extra) or dask (``[scale]``) is not installed.
    """
    purpose = "Exporting to HyperSpy's .hspy"
    hspy = require("rsciio.hspy", extra="formats", package="rosettasciio", purpose=purpose)
    signal = _hyperspy_signal(reader, purpose, progress)
    hspy.file_writer(str(target), signal, show_progressbar=False)


_ZSPY_COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 1}
"""RosettaSciIO's own default for ZSPY (numcodecs' Blosc, Zstandard level 1, byte
shuffle), as a zarr v2 codec configuration."""


def export_zspy(reader: ArchiveReader, target: Path, *,
                progress: Callable[[int], None] | None = None) -> None:
    """Write the archive's frames as a HyperSpy ``.zspy`` folder (see the module docstring).

    ``progress(n)`` is called with the number of frames written since its last call.

    Raises
    ------
    MissingExtraError
        RosettaSciIO (the ``[formats]`` extra) or dask (``[scale]``) is not installed.
    """
    purpose = "Exporting to HyperSpy's .zspy"
    require("rsciio.zspy", extra="formats", package="rosettasciio", purpose=purpose)
    import warnings

    import zarr
    from rsciio._hierarchical import version
    from rsciio.zspy._api import ZspyWriter
    from zarr.errors import ZarrDeprecationWarning

    class Writer(ZspyWriter):  # type: ignore[misc]
        """RosettaSciIO's ZSPY writer on a zarr-python 3 group: a numeric list in the
        metadata is created with its shape (zarr 3's ``create_dataset`` no longer takes
        it from ``data=``, as zarr 2's did); everything else is RosettaSciIO's."""

        def parse_structure(self, key: str, group: Any, value: Any, _type: str,
                            **kwds: Any) -> None:
            try:
                values = np.array(value)
            except ValueError:
                values = None
            if values is not None and values.ndim == 1 and values.dtype.kind in "biuf":
                if _type + key in group:
                    del group[_type + key]
                group.create_dataset(_type + key, shape=values.shape, dtype=values.dtype,
                                     **kwds)
                group[_type + key][:] = values
                return
            super().parse_structure(key, group, value, _type, **kwds)

    signal = _hyperspy_signal(reader, purpose, progress)
    title = str(signal["metadata"]["General"]["title"]).replace("/", "-") or "__unnamed__"
    with warnings.catch_warnings():
        # RosettaSciIO calls zarr 2's names (create_dataset, require_dataset), which
        # zarr 3 keeps for zarr_format=2 groups and marks deprecated.
        warnings.simplefilter("ignore", category=ZarrDeprecationWarning)
        root = zarr.open_group(zarr.storage.LocalStore(target), mode="w-", zarr_format=2)
        root.attrs.update({"file_format": "ZSpy", "file_format_version": version})
        group = root.require_group("Experiments").require_group(title)
        Writer(root, signal, group, chunks=None, compressor=_ZSPY_COMPRESSOR,
               write_dataset=True, show_progressbar=False).write()
        zarr.consolidate_metadata(root.store)
