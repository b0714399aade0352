"""The ``preview`` topic: a downsampled frame for viewers on other machines.

A viewer that follows a running service from another PC gets each analysed frame's
numbers and outlines in its ``result``; to show the image under them it subscribes to
``preview``. A preview is the analysed frame shrunk to at most
:data:`~lithoscope.service.protocol.MAX_PREVIEW_SIDE` pixels a side and stretched to
uint8 (a 2048² uint16 frame is 8 MiB; its preview 256 kiB), sent at most
:data:`PREVIEWS_PER_S` times a second and only while someone has subscribed to
``preview`` by name: the empty subscription (everything) does not ask for previews,
so a monitor or logger that takes every topic costs the worker no resizing.

The worker learns of subscriptions through its XPUB socket in manual mode
(``Worker._take_subscriptions``) and calls :meth:`PreviewGate.subscription` with each.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..protocol import MAX_PREVIEW_SIDE, Preview

__all__ = ["PREVIEWS_PER_S", "PreviewGate", "make_preview"]

PREVIEWS_PER_S = 2.0
"""Most previews a second: enough to see the specimen move, little for the network
(about 0.5 MiB/s at the largest size) and for the worker (one resize per preview)."""

_TOPIC = b"preview"


class PreviewGate:
    """Counts the subscriptions that ask for previews and spaces the previews out."""

    def __init__(self, per_s: float = PREVIEWS_PER_S) -> None:
        if not per_s > 0:
            raise ValueError(f"Expected previews per second > 0. Got {per_s}.")
        self.interval_s = 1.0 / per_s
        self.subscribers = 0
        """Subscriptions naming ``preview`` (or a non-empty prefix of it) now held."""
        self._last = -math.inf

    def subscription(self, subscribe: bool, topic: bytes) -> None:
        """Note one (un)subscription that the results socket took."""
        if not topic or not _TOPIC.startswith(topic):
            return
        self.subscribers = self.subscribers + 1 if subscribe else max(0, self.subscribers - 1)

    def due(self, now: float) -> bool:
        """True (and the clock restarts) if a preview should go out at ``now``
        (monotonic seconds)."""
        if self.subscribers <= 0 or now - self._last < self.interval_s:
            return False
        self._last = now
        return True


def make_preview(image: np.ndarray, *, session_id: str, index: int, t_s: float,
                 max_side: int = MAX_PREVIEW_SIDE) -> Preview:
    """A frame as a ``preview`` message: area-averaged down to ``max_side`` pixels a side
    at most (never up), then stretched to uint8 between its 0.5 and 99.5 percentiles."""
    rows, cols = image.shape
    scale = max(1.0, max(rows, cols) / max_side)
    size = (max(1, min(max_side, round(cols / scale))), max(1, min(max_side, round(rows / scale))))
    small = cv2.resize(image.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA) \
        if scale > 1 else image.astype(np.float32)
    low, high = (float(v) for v in np.percentile(small, (0.5, 99.5)))
    if not high > low:
        high = low + 1.0
    out = np.clip((small - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    return Preview(session_id=session_id, index=index, t_s=t_s, shape=list(out.shape),
                   frame_shape=[rows, cols], scale=cols / out.shape[1],
                   display_range=[low, high], image=out)
