"""Drawing what the analysis saw over a frame: outlines in each track's colour, the
needle and grid shaded, and text that stays legible on any background. Used by the
movie export and the report's montage; pure functions on a BGR canvas (OpenCV order).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..schema import label_colour

__all__ = ["draw_labels", "put_text"]


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
             colour: tuple[int, int, int]) -> None:
    """Draw ``text`` in ``colour`` with a dark rim, legible on bright vacuum and dark
    particles alike.

    The glyphs are rendered once, into a mask; the rim is that mask grown by a few
    pixels, so it follows the glyphs exactly. (Drawing the rim as a second, thicker
    ``putText`` does not: OpenCV 5 advances Hershey glyphs by a width that depends on
    the thickness, and the two passes drift apart along the line.)
    """
    thickness = max(1, round(scale * 2))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale,
                                                thickness)
    rim = max(1, thickness)
    pad = rim + thickness + 2
    x0, y0 = origin[0] - pad, origin[1] - height - pad
    mask = np.zeros((height + baseline + 2 * pad, width + 2 * pad), np.uint8)
    cv2.putText(mask, text, (pad, pad + height), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                thickness, cv2.LINE_AA)
    # Every pixel the glyphs touch, however faintly, grown by ``rim`` in all eight
    # directions: no background pixel stays next to a glyph.
    outline = cv2.dilate((mask > 0).astype(np.uint8) * 255,
                         np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
    # Clip the text box to the canvas.
    rows, cols = canvas.shape[:2]
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(rows, y0 + mask.shape[0]), min(cols, x0 + mask.shape[1])
    if bottom <= top or right <= left:
        return
    crop = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
    region = canvas[top:bottom, left:right].astype(np.float32)
    dark = outline[crop].astype(np.float32)[..., None] / 255.0
    ink = mask[crop].astype(np.float32)[..., None] / 255.0
    region = region * (1.0 - dark)
    region = region * (1.0 - ink) + np.asarray(colour, np.float32) * ink
    canvas[top:bottom, left:right] = np.clip(region, 0, 255).astype(np.uint8)


def draw_labels(canvas: np.ndarray, labels: dict[str, np.ndarray], *,
                text_scale: float = 0.0) -> None:
    """Draw an archive frame's labels (:func:`read_labels` at frame resolution) on a BGR
    canvas: the needle tinted orange, the grid blue, each particle's outline in its
    track's colour (:func:`label_colour`) and, with ``text_scale`` > 0, its id."""
    for name, bgr in (("needle", (40, 140, 230)), ("grid", (230, 110, 70))):
        mask = labels[name]
        if mask.any():
            canvas[mask] = (0.55 * canvas[mask] + 0.45 * np.asarray(bgr)).astype(np.uint8)
    particles = labels["particles"]
    ids = np.unique(particles)
    for track in ids[ids > 0].tolist():
        mask = (particles == track).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        r, g, b, _ = label_colour(track)
        cv2.drawContours(canvas, contours, -1, (b, g, r), max(1, round(text_scale * 2)))
        if text_scale > 0 and contours:
            biggest = max(contours, key=cv2.contourArea)
            moments = cv2.moments(biggest)
            if moments["m00"] > 0:
                x = int(moments["m10"] / moments["m00"])
                y = int(moments["m01"] / moments["m00"])
                put_text(canvas, str(track), (x - 6, y + 6), text_scale * 0.7, (b, g, r))
