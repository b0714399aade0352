"""The stateless half of a session's analysis: one frame measured, ready to send.

:func:`measure_frame` runs the per-frame analysis and keeps what the session's
:class:`~lithoscope.service.analysis.SessionAnalyzer` needs to join the frame up with the
others (:class:`FrameMeasurement`), so that frames can be measured in other processes or
on other hosts and joined up in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._config import AnalysisConfig
from ._frame import FrameAnalysis, _analyze
from ._tracking import drift_image

__all__ = ["FrameMeasurement", "measure_frame"]

_DRIFT_DOWNSAMPLE = 2
"""The drift image is the analysed (binned) frame reduced this much again."""


@dataclass(frozen=True, slots=True)
class FrameMeasurement:
    """One frame's stateless analysis: all :meth:`SessionAnalyzer.update_measured` needs.

    The split lets frames be measured in parallel (other processes, other hosts) and
    joined up in order by the session's one analyzer; it holds no input-resolution
    arrays, so it is cheap to send: a few kB of columns, a drift image of half the
    bytes of a uint16 frame analysed unbinned (an eighth at 2x2 binning), and the label
    image and region masks at analysis resolution, for the archive's ``labels/`` and the
    results' outlines.
    """

    particles: dict[str, np.ndarray]
    """Columns of :data:`PARTICLE_COLUMNS`."""
    cluster: dict[str, Any]
    """The per-frame cluster values of :class:`FrameAnalysis`."""
    contacts: np.ndarray
    """(K, 2) int32 pairs of touching particle labels."""
    drift_image: np.ndarray
    """float32, see :func:`drift_image`."""
    drift_scale: float
    """Input pixels per pixel of ``drift_image``."""
    labels: np.ndarray | None = None
    """The segmentation's label image at analysis resolution (values: the ``label``
    column), or None where it was not kept."""
    regions: np.ndarray | None = None
    """uint8 at analysis resolution: 1 on the needle, 2 on grid bars, else 0."""
    binning: int = 1
    """Input pixels per pixel of ``labels`` and ``regions``."""


def measure_frame(
    image: np.ndarray, *, config: AnalysisConfig | None = None,
    pixel_size_nm: float | None = None,
) -> FrameMeasurement:
    """The stateless half of :meth:`SessionAnalyzer.update`; see :class:`FrameMeasurement`."""
    return _measure(image, config, pixel_size_nm)[1]


def _measure(image: np.ndarray, config: AnalysisConfig | None, pixel_size_nm: float | None,
             ) -> tuple[FrameAnalysis, FrameMeasurement]:
    analysis, prepared, needle = _analyze(image, config=config, pixel_size_nm=pixel_size_nm)
    drift = drift_image(prepared.flat, exclude=needle.mask, downsample=_DRIFT_DOWNSAMPLE)
    regions = analysis.analysis_needle_mask.astype(np.uint8)
    regions[analysis.analysis_grid_mask] = 2
    return analysis, FrameMeasurement(
        particles=analysis.particles, cluster=dict(analysis.cluster),
        contacts=analysis.contacts, drift_image=drift,
        drift_scale=float(prepared.binning * _DRIFT_DOWNSAMPLE),
        labels=analysis.analysis_labels, regions=regions, binning=prepared.binning)
