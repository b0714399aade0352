"""An in-memory Source for pipeline tests: known frames, known times."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo


class ArraySource(SourceBase):
    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray, *, fps: float = 10.0,
                 live: bool = False, pixel_size_nm: float | None = 0.5) -> None:
        self.frames = list(frames)
        first = self.frames[0]
        self._info = SourceInfo(name="array:test", kind="array", shape=first.shape,
                                dtype=first.dtype.name, frame_count=len(self.frames), fps=fps,
                                pixel_size_nm=pixel_size_nm, live=live)

    def __iter__(self) -> Iterator[SourceFrame]:
        fps = self._info.fps or 1.0
        for i, image in enumerate(self.frames):
            yield SourceFrame(image=image, t_s=i / fps, index=i,
                              metadata={"bias_v": -2.0 if i > 2 else 0.0})


def noisy_frames(count: int, shape: tuple[int, int] = (96, 128), *, seed: int = 0,
                 dtype: str = "uint16") -> np.ndarray:
    """Bright background, a few dark discs; random enough that bit errors would show."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    base = np.full(shape, 3000.0)
    for r, c, radius in ((30, 40, 12), (40, 60, 10), (60, 80, 14)):
        base[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = 1500.0
    frames = rng.poisson(base, size=(count, *shape))
    if dtype == "uint8":
        frames = frames // 16
    return frames.astype(dtype)
