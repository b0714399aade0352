"""Archived sessions as a source, and replay of an archive into a new one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lithoscope.replay.archive_source import ArchiveSource
from lithoscope.service.archive import ArchiveReader, ArchiveWriter
from lithoscope.service.errors import SourceError
from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources import Source

from support.arrays import ArraySource, noisy_frames
from support.source_conformance import SourceConformance

FRAMES = noisy_frames(9, shape=(24, 40))


def write_archive(path: Path, frames: np.ndarray, *, close: bool = True) -> Path:
    writer = ArchiveWriter(path, session={"session_id": "orig", "source": "t", "fps": 5.0,
                                          "pixel_size_nm": 0.7})
    for i, image in enumerate(frames):
        writer.append_frame(image, seq=i + 1, index=i, t_s=i * 0.2 + 1.0, acquired_at=0.0,
                            metadata={"bias_v": float(i), "truth": {"cluster_area_px": i}})
    if close:
        writer.close()
    return path


class TestArchiveSource(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_archive(tmp_path / "a.zarr", FRAMES)
        return lambda: ArchiveSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return list(FRAMES)


def test_archive_source_keeps_times_metadata_and_truth(tmp_path: Path) -> None:
    with ArchiveSource(write_archive(tmp_path / "a.zarr", FRAMES)) as source:
        assert source.info.fps == 5.0
        assert source.info.pixel_size_nm == 0.7
        frames = list(source)
    assert [f.t_s for f in frames] == pytest.approx([1.0 + 0.2 * i for i in range(9)])
    assert frames[4].metadata == {"bias_v": 4.0}
    assert frames[4].truth == {"cluster_area_px": 4}


def test_an_unclosed_archive_replays_what_it_holds(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "cut.zarr", FRAMES, close=False)
    with ArchiveSource(path) as source:
        assert len(list(source)) == 9


def test_not_an_archive_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a lithoscope archive"):
        ArchiveSource(tmp_path)


def test_replaying_an_archive_gives_a_second_archive_with_the_same_frames(
        tmp_path: Path) -> None:
    first = run_local_session(ArraySource(FRAMES, fps=5.0), archive_path=tmp_path / "1.zarr",
                              speed=None, live=False)
    assert first.closed is not None
    assert first.closed.frames_archived == 9
    with ArchiveSource(tmp_path / "1.zarr") as source:
        second = run_local_session(source, archive_path=tmp_path / "2.zarr", speed=None,
                                   live=False)
    assert second.closed is not None
    assert second.closed.frames_archived == 9
    a, b = ArchiveReader(tmp_path / "1.zarr"), ArchiveReader(tmp_path / "2.zarr")
    np.testing.assert_array_equal(a.frames[:], b.frames[:])
    np.testing.assert_array_equal(a.table("frame_table")["t_s"], b.table("frame_table")["t_s"])
    np.testing.assert_array_equal(a.table("cluster")["area_px"], b.table("cluster")["area_px"])
