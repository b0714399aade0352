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
from lithoscope.service.schema import TABLES

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


def test_every_table_is_a_dataframe_with_its_columns(archive: Path) -> None:
    session = lithoscope.service.open_archive(archive)
    for name, table in TABLES.items():
        frame = session.table(name)
        assert isinstance(frame, pd.DataFrame)
        assert list(frame.columns) == [column.name for column in table.columns], name
    with pytest.raises(KeyError, match="Unknown table"):
        session.table("nope")


def test_xarray_opens_the_whole_archive_as_a_datatree(archive: Path) -> None:
    # The archive is not consolidated (it grows while recorded and re-analysed), so
    # the plain call says so and reads it group by group; consolidated=False is silent.
    with pytest.warns(RuntimeWarning, match="non-consolidated metadata"):
        assert "cluster" in xr.open_datatree(archive, engine="zarr").children
    tree = xr.open_datatree(archive, engine="zarr", consolidated=False)
    reader = ArchiveReader(archive)
    assert tree["frames"].dims == ("t", "y", "x")
    assert tree["frames"].shape == (reader.frame_count, *SMALL_SIM.shape)
    for name in ("frame_table", "cluster", "particles", "events"):
        assert name in tree.children, name
        assert set(tree[name].dataset.data_vars) == set(TABLES[name].names()), name
    np.testing.assert_array_equal(tree["cluster"]["area_px"].values[:len(
        reader.table("cluster")["area_px"])], reader.table("cluster")["area_px"])
    # One table by itself, as xarray users first try it.
    cluster = xr.open_zarr(archive, group="cluster", consolidated=False)
    assert cluster["area_px"].dims == ("row",)


# trackpy 0.7's own DataFrame.rename(inplace=True), deprecated by pandas 3.1: not our call.
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.rename")
def test_trajectories_are_what_trackpy_s_motion_tools_take(archive: Path) -> None:
    session = lithoscope.service.open_archive(archive)
    trajectories = session.trajectories()
    assert list(trajectories.columns[:6]) == ["frame", "particle", "y", "x", "mass", "size"]
    assert len(trajectories) > 0
    assert (trajectories["particle"] >= 0).all()
    trackpy = pytest.importorskip("trackpy")
    drift = trackpy.compute_drift(trajectories)
    assert {"y", "x"} <= set(drift.columns)
    msd = trackpy.emsd(trajectories, mpp=SMALL_SIM.pixel_size_nm / 1000, fps=SMALL_SIM.fps,
                       max_lagtime=5)
    assert len(msd) > 0
    assert np.all(np.isfinite(msd.to_numpy()))
    assert len(trackpy.filter_stubs(trajectories, threshold=2)) > 0
