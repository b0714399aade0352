"""Watch-folder source: frames streamed as a real writer thread saves them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lithoscope.service.errors import SourceError
from lithoscope.service.sources import Source
from lithoscope.service.sources.watch import WatchFolderSource

from support.media import make_frames, write_image_folder
from support.source_conformance import SourceConformance

SHAPE = (16, 24)
FRAMES = make_frames(12, SHAPE, np.uint16, seed=3)


class TestWatchFolderFinished(SourceConformance):
    """A folder whose acquisition already ended (sentinel present) streams its frames."""

    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        write_image_folder(tmp_path, FRAMES, suffix=".tif")
        (tmp_path / "lithoscope.stop").touch()
        return lambda: WatchFolderSource(tmp_path, poll_s=0.01, idle_timeout_s=5)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES


def _writer(folder: Path, frames: list[np.ndarray], *, in_place_halves: bool,
            written: list[str], go_on: threading.Event) -> None:
    """Save like camera software: half of each file, a pause, the rest (or temp + rename)."""
    for number, frame in enumerate(frames, start=1):
        final = folder / f"frame_{number}.tif"
        if in_place_halves:
            tmp = folder / f".scratch_{number}"
            tifffile.imwrite(tmp, frame)
            data = tmp.read_bytes()
            tmp.unlink()
            with final.open("wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                # The reader must see the half-written file and leave it alone.
                go_on.wait(0.02)
                handle.write(data[len(data) // 2:])
        else:
            tmp = folder / f"frame_{number}.tif.part"
            tifffile.imwrite(tmp, frame)
            tmp.rename(final)
        written.append(final.name)
    (folder / "lithoscope.stop").touch()


@pytest.mark.parametrize("in_place_halves", [True, False], ids=["in-place", "rename"])
def test_streams_frames_while_a_writer_saves_them(tmp_path: Path, in_place_halves: bool) -> None:
    written: list[str] = []
    never = threading.Event()
    # Stable for two polls 40 ms apart: longer than the writer's pause mid-file.
    source = WatchFolderSource(tmp_path, poll_s=0.04, settle_polls=3, idle_timeout_s=30)
    writer = threading.Thread(target=_writer, args=(tmp_path, FRAMES),
                              kwargs={"in_place_halves": in_place_halves, "written": written,
                                      "go_on": never})
    received = []
    with source:
        writer.start()
        try:
            for frame in source:
                # Never a frame the writer has not finished.
                assert frame.metadata["file_name"] in written
                received.append(frame)
        finally:
            writer.join(timeout=30)
    assert [f.metadata["file_name"] for f in received] == [f"frame_{i}.tif" for i in range(1, 13)]
    for frame, truth in zip(received, FRAMES, strict=True):
        assert np.array_equal(frame.image, truth)
    assert [f.index for f in received] == list(range(12))
    assert all(b.t_s >= a.t_s for a, b in zip(received, received[1:], strict=False))


def test_a_slow_earlier_frame_is_not_overtaken(tmp_path: Path) -> None:
    frames = FRAMES[:3]
    (tmp_path / "frame_1.tif").write_bytes(b"")  # created, not yet written
    tifffile.imwrite(tmp_path / "frame_2.tif", frames[1])
    tifffile.imwrite(tmp_path / "frame_3.tif", frames[2])
    source = WatchFolderSource(tmp_path, poll_s=0.01, idle_timeout_s=30)
    with source:
        iterator = iter(source)
        results: list[str] = []

        def finish_first() -> None:
            tifffile.imwrite(tmp_path / "frame_1.tif", frames[0])
            (tmp_path / "lithoscope.stop").touch()

        timer = threading.Timer(0.2, finish_first)
        timer.start()
        try:
            results = [frame.metadata["file_name"] for frame in iterator]
        finally:
            timer.join()
    assert results == ["frame_1.tif", "frame_2.tif", "frame_3.tif"]


def test_idle_timeout_ends_the_stream(tmp_path: Path) -> None:
    write_image_folder(tmp_path, FRAMES[:2], suffix=".tif")
    with WatchFolderSource(tmp_path, poll_s=0.01, idle_timeout_s=0.2) as source:
        assert len(list(source)) == 2


def test_existing_files_can_be_skipped(tmp_path: Path) -> None:
    write_image_folder(tmp_path, FRAMES[:2], suffix=".tif")
    source = WatchFolderSource(tmp_path, poll_s=0.01, idle_timeout_s=0.2, include_existing=False)
    with source:
        tifffile.imwrite(tmp_path / "frame_9.tif", FRAMES[5])
        assert [f.metadata["file_name"] for f in source] == ["frame_9.tif"]


def test_mismatching_frame_names_the_file(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "frame_1.tif", FRAMES[0])
    tifffile.imwrite(tmp_path / "frame_2.tif", FRAMES[1][:8])
    (tmp_path / "lithoscope.stop").touch()
    with WatchFolderSource(tmp_path, poll_s=0.01) as source, \
            pytest.raises(SourceError, match="frame_2.tif"):
        list(source)


def test_close_from_another_thread_ends_iteration(tmp_path: Path) -> None:
    source = WatchFolderSource(tmp_path, poll_s=0.01, idle_timeout_s=60)
    timer = threading.Timer(0.1, source.close)
    timer.start()
    with pytest.raises(SourceError, match="closed"):
        list(source)
    timer.join()


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory"):
        WatchFolderSource(tmp_path / "nope")
