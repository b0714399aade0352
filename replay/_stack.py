"""A lazily indexed stack of frames as a `Source`: shared by the RosettaSciIO and MRC readers.

The array is anything indexable whose items convert with ``np.asarray`` (a dask array
over the file, a memory map): ``(Y, X)`` for one image, ``(T, Y, X)`` for a stack, or
``(*navigation, Y, X)`` for a scan of frames (4D-STEM), whose frames come out in C
order of the navigation indices. One frame is read per iteration step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo

from ._common import choose, frame_time_s, one_line

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["StackSource"]


class StackSource(SourceBase):
    """A lazily indexed ``(*navigation, Y, X)`` array as a `Source`.

    Subclasses open the file and hand over the array with what the file says about
    its calibration (:meth:`_setup`).
    """

    def _setup(
        self,
        *,
        path: Path,
        kind: str,
        data: Any,
        fps: float | None,
        pixel_size_nm: float | None,
        file_fps: float | None,
        file_pixel_size_nm: float | None,
        metadata: dict[str, Any],
        times_s: Sequence[float] | None = None,
        frame_metadata: Mapping[str, Any] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        """``times_s``: per-frame times the file records (used unless ``fps`` is
        given); ``frame_metadata``: values every frame carries (``exposure_s``)."""
        self._path = path
        self._release = release
        self._closed = False
        shape = tuple(int(size) for size in data.shape)
        if len(shape) < 2:
            raise SourceError(
                f"Cannot read {path}: the file holds a {len(shape)}-D dataset (shape {shape}); "
                "expected one 2-D image or a stack of them."
            )
        self._navigation = shape[:-2]
        self._data = data
        self._count = math.prod(self._navigation)
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "uif":
            raise SourceError(
                f"Cannot read {path}: {dtype} pixels; expected grayscale integer or float frames."
            )
        self._dtype = dtype.newbyteorder("=")
        self._times_s = (list(times_s) if times_s is not None and fps is None
                         and len(times_s) == self._count else None)
        self._frame_metadata = dict(frame_metadata or {})
        metadata["file_name"] = path.name
        if len(self._navigation) > 1:
            metadata["navigation_shape"] = list(self._navigation)
        self._info = SourceInfo(
            name=f"{kind}:{path}",
            kind=kind,
            shape=(shape[-2], shape[-1]),
            dtype=self._dtype.name,
            frame_count=self._count,
            fps=choose(fps, file_fps, "fps", metadata),
            pixel_size_nm=choose(pixel_size_nm, file_pixel_size_nm, "pixel_size_nm", metadata),
            live=False,
            metadata=metadata,
        )

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed:
            raise SourceError(f"Cannot read {self._path}: the source is closed.")
        return self._frames()

    def _read(self, index: int) -> np.ndarray:
        position = np.unravel_index(index, self._navigation) if self._navigation else ()
        try:
            # A copy, always: a memory-mapped frame must outlive the closed file.
            item = self._data[tuple(int(i) for i in position)]
            return np.array(item, dtype=self._dtype, order="C", copy=True)
        except Exception as exc:
            # A truncated stack surfaces as whatever the library's decoder raises.
            raise SourceError(
                f"Cannot read {self._path} (frame {index}): {one_line(exc)}."
            ) from exc

    def _frames(self) -> Generator[SourceFrame, None, None]:
        fps = self._info.fps
        for index in range(self._count):
            if self._closed:
                raise SourceError(f"Cannot read {self._path}: the source is closed.")
            t_s = self._times_s[index] if self._times_s else frame_time_s(index, fps)
            yield SourceFrame(self._read(index), t_s, index, metadata=self._frame_metadata)

    def close(self) -> None:
        """Release the file. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._data = None
        if self._release is not None:
            self._release()
