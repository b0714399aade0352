"""lithoscope export: tables to CSV / Parquet, frames to TIFF and to an annotated movie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lithoscope.replay.readers import TiffSource, VideoSource
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.errors import ArchiveError, ConfigError
from lithoscope.service.offline.export import export_archive
from lithoscope.service.schema import TABLES

from support.archives import SMALL_SIM, record_sim_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("export") / "sim.zarr")


@pytest.mark.parametrize("to", ["csv", "parquet"])
def test_tables(archive: Path, tmp_path: Path, to: str) -> None:
    written = export_archive(archive, to, tmp_path / "out")
    assert [p.name for p in written] == [f"{name}.{to}" for name in
                                         (*TABLES, "trajectories")]
    read = pd.read_csv if to == "csv" else pd.read_parquet
    reader = ArchiveReader(archive)
    cluster = read(tmp_path / "out" / f"cluster.{to}")
    np.testing.assert_array_equal(cluster["area_px"], reader.table("cluster")["area_px"])
    events = read(tmp_path / "out" / f"events.{to}")
    assert list(events["kind"]) == [e["kind"] for e in reader.events()]


def test_tiff_round_trips_through_the_tiff_reader_at_scale(archive: Path, tmp_path: Path) -> None:
    (path,) = export_archive(archive, "tiff", tmp_path / "frames.tif")
    reader = ArchiveReader(archive)
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm == pytest.approx(SMALL_SIM.pixel_size_nm)
        assert source.info.fps == pytest.approx(SMALL_SIM.fps)
        frames = [frame.image for frame in source]
    assert len(frames) == reader.frame_count
    assert all(np.array_equal(frames[i], reader.frame(i)) for i in range(len(frames)))


@pytest.mark.parametrize("to", ["mp4", "avi"])
def test_movie_has_overlay_and_alert_banners(archive: Path, tmp_path: Path, to: str) -> None:
    (path,) = export_archive(archive, to, tmp_path / f"talk.{to}", banner_s=2.0)
    reader = ArchiveReader(archive)
    contact = next(e for e in reader.events() if e["kind"] == "contact_made")["frame"]
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == reader.frame_count
    assert frames[0].shape == (*SMALL_SIM.shape, 3)

    def yellow(frame: np.ndarray) -> int:  # the banner's colour: blue low, green and red high
        b, g, r = (frame[..., c].astype(int) for c in range(3))
        return int(((g > 180) & (r > 180) & (b < 100)).sum())

    def green(frame: np.ndarray) -> int:  # particle outlines
        b, g, r = (frame[..., c].astype(int) for c in range(3))
        return int(((g > 180) & (r < 100) & (b < 100)).sum())

    assert yellow(frames[contact]) > 20
    assert yellow(frames[contact - 2]) < yellow(frames[contact]) / 4
    assert green(frames[0]) > 20
    # Still a recognisable movie of the session.
    with VideoSource(path) as source:
        assert source.info.frame_count == reader.frame_count


def test_bad_requests(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="one of csv, parquet, tiff, mp4, avi"):
        export_archive(archive, "gif")
    export_archive(archive, "tiff", tmp_path / "a.tif")
    with pytest.raises(ArchiveError, match="already exists"):
        export_archive(archive, "tiff", tmp_path / "a.tif")
    with pytest.raises(ArchiveError, match="not a lithoscope archive"):
        export_archive(tmp_path, "csv")


def test_every_table_is_exported_with_its_header_even_when_empty(archive: Path,
                                                                  tmp_path: Path) -> None:
    export_archive(archive, "csv", tmp_path / "out")
    for name, table in TABLES.items():
        frame = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        assert list(frame.columns) == [column.name for column in table.columns], name
    trajectories = pd.read_csv(tmp_path / "out" / "trajectories.csv")
    assert list(trajectories.columns[:6]) == ["frame", "particle", "y", "x", "mass", "size"]


def test_ome_tiff_opens_at_scale_with_plane_times(archive: Path, tmp_path: Path) -> None:
    import tifffile

    written: list[int] = []
    (path,) = export_archive(archive, "ome-tiff", tmp_path / "frames.ome.tif",
                             progress=written.append)
    reader = ArchiveReader(archive)
    assert sum(written) == reader.frame_count
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "TYX"
        ome = tif.ome_metadata
        stack = tif.asarray()
    assert f'PhysicalSizeX="{SMALL_SIM.pixel_size_nm}"' in ome
    assert 'PhysicalSizeXUnit="nm"' in ome
    assert np.array_equal(stack[3], reader.frame(3))
    with TiffSource(path) as source:  # lithoscope's own reader: OME calibration
        assert source.info.pixel_size_nm == pytest.approx(SMALL_SIM.pixel_size_nm)
        assert source.info.fps == pytest.approx(SMALL_SIM.fps)


def test_hspy_opens_in_rosettasciio_with_axes_and_metadata(archive: Path,
                                                           tmp_path: Path) -> None:
    from rsciio.hspy import file_reader

    (path,) = export_archive(archive, "hspy", tmp_path / "frames.hspy")
    reader = ArchiveReader(archive)
    (signal,) = file_reader(str(path))
    assert signal["data"].shape == (reader.frame_count, *SMALL_SIM.shape)
    assert np.array_equal(signal["data"][5], reader.frame(5))
    time, y, x = signal["axes"]
    assert (time["navigate"], y["navigate"], x["navigate"]) == (True, False, False)
    assert time["scale"] == pytest.approx(1 / SMALL_SIM.fps)
    assert x["units"] == "nm"
    assert x["scale"] == pytest.approx(SMALL_SIM.pixel_size_nm)
    assert signal["original_metadata"]["lithoscope"]["session_id"] == reader.meta["session_id"]
