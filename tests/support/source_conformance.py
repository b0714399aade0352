"""The conformance suite every `Source` implementation's tests subclass.

Like zarr's ``StoreTests``: one generic class states what the publisher may rely on
from any source, and each implementation proves it by subclassing and supplying
two fixtures::

    class TestTiffSource(SourceConformance):
        @pytest.fixture
        def source_factory(self, tmp_path) -> Callable[[], Source]:
            path = write_tiff_stack(tmp_path / "stack.tif", FRAMES)
            return lambda: TiffSource(path)

        @pytest.fixture
        def expected_frames(self) -> list[np.ndarray] | None:
            return FRAMES

Class attributes tune the contract for sources that cannot meet all of it (an
endless live source sets ``max_frames``; a lossy one overrides
`assert_frame_matches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

import numpy as np
import pytest

from lithoscope.service.errors import SourceError
from lithoscope.service.sources import Source, SourceFrame

__all__ = ["SourceConformance"]


class SourceConformance:
    """Generic tests for a `Source`; subclass and provide the fixtures below."""

    max_frames: ClassVar[int | None] = None
    """Stop after this many frames (endless or very long sources); ``None`` reads all."""
    reiterable: ClassVar[bool] = True
    """Iterating a second time replays the same frames (files, archives, seeded sims)."""
    refuses_iteration_when_closed: ClassVar[bool] = True
    """``iter(source)`` on a closed source raises `SourceError` (not a crash, not frames)."""

    @pytest.fixture
    def source_factory(self) -> Callable[[], Source]:
        """Return a callable opening a fresh source each time it is called."""
        raise NotImplementedError("Subclasses provide a source_factory fixture.")

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray] | None:
        """The frames the source must yield, in order, or ``None`` if not known."""
        return None

    # ----------------------------------------------------------------- helpers

    def read_frames(self, source: Source) -> list[SourceFrame]:
        """Iterate ``source`` (up to `max_frames`)."""
        frames = []
        iterator: Iterator[SourceFrame] = iter(source)
        for frame in iterator:
            frames.append(frame)
            if self.max_frames is not None and len(frames) >= self.max_frames:
                break
        return frames

    def read_all(self, source_factory: Callable[[], Source]) -> list[SourceFrame]:
        """Open, read and close; frames must stay valid after the source is closed."""
        with source_factory() as source:
            return self.read_frames(source)

    def assert_frame_matches(self, actual: np.ndarray, expected: np.ndarray, index: int) -> None:
        """Bit-identical by default; lossy sources override with a tolerance."""
        assert actual.dtype == expected.dtype, f"frame {index}: dtype"
        assert actual.shape == expected.shape, f"frame {index}: shape"
        assert np.array_equal(actual, expected), f"frame {index}: pixels differ"

    # ------------------------------------------------------------------- tests

    def test_is_a_source(self, source_factory: Callable[[], Source]) -> None:
        with source_factory() as source:
            assert isinstance(source, Source)

    def test_info_fields_have_the_documented_types(
        self, source_factory: Callable[[], Source]
    ) -> None:
        with source_factory() as source:
            info = source.info
        assert isinstance(info.name, str)
        assert info.name
        assert isinstance(info.kind, str)
        assert info.name.startswith(f"{info.kind}:")
        if info.shape is not None:
            assert len(info.shape) == 2
            assert all(isinstance(size, int) and size > 0 for size in info.shape)
        if info.dtype is not None:
            assert np.dtype(info.dtype).name == info.dtype
        if info.frame_count is not None:
            assert isinstance(info.frame_count, int)
            assert info.frame_count >= 0
        for value in (info.fps, info.pixel_size_nm):
            if value is not None:
                assert isinstance(value, float)
                assert math.isfinite(value)
                assert value > 0
        assert isinstance(info.live, bool)
        assert isinstance(info.metadata, Mapping)

    def test_frames_agree_with_info(self, source_factory: Callable[[], Source]) -> None:
        with source_factory() as source:
            info = source.info
            frames = self.read_frames(source)
        assert frames, "a source under test should yield at least one frame"
        for frame in frames:
            assert isinstance(frame, SourceFrame)
            image = frame.image
            assert isinstance(image, np.ndarray)
            assert image.ndim == 2
            assert image.flags.c_contiguous
            assert image.dtype.isnative
            if info.shape is not None:
                assert image.shape == info.shape
            if info.dtype is not None:
                assert image.dtype.name == info.dtype
        if info.frame_count is not None and self.max_frames is None:
            assert len(frames) == info.frame_count

    def test_indices_count_from_zero_and_times_do_not_decrease(
        self, source_factory: Callable[[], Source]
    ) -> None:
        with source_factory() as source:
            frames = self.read_frames(source)
        assert [frame.index for frame in frames] == list(range(len(frames)))
        times = [frame.t_s for frame in frames]
        assert all(isinstance(t_s, float) and math.isfinite(t_s) for t_s in times)
        assert times[0] >= 0.0
        assert all(later >= earlier for earlier, later in zip(times, times[1:], strict=False))
        assert all(isinstance(frame.metadata, Mapping) for frame in frames)

    def test_frames_match_expected(
        self,
        source_factory: Callable[[], Source],
        expected_frames: list[np.ndarray] | None,
    ) -> None:
        if expected_frames is None:
            pytest.skip("no expected frames for this source")
        frames = self.read_all(source_factory)  # compared after close, on purpose
        expected = expected_frames[: len(frames)] if self.max_frames else expected_frames
        assert len(frames) == len(expected)
        for frame, truth in zip(frames, expected, strict=True):
            self.assert_frame_matches(frame.image, truth, frame.index)

    def test_iterating_again_replays_the_same_frames(
        self, source_factory: Callable[[], Source]
    ) -> None:
        if not self.reiterable:
            pytest.skip("source is not reiterable")
        with source_factory() as source:
            first = self.read_frames(source)
            second = self.read_frames(source)
        assert [frame.index for frame in first] == [frame.index for frame in second]
        assert [frame.t_s for frame in first] == [frame.t_s for frame in second]
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(a.image, b.image)

    def test_context_manager_returns_the_source_and_closes_it(
        self, source_factory: Callable[[], Source]
    ) -> None:
        source = source_factory()
        with source as entered:
            assert entered is source
        if self.refuses_iteration_when_closed:
            with pytest.raises(SourceError, match="closed"):
                next(iter(source))

    def test_context_manager_closes_on_error(self, source_factory: Callable[[], Source]) -> None:
        source = source_factory()
        with pytest.raises(RuntimeError, match="boom"), source:
            raise RuntimeError("boom")
        if self.refuses_iteration_when_closed:
            with pytest.raises(SourceError, match="closed"):
                next(iter(source))

    def test_close_is_idempotent(self, source_factory: Callable[[], Source]) -> None:
        source = source_factory()
        source.close()
        source.close()
        with source:
            pass
        source.close()

    def test_close_during_iteration_stops_cleanly(
        self, source_factory: Callable[[], Source]
    ) -> None:
        source = source_factory()
        iterator = iter(source)
        next(iterator)
        source.close()
        # Either the iterator notices (SourceError) or it is already exhausted;
        # never a library traceback from reading a released handle.
        try:
            next(iterator)
        except (SourceError, StopIteration):
            pass
        else:
            if self.refuses_iteration_when_closed:
                pytest.fail("a closed source kept yielding frames")
