"""The one small interface every frame source implements.

A source is anything that yields 2-D frames with a time stamp: the simulator, a
recorded movie, a folder the camera software writes into, an archived session, a
live camera adapter. The publisher only ever sees this interface, which is what lets
replay and live acquisition share one path to the worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Source", "SourceBase", "SourceFrame", "SourceInfo"]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source knows about itself before the first frame.

    Fields a file does not record are ``None``; the CLI fills them from
    ``--fps`` / ``--pixel-size`` and refuses to guess silently.
    """

    name: str
    """Human-readable description, e.g. ``"tiff:/data/run3.tif"`` or ``"sim:lithiation"``."""
    kind: str
    """Short source type: ``sim``, ``tiff``, ``video``, ``folder``, ``archive``, ``camera``."""
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    frame_count: int | None = None
    fps: float | None = None
    pixel_size_nm: float | None = None
    live: bool = False
    """True for sources that do not wait (camera, simulator in live mode)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Session-level metadata worth archiving (instrument, scenario, original file name)."""


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One frame as a source delivers it.

    ``t_s`` is the acquisition time in seconds since the source's first frame, on
    the experiment's clock (for a file: index / fps unless the file records times).
    ``metadata`` carries per-frame values when known, with unit-suffixed names
    (``bias_v``, ``current_a``, ``dose_rate_e_per_a2_s``, ``needle_tip_row`` ...).
    ``truth`` is set only by the simulator: the exact values the analysis should find.
    """

    image: np.ndarray
    t_s: float
    index: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    truth: Mapping[str, Any] | None = None


@runtime_checkable
class Source(Protocol):
    """Iterate frames, describe yourself, release resources when closed."""

    @property
    def info(self) -> SourceInfo: ...

    def __iter__(self) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SourceBase:
    """Context-manager plumbing shared by concrete sources.

    Subclasses set ``self._info`` and implement ``__iter__``; ``close`` may be
    overridden to release files or cameras and must be idempotent.
    """

    _info: SourceInfo

    @property
    def info(self) -> SourceInfo:
        return self._info

    def __iter__(self) -> Iterator[SourceFrame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release resources. Safe to call more than once."""

    def __enter__(self) -> SourceBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
