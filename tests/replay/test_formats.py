"""Microscope formats: EMD (RosettaSciIO) and MRC (mrcfile), written with their own writers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from rsciio.emd import file_writer as write_emd

from lithoscope.replay.formats import MrcSource, RsciioSource
from lithoscope.replay.readers import open_source
from lithoscope.service.errors import SourceError
from lithoscope.service.sources import Source

from support.media import make_frames
from support.source_conformance import SourceConformance

SHAPE = (24, 32)
FRAMES_U16 = make_frames(4, SHAPE, np.uint16, seed=7)


def write_berkeley_emd(path: Path, frames: list[np.ndarray], *, frame_interval_s: float = 0.25,
                       pixel_size: float = 0.3, unit: str = "nm") -> Path:
    """An in-situ stack as RosettaSciIO writes it (Berkeley/NCEM EMD, HDF5)."""
    data = np.stack(frames)
    axes = [
        {"name": "time", "size": data.shape[0], "scale": frame_interval_s, "offset": 0.0,
         "units": "s", "navigate": True},
        {"name": "y", "size": data.shape[1], "scale": pixel_size, "offset": 0.0,
         "units": unit, "navigate": False},
        {"name": "x", "size": data.shape[2], "scale": pixel_size, "offset": 0.0,
         "units": unit, "navigate": False},
    ]
    write_emd(str(path), {"data": data, "axes": axes,
                          "metadata": {"General": {"title": "insitu"}, "Signal": {}},
                          "original_metadata": {}})
    return path


def write_mrc(path: Path, frames: list[np.ndarray], *, voxel_size_a: float | None = 4.2) -> Path:
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.stack(frames) if len(frames) > 1 else frames[0])
        if len(frames) > 1:
            mrc.set_image_stack()
        if voxel_size_a is not None:
            mrc.voxel_size = voxel_size_a
    return path


class TestEmdSource(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_berkeley_emd(tmp_path / "stack.emd", FRAMES_U16)
        return lambda: RsciioSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16


class TestMrcStackSource(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_mrc(tmp_path / "stack.mrc", FRAMES_U16)
        return lambda: MrcSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES_U16


class TestMrcFloatImageSource(SourceConformance):
    FRAME = np.linspace(-1, 1, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)

    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_mrc(tmp_path / "one.mrc", [self.FRAME])
        return lambda: MrcSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return [self.FRAME]


def test_emd_carries_pixel_size_and_frame_rate(tmp_path: Path) -> None:
    path = write_berkeley_emd(tmp_path / "a.emd", FRAMES_U16, frame_interval_s=0.25,
                              pixel_size=0.03, unit="µm")
    with open_source(path) as source:
        info = source.info
        times = [frame.t_s for frame in source]
    assert info.kind == "emd"
    assert info.pixel_size_nm == pytest.approx(30.0)
    assert info.fps == pytest.approx(4.0)
    assert info.frame_count == 4
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert info.metadata["title"] == "insitu"
    assert info.metadata["pixel_size_nm_origin"] == "file"


def test_mrc_voxel_size_is_angstrom(tmp_path: Path) -> None:
    with open_source(write_mrc(tmp_path / "a.mrc", FRAMES_U16, voxel_size_a=4.2)) as source:
        assert source.info.kind == "mrc"
        assert source.info.pixel_size_nm == pytest.approx(0.42)
        assert source.info.fps is None  # MRC has no time axis: t_s counts frames
        assert [frame.t_s for frame in source] == [0.0, 1.0, 2.0, 3.0]


def test_uncalibrated_mrc_has_no_pixel_size_and_arguments_override(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "a.mrc", FRAMES_U16, voxel_size_a=None)
    with MrcSource(path) as source:
        assert source.info.pixel_size_nm is None
    with MrcSource(path, pixel_size_nm=0.5, fps=2.0) as source:
        assert source.info.pixel_size_nm == 0.5
        assert [frame.t_s for frame in source] == [0.0, 0.5, 1.0, 1.5]


def test_frames_outlive_the_closed_memory_map(tmp_path: Path) -> None:
    with MrcSource(write_mrc(tmp_path / "a.mrc", FRAMES_U16)) as source:
        frames = [frame.image for frame in source]
    assert all(np.array_equal(a, b) for a, b in zip(frames, FRAMES_U16, strict=True))


@pytest.mark.parametrize("name", ["fake.dm4", "fake.dm3", "fake.emd", "fake.mrc"])
def test_a_file_that_is_not_what_its_suffix_says(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"not a microscope file at all" * 10)
    with pytest.raises(SourceError, match=r"^Cannot read .*: not a readable") as caught:
        open_source(path)
    assert "\n" not in str(caught.value)


def test_truncated_mrc_is_refused_at_open(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "a.mrc", FRAMES_U16)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SourceError, match="not a readable MRC"):
        MrcSource(path)


def test_a_spectrum_image_is_not_a_movie(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 16), np.float32)
    axes = [
        {"name": "y", "size": 4, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "x", "size": 5, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "Energy", "size": 16, "scale": 10.0, "offset": 0.0, "units": "eV",
         "navigate": False},
    ]
    write_emd(str(tmp_path / "si.emd"), {"data": data, "axes": axes, "metadata": {
        "General": {"title": "si"}, "Signal": {}}, "original_metadata": {}})
    with pytest.raises(SourceError, match="no 2-D image or image stack"):
        RsciioSource(tmp_path / "si.emd")
