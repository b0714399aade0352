"""Session archives as xarray objects: frames lazily through dask, tables as DataFrames.

``open_archive(path)`` is the door from an archive to the PyData stack: the frames as
a dask-backed `xarray.DataArray` whose coordinates are the experiment time in seconds
and the position in nanometres (so ``frames.sel(t=slice(20, 40))`` or
``frames.mean("t")`` need no bookkeeping, and nothing is read until computed), and the
measurement tables as pandas DataFrames (or an `xarray.Dataset` indexed by frame for
the cluster table).

The crash rules of `ArchiveReader` apply: only trusted rows and frames are returned,
and the fill rows of a growing ``frames`` array are cut off. xarray, dask and pandas
are imported when an archive is opened (the ``[scale]`` extra), not when lithoscope is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..archive import ArchiveReader
from ..errors import ArchiveError

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = ["REANALYSIS_GROUP", "ArchiveData", "open_archive", "reanalysis_runs"]

REANALYSIS_GROUP = "reanalysis"
"""Group holding one subgroup per re-analysis run (``lithoscope reanalyze``)."""
_MEASUREMENT_TABLES = ("cluster", "particles", "events")


@dataclass(frozen=True)
class ArchiveData:
    """One session as xarray / pandas objects (see `open_archive`)."""

    frames: xr.DataArray
    """``(t, y, x)`` lazy frames; coords ``t`` (s), ``y`` / ``x`` (nm, or pixels when the
    pixel size is unknown), and ``index`` (the source's frame number) along ``t``."""
    frame_table: pd.DataFrame
    cluster: pd.DataFrame
    particles: pd.DataFrame
    events: pd.DataFrame
    meta: Mapping[str, Any]
    """The archive's session metadata (``attributes["lithoscope"]``)."""
    reanalysis: str | None = None
    """The re-analysis run the measurement tables come from (``None``: the live ones)."""
    runs: tuple[str, ...] = field(default=())
    """Every re-analysis run in the archive, oldest first."""

    def cluster_dataset(self) -> xr.Dataset:
        """The cluster table as a Dataset on a ``t`` dimension, with ``frame`` beside it."""
        table = self.cluster.set_index("t_s")
        table.index.name = "t"
        dataset: xr.Dataset = table.to_xarray()
        dataset["t"].attrs["units"] = "s"
        return dataset


def reanalysis_runs(path: str | Path) -> list[str]:
    """Names of the re-analysis runs stored in an archive, oldest first."""
    group = zarr.open_group(zarr.storage.LocalStore(Path(path), read_only=True), mode="r")
    runs = group.get(REANALYSIS_GROUP)
    if not isinstance(runs, zarr.Group):
        return []
    return sorted(name for name, _ in runs.groups())


def _read_table(group: zarr.Group) -> dict[str, np.ndarray]:
    return {name: np.asarray(array[:]) for name, array in group.arrays()}


def _frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({name: values for name, values in columns.items()})


def open_archive(path: str | Path, *, reanalysis: str | None = None) -> ArchiveData:
    """Open a session archive as xarray / pandas objects, reading no pixels yet.

    Parameters
    ----------
    path : str or Path
        A ``.zarr`` session archive (complete, or cut short by a crash).
    reanalysis : str, optional
        Take the measurement tables from this re-analysis run (a name from
        `reanalysis_runs`, or ``"latest"``) instead of the live analysis.

    Returns
    -------
    ArchiveData
        ``frames`` (lazy DataArray), ``frame_table``, ``cluster``, ``particles`` and
        ``events`` (DataFrames), the session metadata and the re-analysis runs.

    Raises
    ------
    ArchiveError
        Not an archive, or no such re-analysis run.

    Examples
    --------
    >>> session = open_archive("sessions/run3.zarr")          # doctest: +SKIP
    >>> session.frames.sel(t=slice(20, 40)).mean("t").plot()  # doctest: +SKIP
    >>> session.cluster.plot(x="t_s", y="relative_area")      # doctest: +SKIP
    """
    import dask.array as da
    import xarray as xr

    reader = ArchiveReader(path)
    count = reader.frame_count
    frame_table = reader.table("frame_table")
    frame_table = {name: values[:count] for name, values in frame_table.items()}
    pixel_size_nm = reader.pixel_size_nm
    if reader.group.get("frames") is not None:
        stored = reader.frames
        lazy = da.from_array(stored, chunks=stored.chunks)[:count]
        shape = tuple(int(size) for size in stored.shape[1:])
        dtype = stored.dtype
    else:  # a session that ended before its first frame
        lazy = da.zeros((0, 0, 0), dtype=np.uint8)
        shape, dtype = (0, 0), np.dtype(np.uint8)
    scale = pixel_size_nm if pixel_size_nm is not None else 1.0
    space_units = "nm" if pixel_size_nm is not None else "pixel"
    t_s = np.asarray(frame_table.get("t_s", np.arange(count, dtype=np.float64)))
    index = np.asarray(frame_table.get("index", np.arange(count, dtype=np.int64)))
    frames = xr.DataArray(
        lazy,
        dims=("t", "y", "x"),
        coords={
            "t": ("t", t_s, {"units": "s", "long_name": "experiment time"}),
            "index": ("t", index, {"long_name": "frame number in the source"}),
            "y": ("y", np.arange(shape[0]) * scale, {"units": space_units}),
            "x": ("x", np.arange(shape[1]) * scale, {"units": space_units}),
        },
        name="frames",
        attrs={"units": "counts", "pixel_size_nm": pixel_size_nm,
               "session_id": reader.meta.get("session_id"), "dtype": str(dtype)},
    )
    runs = tuple(reanalysis_runs(reader.path))
    if reanalysis is None:
        tables = {name: reader.table(name) for name in _MEASUREMENT_TABLES}
    else:
        if not runs:
            raise ArchiveError(f"{reader.path} has no re-analysis runs.")
        run = runs[-1] if reanalysis == "latest" else reanalysis
        if run not in runs:
            raise ArchiveError(f"{reader.path} has no re-analysis run {run!r}; it has "
                               f"{', '.join(runs)}.")
        reanalysis = run
        group = reader.group[f"{REANALYSIS_GROUP}/{run}"]
        assert isinstance(group, zarr.Group)
        tables = {name: _read_table(group[name]) if name in group else {}  # type: ignore[arg-type]
                  for name in _MEASUREMENT_TABLES}
    return ArchiveData(
        frames=frames,
        frame_table=_frame(frame_table),
        cluster=_frame(tables["cluster"]),
        particles=_frame(tables["particles"]),
        events=_frame(tables["events"]),
        meta=reader.meta,
        reanalysis=reanalysis,
        runs=runs,
    )
