"""Readers for recorded movies: conformance, calibration metadata and bad input."""

from __future__ import annotations

import re
import sys
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from lithoscope.replay.archive_source import ArchiveSource
from lithoscope.replay.readers import FolderSource, TiffSource, VideoSource, open_source
from lithoscope.service.archive import ArchiveWriter
from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.sources import Source, SourceBase, SourceInfo

from support.media import (
    make_frames,
    smooth_frames,
    write_image_folder,
    write_tiff_stack,
    write_video,
)
from support.source_conformance import SourceConformance

SHAPE = (32, 48)
FRAMES_U8 = make_frames(6, SHAPE, np.uint8, seed=1)
FRAMES_U16 = make_frames(5, SHAPE, np.uint16, seed=2)


def read_images(source: Source) -> list[np.ndarray]:
    with source:
        return [frame.image for frame in source]


# ------------------------------------------------------------------ conformance


class TestTiffSourceUint8(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_tiff_stack(tmp_path / "stack.tif", FRAMES_U8)
        return lambda: TiffSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U8


class TestTiffSourceUint16ImageJ(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_tiff_stack(
            tmp_path / "stack.tif", FRAMES_U16, imagej=True, pixel_size_nm=0.5, frame_interval=0.1
        )
        return lambda: TiffSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16


class TestTiffSourceCompressedBigEndian(SourceConformance):
    """Page-by-page decoding (not contiguous) and byte swapping."""

    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_tiff_stack(
            tmp_path / "stack.tif", FRAMES_U16, compression="zlib", byteorder=">"
        )
        return lambda: TiffSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16


class TestVideoSourceLosslessAvi(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_video(tmp_path / "movie.avi", FRAMES_U8, fourcc="FFV1", fps=25.0)
        return lambda: VideoSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U8


class TestVideoSourceLossyMp4(SourceConformance):
    expected = smooth_frames(6, SHAPE)

    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_video(tmp_path / "movie.mp4", self.expected, fourcc="mp4v", fps=10.0)
        return lambda: VideoSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return self.expected

    def assert_frame_matches(self, actual: np.ndarray, expected: np.ndarray, index: int) -> None:
        # MPEG-4 part 2 is lossy: smooth frames come back close, not identical.
        assert actual.dtype == expected.dtype
        assert actual.shape == expected.shape
        difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
        assert difference.mean() < 3.0, f"frame {index}"
        assert difference.max() < 40, f"frame {index}"


class TestFolderSourcePng(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        write_image_folder(tmp_path / "frames", FRAMES_U16 + FRAMES_U16[:3], suffix=".png")
        return lambda: FolderSource(tmp_path / "frames")

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16 + FRAMES_U16[:3]


class TestFolderSourceTiff(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        write_image_folder(tmp_path / "frames", FRAMES_U8, suffix=".tif")
        return lambda: FolderSource(tmp_path / "frames", fps=5.0)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U8


# ------------------------------------------------------------------ TIFF metadata


def test_imagej_tiff_gives_pixel_size_and_fps(tmp_path: Path) -> None:
    path = write_tiff_stack(
        tmp_path / "run.tif", FRAMES_U8, imagej=True, pixel_size_nm=0.25, frame_interval=0.5
    )
    with TiffSource(path) as source:
        info = source.info
        times = [frame.t_s for frame in source]
    assert (info.name, info.kind, info.shape, info.dtype) == (
        f"tiff:{path}",
        "tiff",
        SHAPE,
        "uint8",
    )
    assert (info.frame_count, info.live) == (6, False)
    assert info.fps == pytest.approx(2.0)
    assert info.pixel_size_nm == pytest.approx(0.25)
    assert info.metadata["file_name"] == "run.tif"
    assert info.metadata["fps_origin"] == "file"
    assert info.metadata["pixel_size_nm_origin"] == "file"
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


@pytest.mark.parametrize(
    ("unit", "value", "pixel_size_nm"),
    [("micron", 0.002, 2.0), ("\\u00B5m", 0.002, 2.0), ("um", 0.1, 100.0), ("nm", 3.0, 3.0)],
)
def test_imagej_length_units(tmp_path: Path, unit: str, value: float, pixel_size_nm: float) -> None:
    path = write_tiff_stack(
        tmp_path / "run.tif", FRAMES_U8[:2], imagej=True, pixel_size_nm=value, unit=unit
    )
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm == pytest.approx(pixel_size_nm)


def test_imagej_time_unit_scales_the_frame_interval(tmp_path: Path) -> None:
    path = write_tiff_stack(
        tmp_path / "run.tif", FRAMES_U8[:2], imagej=True, frame_interval=40.0, time_unit="ms"
    )
    with TiffSource(path) as source:
        assert source.info.fps == pytest.approx(25.0)


def test_resolution_tags_in_centimetres_give_pixel_size(tmp_path: Path) -> None:
    path = write_tiff_stack(tmp_path / "run.tif", FRAMES_U8[:2], pixel_size_nm=1.5)
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm == pytest.approx(1.5)
        assert source.info.fps is None


def test_default_72_dpi_is_not_a_pixel_size(tmp_path: Path) -> None:
    path = write_tiff_stack(
        tmp_path / "run.tif", FRAMES_U8[:2], resolution=(72.0, 72.0), resolutionunit="INCH"
    )
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm is None


def test_arguments_override_the_file(tmp_path: Path) -> None:
    path = write_tiff_stack(
        tmp_path / "run.tif", FRAMES_U8[:3], imagej=True, pixel_size_nm=0.25, frame_interval=0.5
    )
    with TiffSource(path, fps=10, pixel_size_nm=0.4) as source:
        info = source.info
        times = [frame.t_s for frame in source]
    assert (info.fps, info.pixel_size_nm) == (10.0, 0.4)
    assert times == pytest.approx([0.0, 0.1, 0.2])
    assert info.metadata["fps_origin"] == "argument"
    assert info.metadata["file_fps"] == pytest.approx(2.0)
    assert info.metadata["file_pixel_size_nm"] == pytest.approx(0.25)


def test_unknown_fps_counts_frames(tmp_path: Path) -> None:
    path = write_tiff_stack(tmp_path / "run.tif", FRAMES_U8[:3])
    with TiffSource(path) as source:
        assert source.info.fps is None
        assert [frame.t_s for frame in source] == [0.0, 1.0, 2.0]


def test_imagej_hyperstack_with_singleton_axes(tmp_path: Path) -> None:
    data = np.stack(FRAMES_U16)[:, np.newaxis, np.newaxis]  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    images = read_images(TiffSource(path))
    assert all(np.array_equal(a, b) for a, b in zip(images, FRAMES_U16, strict=True))


def test_gray_saved_as_rgb_is_reduced_to_one_channel(tmp_path: Path) -> None:
    rgb = [np.repeat(frame[..., np.newaxis], 3, axis=2) for frame in FRAMES_U8[:3]]
    path = write_tiff_stack(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with TiffSource(path) as source:
        assert source.info.shape == SHAPE
        images = [frame.image for frame in source]
    for image, truth in zip(images, FRAMES_U8, strict=False):
        assert image.flags.c_contiguous
        np.testing.assert_array_equal(image, truth)


def test_colour_tiff_is_refused(tmp_path: Path) -> None:
    rgb = [np.stack([frame, frame[::-1], frame], axis=2) for frame in FRAMES_U8[:2]]
    path = write_tiff_stack(tmp_path / "colour.tif", rgb, photometric="rgb")
    with pytest.raises(SourceError, match=r"colour frame \(the RGB channels differ\)"):
        TiffSource(path)


def test_multichannel_hyperstack_is_refused(tmp_path: Path) -> None:
    data = np.stack(FRAMES_U8[:4]).reshape(2, 2, *SHAPE)
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(SourceError, match=r"the stack has 2 channels \(axes TCYX\)"):
        TiffSource(path)


# ------------------------------------------------------------------ video and folder


def test_video_fps_and_count_from_container(tmp_path: Path) -> None:
    path = write_video(tmp_path / "movie.avi", FRAMES_U8, fps=25.0)
    with VideoSource(path, pixel_size_nm=2.0) as source:
        info = source.info
        times = [frame.t_s for frame in source]
    assert (info.kind, info.shape, info.dtype, info.frame_count) == ("video", SHAPE, "uint8", 6)
    assert info.fps == pytest.approx(25.0)
    assert info.pixel_size_nm == 2.0
    assert info.metadata["codec"].upper() == "FFV1"
    assert times == pytest.approx([index / 25.0 for index in range(6)])


def test_video_with_equal_colour_channels_is_exact(tmp_path: Path) -> None:
    path = write_video(tmp_path / "movie.avi", FRAMES_U8, color=True)
    images = read_images(VideoSource(path))
    assert all(np.array_equal(a, b) for a, b in zip(images, FRAMES_U8, strict=True))


def test_colour_video_is_converted_to_gray(tmp_path: Path) -> None:
    bgr = [np.stack([frame, frame[::-1], 255 - frame], axis=2) for frame in FRAMES_U8[:2]]
    path = write_video(tmp_path / "colour.avi", bgr, color=True)
    images = read_images(VideoSource(path))
    expected = [cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) for frame in bgr]
    assert all(np.array_equal(a, b) for a, b in zip(images, expected, strict=True))


def test_folder_uses_natural_order(tmp_path: Path) -> None:
    frames = make_frames(12, SHAPE, np.uint8, seed=3)
    write_image_folder(tmp_path / "run", frames, suffix=".png")
    (tmp_path / "run" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "run" / "notes.txt").write_text("ignored")
    (tmp_path / "run" / "sub.png").mkdir()
    with FolderSource(tmp_path / "run") as source:
        info = source.info
        read = list(source)
    assert [frame.metadata["file_name"] for frame in read] == [
        f"frame_{number}.png" for number in range(1, 13)
    ]
    assert all(np.array_equal(f.image, t) for f, t in zip(read, frames, strict=True))
    assert (info.kind, info.frame_count, info.fps) == ("folder", 12, None)
    assert [frame.t_s for frame in read] == [float(index) for index in range(12)]


def test_folder_of_calibrated_tiffs_gives_pixel_size(tmp_path: Path) -> None:
    for number, frame in enumerate(FRAMES_U8[:2], start=1):
        write_tiff_stack(tmp_path / f"f{number}.tif", [frame], pixel_size_nm=0.8)
    with FolderSource(tmp_path) as source:
        assert source.info.pixel_size_nm == pytest.approx(0.8)


# ------------------------------------------------------------------ open_source


@pytest.mark.parametrize(
    ("name", "writer", "source_type"),
    [
        ("a.tif", lambda p: write_tiff_stack(p, FRAMES_U8[:2]), TiffSource),
        ("A.TIFF", lambda p: write_tiff_stack(p, FRAMES_U8[:2]), TiffSource),
        ("a.avi", lambda p: write_video(p, FRAMES_U8[:2]), VideoSource),
        ("a.mkv", lambda p: write_video(p, FRAMES_U8[:2]), VideoSource),
        ("dir", lambda p: write_image_folder(p, FRAMES_U8[:2]), FolderSource),
    ],
)
def test_open_source_dispatches_by_path(
    tmp_path: Path, name: str, writer: Callable[[Path], object], source_type: type
) -> None:
    writer(tmp_path / name)
    with open_source(str(tmp_path / name), fps=4.0) as source:
        assert type(source) is source_type
        assert source.info.fps == 4.0


class _Recorder(SourceBase):
    """Stands in for modules written elsewhere; records how it was built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self._info = SourceInfo(name="fake:", kind="fake")


def test_open_source_reads_zarr_directories_as_archives(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "run.zarr", session={"session_id": "s"})
    writer.append_frame(FRAMES_U8[0], seq=0, index=0, t_s=0.0, acquired_at=0.0)
    writer.close()
    with open_source(tmp_path / "run.zarr", pixel_size_nm=0.3) as source:
        assert isinstance(source, ArchiveSource)
        assert source.info.pixel_size_nm == 0.3
        assert np.array_equal(next(iter(source)).image, FRAMES_U8[0])


def test_open_source_builds_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeConfig:
        def __init__(self, **fields: Any) -> None:
            self.fields = fields

        @classmethod
        def from_dict(cls, data: dict[str, Any]) -> FakeConfig:
            return cls(**data)

    module = types.ModuleType("lithoscope.service.sources.sim")
    module.SimulatedSource = _Recorder  # type: ignore[attr-defined]
    module.SimConfig = FakeConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lithoscope.service.sources.sim", module)

    plain = open_source("sim")
    assert isinstance(plain, _Recorder)
    assert plain.args[0].fields == {}
    assert plain.kwargs == {}
    with_scenario = open_source("sim:control", duration_s=2.0)
    assert isinstance(with_scenario, _Recorder)
    assert with_scenario.args[0].fields == {"duration_s": 2.0}
    assert with_scenario.kwargs == {"scenario": "control"}


# ------------------------------------------------------------------ bad input


def _truncated_copy(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tif"
    message = f"Cannot read {missing}: no such file or directory."
    with pytest.raises(SourceError, match=f"^{re.escape(message)}$"):
        open_source(str(missing))
    with pytest.raises(SourceError, match=f"^{re.escape(message)}$"):
        TiffSource(missing)


@pytest.mark.parametrize("name", ["empty.tif", "empty.avi", "empty.mp4"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).touch()
    message = f"Cannot read {tmp_path / name}: the file is empty (0 bytes)."
    with pytest.raises(SourceError, match=f"^{re.escape(message)}$"):
        open_source(str(tmp_path / name))


def test_not_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "fake.tif").write_bytes(b"hello world")
    with pytest.raises(SourceError, match=r"fake\.tif: not a TIFF file \(it starts with b'hell'\)"):
        open_source(str(tmp_path / "fake.tif"))


def test_tiff_cut_inside_its_header(tmp_path: Path) -> None:
    path = write_tiff_stack(tmp_path / "run.tif", FRAMES_U8)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        SourceError, match=r"cut\.tif: not a readable TIFF file \(truncated or corrupt"
    ):
        TiffSource(cut)


@pytest.mark.parametrize(
    ("options", "frame_count", "good_frames", "message"),
    [
        pytest.param({}, 6, 3, "the file ends before frame 3 of 6", id="shaped-contiguous"),
        pytest.param({"imagej": True}, 6, 3, "the file ends before frame 3 of 6", id="imagej"),
        pytest.param(
            {"compression": "zlib"}, 6, 3, r"\(frame 3\): the page is damaged", id="compressed"
        ),
        # No metadata and tifffile puts the IFDs after the pixels: the count is unknown
        # and only the first page is reachable, so the damage shows at the end.
        pytest.param({"shaped": False}, None, 1, "the file is damaged after frame 0", id="plain"),
    ],
)
def test_truncated_tiff_yields_good_frames_then_raises(
    tmp_path: Path,
    options: dict[str, Any],
    frame_count: int | None,
    good_frames: int,
    message: str,
) -> None:
    frames = make_frames(6, SHAPE, np.uint8, seed=4)
    path = write_tiff_stack(tmp_path / "run.tif", frames, **options)
    cut = _truncated_copy(path, 0.6)
    read: list[np.ndarray] = []
    with pytest.raises(SourceError, match=rf"^Cannot read .*cut_run\.tif.*{message}"):  # noqa: PT012
        with TiffSource(cut) as source:
            assert source.info.frame_count == frame_count
            read.extend(frame.image for frame in source)
    assert len(read) == good_frames
    assert all(np.array_equal(a, b) for a, b in zip(read, frames, strict=False))


def test_truncated_video_yields_good_frames_then_raises(tmp_path: Path) -> None:
    path = write_video(tmp_path / "movie.avi", FRAMES_U8)
    cut = _truncated_copy(path, 0.7)
    read: list[np.ndarray] = []
    with pytest.raises(SourceError, match=r"the movie ends after \d of 6 frames"):  # noqa: PT012
        with VideoSource(cut) as source:
            read.extend(frame.image for frame in source)
    assert 0 < len(read) < 6
    assert all(np.array_equal(a, b) for a, b in zip(read, FRAMES_U8, strict=False))


def test_undecodable_video(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError, match=r"junk\.mp4: not a movie OpenCV can decode"):
        open_source(str(tmp_path / "junk.mp4"))


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.xyz"
    path.write_text("?")
    message = (
        f"Unknown source type '.xyz' for {path}; expected one of: DM3/DM4, "
        "RosettaSciIO file (.emd, .ser, .hspy, ...), MRC file, "
        "TIFF stack, AVI/MP4 movie, lithoscope archive, image folder, 'watch:DIR', "
        "'imagezmq://ENDPOINT' or 'sim'."
    )
    with pytest.raises(SourceError, match=f"^{re.escape(message)}$"):
        open_source(str(path))


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match=r"the folder holds no image files \(.*\.bmp, "):
        open_source(str(tmp_path))


def test_folder_with_mismatching_shape_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, FRAMES_U8[:3])
    cv2.imwrite(str(tmp_path / "frame_4.png"), FRAMES_U8[3][:16, :16])
    read: list[np.ndarray] = []
    message = f"Cannot read {tmp_path / 'frame_4.png'}: 16x16 uint8 differs from frame_1.png's"
    with pytest.raises(SourceError, match=re.escape(message)), FolderSource(tmp_path) as source:
        read.extend(frame.image for frame in source)
    assert len(read) == 3


def test_folder_with_mismatching_dtype_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, [FRAMES_U8[0]])
    cv2.imwrite(str(tmp_path / "frame_2.png"), FRAMES_U16[0])
    with pytest.raises(SourceError, match=r"frame_2\.png: 48x32 uint16 differs"):
        read_images(FolderSource(tmp_path))


def test_folder_with_colour_image_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, [FRAMES_U8[0]])
    colour = np.stack([FRAMES_U8[1], FRAMES_U8[2], FRAMES_U8[3]], axis=2)
    cv2.imwrite(str(tmp_path / "frame_2.png"), colour)
    with pytest.raises(SourceError, match=r"frame_2\.png: colour frame"):
        read_images(FolderSource(tmp_path))


def test_folder_with_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, [FRAMES_U8[0]])
    (tmp_path / "frame_2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SourceError, match=r"frame_2\.png: not a readable image"):
        read_images(FolderSource(tmp_path))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "25", True])
def test_invalid_fps_is_a_config_error(tmp_path: Path, bad: object) -> None:
    path = write_tiff_stack(tmp_path / "run.tif", FRAMES_U8[:1])
    with pytest.raises(ConfigError, match=r"^Expected fps to be a positive"):
        TiffSource(path, fps=bad)  # type: ignore[arg-type]


def test_sim_options_with_a_path_are_refused(tmp_path: Path) -> None:
    path = write_tiff_stack(tmp_path / "run.tif", FRAMES_U8[:1])
    with pytest.raises(ConfigError, match="simulator options only with a 'sim' source"):
        open_source(str(path), duration_s=3.0)


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="contiguous"),
        pytest.param({"imagej": True}, id="imagej"),
        pytest.param({"compression": "zlib"}, id="per-page"),
    ],
)
def test_tiff_streams_one_frame_at_a_time(tmp_path: Path, options: dict[str, Any]) -> None:
    frame = make_frames(1, (128, 128), np.uint16, seed=5)[0]
    path = write_tiff_stack(tmp_path / "long.tif", [frame] * 100, **options)  # 3.2 MB
    tracemalloc.start()
    try:
        with TiffSource(path) as source:
            count = sum(1 for _ in source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100
    assert peak < 10 * frame.nbytes  # a whole-stack read would need 100 frames


# ------------------------------------------------------------------ OME-TIFF


def write_ome_tiff(path: Path, frames: list[np.ndarray], **metadata: Any) -> Path:
    """An OME-TIFF as tifffile writes it (Bio-Formats and most microscope exporters too)."""
    tifffile.imwrite(path, np.stack(frames), ome=True, photometric="minisblack",
                     metadata={"axes": "TYX", **metadata})
    return path


class TestTiffSourceOme(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_ome_tiff(tmp_path / "stack.ome.tif", FRAMES_U16, PhysicalSizeX=0.42,
                              PhysicalSizeXUnit="nm", TimeIncrement=250, TimeIncrementUnit="ms")
        return lambda: TiffSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16


@pytest.mark.parametrize(("metadata", "pixel_size_nm", "fps"), [
    ({"PhysicalSizeX": 0.42, "PhysicalSizeXUnit": "nm", "TimeIncrement": 0.5,
      "TimeIncrementUnit": "s"}, 0.42, 2.0),
    ({"PhysicalSizeX": 0.002}, 2.0, None),  # OME's default unit: micrometre
    ({"PhysicalSizeX": 3, "PhysicalSizeXUnit": "Å", "TimeIncrement": 100,
      "TimeIncrementUnit": "ms"}, 0.3, 10.0),
    ({}, None, None),
])
def test_ome_tiff_physical_size_and_time_increment(
    tmp_path: Path, metadata: dict[str, Any], pixel_size_nm: float | None, fps: float | None
) -> None:
    path = write_ome_tiff(tmp_path / "a.ome.tif", FRAMES_U16[:3], **metadata)
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm == (pytest.approx(pixel_size_nm) if pixel_size_nm
                                             else None)
        assert source.info.fps == (pytest.approx(fps) if fps else None)
        assert source.info.metadata["tiff_series_kind"] == "ome"
