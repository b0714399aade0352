"""The needle across frames: whether a session has one, and whether it moved.

:class:`NeedleWatch` is the state :class:`SessionAnalyzer` keeps about the needle between
frames, apart from the per-frame contact rule: a needle stays in view, so one frame's
needle-shaped dark object is not yet a needle; and a contact is held while the needle's
tip stays where it was relative to the specimen. No I/O.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from lithoscope.service.alerts import AlertConfig

__all__ = ["NeedleWatch"]

_RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))
"""Median length of a 2-D normal vector of unit sigma per axis."""


class NeedleWatch:
    """The needle's presence and movement over a session's frames.

    Parameters
    ----------
    config
        ``needle_confirm_frames`` (presence), ``contact_debounce_frames`` (how far back
        a movement is judged), ``noise_window_frames`` and ``baseline_frames`` (the
        tip's jitter) and ``threshold_sigmas`` (how far is a movement).
    """

    def __init__(self, config: AlertConfig) -> None:
        self.config = config
        self._tips: deque[tuple[float, float]] = deque(
            maxlen=config.contact_debounce_frames + 1)
        """The needle's tip less the drift in the latest frames (:meth:`moved`)."""
        self._tip_steps: deque[float] = deque(maxlen=config.noise_window_frames)
        self._count = 0
        self._seen = False

    def confirmed(self, found: bool) -> bool:
        """Whether the session has a needle, given whether this frame found one: found
        in ``needle_confirm_frames`` more frames than not, until the count is back to
        zero.

        The per-frame analysis takes the needle-shaped opaque object entering from an
        edge for the needle; with no needle in view, a near-black crystal cut by the
        frame edge is that for a frame or three as it drifts (and touches its
        neighbours: a contact made and lost). The needle stays in view; a frame that
        misses it (low dose) does not unconfirm it.
        """
        most = self.config.needle_confirm_frames
        self._count = min(most, self._count + 1) if found else max(0, self._count - 1)
        if self._count >= most:
            self._seen = True
        elif self._count == 0:
            self._seen = False
        return self._seen

    def moved(self, tip: tuple[float, float], *, measured: bool) -> bool:
        """Whether the needle moved relative to the specimen over the last
        ``contact_debounce_frames`` frames (``tip``: its apex less the drift, input
        pixels); True when that cannot be told (no tip, its jitter not yet known).

        The tip's frame-to-frame jitter is measured in the frames the contact rule
        sees contact (``measured``): its per-axis sigma is the median step over
        1.18 (the median of a 2-D normal's length). The needle moved when its tip
        is farther than ``threshold_sigmas`` of those from where it was, at least a
        pixel: a withdrawal at 20 nm/s moves it 5 nm per frame at 4 fps, the jitter
        and the drift estimate's creep a few tenths of a pixel per frame.
        """
        tips = self._tips
        if not (math.isfinite(tip[0]) and math.isfinite(tip[1])):
            tips.clear()
            return True
        if measured and tips:
            self._tip_steps.append(math.hypot(tip[0] - tips[-1][0], tip[1] - tips[-1][1]))
        tips.append(tip)
        if len(self._tip_steps) < self.config.baseline_frames or len(tips) < 2:
            return True
        sigma = float(np.median(self._tip_steps)) / _RAYLEIGH_MEDIAN
        reach = max(1.0, self.config.threshold_sigmas * sigma)
        return math.hypot(tip[0] - tips[0][0], tip[1] - tips[0][1]) > reach
