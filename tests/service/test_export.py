"""lithoscope export: tables to CSV / Parquet, frames to TIFF and to an annotated movie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lithoscope.replay.readers import TiffSource, VideoSource
from lithoscope.service.analysis import put_text
from lithoscope.service.archive import ArchiveReader, read_labels
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
    done: list[int] = []
    (path,) = export_archive(archive, to, tmp_path / f"talk.{to}", banner_s=2.0,
                             progress=done.append)
    reader = ArchiveReader(archive)
    assert done == [1] * reader.frame_count  # a frame at a time, for the progress bar
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

    def coloured(frame: np.ndarray) -> np.ndarray:  # outlines: saturated track colours
        wide = frame.astype(int)
        return np.asarray((wide.max(axis=2) - wide.min(axis=2)) > 90)

    assert yellow(frames[contact]) > 20
    assert yellow(frames[contact - 2]) < yellow(frames[contact]) / 4
    # The outlines are the archive's labels: coloured pixels lie on their boundaries.
    labels = read_labels(reader.group, 0, shape=SMALL_SIM.shape)
    assert labels is not None
    edge = _boundary(labels["particles"])
    on_frame = coloured(frames[0])
    on_frame[:40] = False  # the clock's corner
    assert (on_frame & edge).sum() > 20
    drawn = (labels["particles"] > 0) | labels["needle"]  # outlines and the needle's tint
    near = cv2.dilate(drawn.astype(np.uint8), np.ones((5, 5), np.uint8))
    assert (on_frame & (near == 0)).sum() <= 0.05 * on_frame.sum()  # nothing elsewhere
    # Still a recognisable movie of the session.
    with VideoSource(path) as source:
        assert source.info.frame_count == reader.frame_count


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels within two pixels of a change of label (where an outline is drawn)."""
    import cv2

    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return cv2.dilate(edge.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def test_mp4_is_h264_in_yuv420p(archive: Path, tmp_path: Path) -> None:
    import imageio_ffmpeg

    (path,) = export_archive(archive, "mp4", tmp_path / "talk.mp4")
    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    frames.close()
    assert meta["codec"].startswith("h264")
    assert meta["pix_fmt"].startswith("yuv420p")


TEXT = "t =   12.34 s  frame 567  area x1.234  CONTACT MADE"


@pytest.mark.parametrize("scale", [0.45, 0.8, 1.6])
def test_burned_in_text_is_legible(scale: float) -> None:
    """Measured on the rendered pixels: the glyphs are as wide as OpenCV says a line of
    that text is, and a dark rim separates every glyph from the background (the two-pass
    outline of OpenCV 5, drawn at another thickness, drifts off the glyphs)."""
    import cv2

    # A green background: white ink over its dark rim is grey, never this colour.
    green = np.array([60, 160, 90], np.uint8)
    canvas = np.empty((40 + round(60 * scale), 40 + round(1200 * scale), 3), np.uint8)
    canvas[:] = green
    put_text(canvas, TEXT, (20, 20 + round(40 * scale)), scale, (255, 255, 255))
    light = canvas.min(axis=2) > 160
    columns = np.flatnonzero(light.any(axis=0))
    thickness = max(1, round(scale * 2))
    expected = cv2.getTextSize(TEXT, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
    assert abs((columns[-1] - columns[0] + 1) - expected) <= 0.05 * expected + 2
    ring = (cv2.dilate(light.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~light
    background = np.all(np.abs(canvas.astype(int) - green) <= 6, axis=2)
    assert (ring & background).sum() <= 0.01 * ring.sum()


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


def test_zspy_opens_in_rosettasciio_with_axes_and_metadata(archive: Path,
                                                           tmp_path: Path) -> None:
    """HyperSpy's zarr flavour, written with zarr-python 3 as a zarr v2 hierarchy: read
    back by RosettaSciIO's own reader, eagerly and lazily, with the frames, axes and
    the whole session metadata (nested settings, lists, None) as they were."""
    import json

    import zarr
    from rsciio.zspy import file_reader

    done: list[int] = []
    (path,) = export_archive(archive, "zspy", tmp_path / "frames.zspy",
                             progress=done.append)
    reader = ArchiveReader(archive)
    assert sum(done) == reader.frame_count  # frame by frame, as the writer computes them
    assert len(done) == reader.frame_count
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 2
    assert (path / ".zmetadata").is_file()  # consolidated, as RosettaSciIO writes it
    (signal,) = file_reader(str(path))
    assert signal["data"].shape == (reader.frame_count, *SMALL_SIM.shape)
    np.testing.assert_array_equal(signal["data"], reader.frames[: reader.frame_count])
    time, y, x = signal["axes"]
    assert [a["name"] for a in (time, y, x)] == ["time", "y", "x"]
    assert (time["navigate"], y["navigate"], x["navigate"]) == (True, False, False)
    assert time["scale"] == pytest.approx(1 / SMALL_SIM.fps)
    assert time["units"] == "s"
    assert (x["units"], y["units"]) == ("nm", "nm")
    assert x["scale"] == pytest.approx(SMALL_SIM.pixel_size_nm)
    assert signal["metadata"]["General"]["title"] == reader.meta["session_id"]
    recorded = json.loads(json.dumps(dict(reader.meta), default=str))
    assert signal["original_metadata"]["lithoscope"] == recorded
    assert any(isinstance(v, list) for v in recorded.values())  # lists did go through
    (lazy,) = file_reader(str(path), lazy=True)
    np.testing.assert_array_equal(lazy["data"][5].compute(), reader.frame(5))
    # ... and lithoscope replays it like any RosettaSciIO file, at scale.
    import lithoscope.replay  # noqa: F401  (registers the readers)
    from lithoscope.service.sources import registry

    with registry.open_source(path) as source:
        assert source.info.metadata["rsciio_plugin"] == "ZSPY"
        assert source.info.pixel_size_nm == pytest.approx(SMALL_SIM.pixel_size_nm)
        replayed = [frame.image for frame in source]
    np.testing.assert_array_equal(np.stack(replayed), reader.frames[: reader.frame_count])
    with pytest.raises(ArchiveError, match="already exists"):
        export_archive(archive, "zspy", path)


def test_hspy_reports_progress_frame_by_frame(archive: Path, tmp_path: Path) -> None:
    done: list[int] = []
    export_archive(archive, "hspy", tmp_path / "frames.hspy", progress=done.append)
    assert done == [1] * ArchiveReader(archive).frame_count
