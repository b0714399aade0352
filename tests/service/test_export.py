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

from support.archives import SMALL_SIM, record_sim_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("export") / "sim.zarr")


@pytest.mark.parametrize("to", ["csv", "parquet"])
def test_tables(archive: Path, tmp_path: Path, to: str) -> None:
    written = export_archive(archive, to, tmp_path / "out")
    assert [p.name for p in written] == [f"{name}.{to}" for name in
                                         ("frame_table", "cluster", "particles", "events")]
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
