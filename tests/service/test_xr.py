"""open_archive: a recorded session as xarray / pandas objects."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import lithoscope.service
from lithoscope.service.archive import ArchiveReader, ArchiveWriter
from lithoscope.service.errors import ArchiveError

from support.archives import SMALL_SIM, record_sim_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("xr") / "sim.zarr")


def test_frames_are_lazy_with_time_and_nanometre_coordinates(archive: Path) -> None:
    session = lithoscope.service.open_archive(archive)
    frames = session.frames
    reader = ArchiveReader(archive)
    assert isinstance(frames, xr.DataArray)
    assert isinstance(frames.data, da.Array)  # nothing read yet
    assert frames.dims == ("t", "y", "x")
    assert frames.shape == (reader.frame_count, *SMALL_SIM.shape)
    assert frames["t"].attrs["units"] == "s"
    np.testing.assert_allclose(frames["t"].values, reader.table("frame_table")["t_s"])
    assert frames["x"].attrs["units"] == "nm"
    assert float(frames["x"][1] - frames["x"][0]) == pytest.approx(SMALL_SIM.pixel_size_nm)
    assert np.array_equal(frames.isel(t=7).values, reader.frame(7))
    window = frames.sel(t=slice(10.0, 19.0))
    assert window.sizes["t"] == 10
    assert np.array_equal(window.mean("t").values, np.stack(
        [reader.frame(i) for i in range(10, 20)]).mean(axis=0))


def test_tables_are_dataframes(archive: Path) -> None:
    session = lithoscope.service.open_archive(archive)
    reader = ArchiveReader(archive)
    assert isinstance(session.cluster, pd.DataFrame)
    assert len(session.cluster) == len(reader.table("cluster")["frame"])
    assert {"t_s", "area_px", "relative_area", "needle_contact"} <= set(session.cluster.columns)
    assert len(session.particles) == len(reader.table("particles")["frame"])
    assert list(session.events["kind"]) == [e["kind"] for e in reader.events()]
    dataset = session.cluster_dataset()
    assert isinstance(dataset, xr.Dataset)
    assert dataset["area_px"].dims == ("t",)


def test_an_archive_cut_short_has_no_fill_frames(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "a.zarr", session={"session_id": "x", "source": "t"})
    for i in range(3):
        writer.append_frame(np.full((4, 6), i + 1, np.uint8), seq=i + 1, index=i, t_s=i * 1.0,
                            acquired_at=0.0)
    writer.flush()  # never closed: frames has 64 rows, 3 of them frames
    session = lithoscope.service.open_archive(tmp_path / "a.zarr")
    assert session.frames.sizes["t"] == 3
    assert session.frames["x"].attrs["units"] == "pixel"  # no pixel size recorded
    assert list(session.frames.max(("y", "x")).values) == [1, 2, 3]


def test_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a lithoscope archive"):
        lithoscope.service.open_archive(tmp_path)


def test_unknown_reanalysis_run(archive: Path) -> None:
    with pytest.raises(ArchiveError, match="no re-analysis runs"):
        lithoscope.service.open_archive(archive, reanalysis="latest")
