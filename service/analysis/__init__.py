"""Per-frame image analysis: needle, particles, measurements (OpenCV, stateless).

Follows scikit-image's conventions: image first, keyword-only options, (row, col)
order, inputs never modified, no state and no I/O. Measurements are dicts of 1-D
columns that go straight into zarr arrays and DataFrames.
"""

from __future__ import annotations

from ._config import AnalysisConfig
from ._frame import FrameAnalysis, analyze_frame
from ._measure import PARTICLE_COLUMNS, empty_particles, measure_particles, particle_contacts
from ._segment import detect_needle, segment_particles

__all__ = [
    "PARTICLE_COLUMNS",
    "AnalysisConfig",
    "FrameAnalysis",
    "analyze_frame",
    "detect_needle",
    "empty_particles",
    "measure_particles",
    "particle_contacts",
    "segment_particles",
]
