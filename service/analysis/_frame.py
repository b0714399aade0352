"""One call per frame: needle, particles, measurements and cluster summary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._config import AnalysisConfig
from ._measure import measure_particles, particle_contacts
from ._segment import _find_needle, _Needle, _prepare, _Prepared, _segment, _upsample

__all__ = ["FrameAnalysis", "analyze_frame"]


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    """What :func:`analyze_frame` found in one frame."""

    particles: dict[str, np.ndarray]
    """Per-particle columns, see :func:`measure_particles`."""
    cluster: Mapping[str, Any]
    """``area_px`` (int, total particle area), ``area_nm2`` (float, NaN without a pixel
    size), ``particle_count`` (int), ``needle_contact`` (bool, the needle touches a
    particle), ``needle_area_px`` and ``grid_area_px`` (int, the two kinds of opaque
    object), ``needle_tip_row`` and ``needle_tip_col`` (float, NaN without a needle)."""
    labels: np.ndarray
    """int32 label image of the particles at input resolution (0: background)."""
    needle_mask: np.ndarray
    """bool mask of the needle at input resolution."""
    grid_mask: np.ndarray
    """bool mask of opaque grid bars (with their blurred rim) at input resolution."""
    contacts: np.ndarray
    """(K, 2) int32 pairs of touching particle labels, see :func:`particle_contacts`."""

    def classes(self) -> np.ndarray:
        """uint8 class map: 0 vacuum, 1 particle, 2 needle (with its coating), 3 grid."""
        out = np.zeros(self.labels.shape, np.uint8)
        out[self.labels > 0] = 1
        out[self.needle_mask] = 2
        out[self.grid_mask] = 3
        return out


def analyze_frame(
    image: np.ndarray,
    *,
    config: AnalysisConfig | None = None,
    pixel_size_nm: float | None = None,
) -> FrameAnalysis:
    """Find the needle and the particles of one frame and measure them.

    Parameters
    ----------
    image : (M, N) ndarray
        A bright-field frame, uint8, uint16 or float; not modified.
    config : AnalysisConfig, optional
        Options; defaults to ``AnalysisConfig()``.
    pixel_size_nm : float, optional
        Pixel size; without it the nm values are NaN and the options' lengths are
        taken at their reference pixel size (see :meth:`AnalysisConfig.at_pixel_size`).

    Returns
    -------
    FrameAnalysis
        Particle table, cluster summary, label image and needle mask.

    Notes
    -----
    Equivalent to :func:`detect_needle`, then :func:`segment_particles` and
    :func:`measure_particles`, with the smoothing and illumination flattening done
    once. Stateless: frames may be analysed in any order, in parallel.

    References
    ----------
    N. Otsu, "A threshold selection method from gray-level histograms",
    IEEE Trans. Syst. Man Cybern. 9 (1979) 62-66.
    H. Knutsson and C.-F. Westin, "Normalized and differential convolution",
    Proc. CVPR (1993) 515-523.
    """
    return _analyze(image, config=config, pixel_size_nm=pixel_size_nm)[0]


def _analyze(
    image: np.ndarray,
    *,
    config: AnalysisConfig | None = None,
    pixel_size_nm: float | None = None,
) -> tuple[FrameAnalysis, _Prepared, _Needle]:
    """:func:`analyze_frame`, also handing back the flattened frame (for drift)."""
    config = (config if config is not None else AnalysisConfig()).at_pixel_size(pixel_size_nm)
    prepared = _prepare(image, config)
    needle = _find_needle(prepared, config)
    labels = _upsample(_segment(prepared, needle.mask | needle.grid, config), prepared)
    needle_mask = _upsample(needle.mask, prepared)
    grid_mask = _upsample(needle.grid, prepared)
    particles = measure_particles(labels, image, needle_mask=needle_mask,
                                  pixel_size_nm=pixel_size_nm,
                                  contact_px=config.needle_contact_px)
    area_px = int(particles["area_px"].sum())
    has_size = pixel_size_nm is not None and math.isfinite(pixel_size_nm)
    cluster = {
        "area_px": area_px,
        "area_nm2": (area_px * float(pixel_size_nm) ** 2
                     if has_size and pixel_size_nm is not None else math.nan),
        "particle_count": int(particles["label"].size),
        "needle_contact": bool(particles["touches_needle"].any()),
        "needle_area_px": int(np.count_nonzero(needle_mask)),
        "grid_area_px": int(np.count_nonzero(grid_mask)),
        "needle_tip_row": needle.tip[0],
        "needle_tip_col": needle.tip[1],
    }
    analysis = FrameAnalysis(particles=particles, cluster=cluster, labels=labels,
                             needle_mask=needle_mask, grid_mask=grid_mask,
                             contacts=particle_contacts(labels))
    return analysis, prepared, needle
