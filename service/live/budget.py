"""The worker's memory budget: the bytes of every frame it holds, whoever holds it.

A received frame's pixels are a view of its ZeroMQ message; the archive thread (until
the frame is on disk), the analysis hand-off (a live session's newest frame, a replay's
backlog, a frame out for measuring, one being analysed) share that one buffer without a
copy. So the budget counts a frame's bytes once, from the moment the worker takes it
from the socket until the last of those holders lets it go: :meth:`MemoryBudget.hold`
ties the count to the life of the image array (``weakref.finalize``), so no path
through the worker (written, analysed, skipped, abandoned at shutdown, failed) can
forget to give the bytes back, and no path can give them back twice.

When the frames held reach ``memory_budget_bytes`` the worker stops reading its frames
socket: ZeroMQ then holds the next frames in its own queue (``frame_hwm`` messages) and a
lossless publisher waits. Nothing accepted is dropped; the camera side decides what a
full pipe means for it (a replay waits, a camera's own buffer fills).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """Bytes of frames held, against a limit; thread-safe (bytes come back from the
    archive and analysis threads)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._held = 0
        self._peak = 0
        self._largest = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of the frames alive now."""
        return self._held

    @property
    def peak_bytes(self) -> int:
        """Most bytes held at once since the start."""
        return self._peak

    def has_room(self) -> bool:
        """May the worker take another frame? Yes while the largest frame seen still
        fits; always when nothing is held (a frame larger than the whole budget is
        still taken, alone)."""
        held = self._held
        return held == 0 or held + self._largest <= self.limit_bytes

    def hold(self, image: np.ndarray) -> None:
        """Count ``image``'s bytes until the array is freed."""
        nbytes = int(image.nbytes)
        with self._lock:
            self._held += nbytes
            self._peak = max(self._peak, self._held)
            self._largest = max(self._largest, nbytes)
        weakref.finalize(image, self._release, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._held -= nbytes
