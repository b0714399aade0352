"""Image analysis: needle, grid, particles and measurements per frame (stateless), and
the session's state across frames (drift, tracks, physics, alerts).

Follows scikit-image's conventions: image first, keyword-only options, (row, col)
order, inputs never modified, no state and no I/O. Measurements are dicts of 1-D
columns that go straight into zarr arrays and DataFrames.
"""

from __future__ import annotations

from ._config import AnalysisConfig
from ._draw import draw_labels, put_text
from ._frame import FrameAnalysis, analyze_frame
from ._labels import (
    FrameLabels,
    label_track_ids,
    particle_outlines,
    track_label_image,
    track_lut,
)
from ._measure import PARTICLE_COLUMNS, empty_particles, measure_particles, particle_contacts
from ._measurement import FrameMeasurement, measure_frame
from ._rejoin import rejoin_split_particles
from ._segment import detect_needle, segment_particles
from ._session import CLUSTER_COLUMNS, SESSION_PARTICLE_COLUMNS, SessionAnalyzer, session_iter
from ._tracking import DriftEstimator, ParticleTracker, drift_image, drift_iter, track_iter

__all__ = [
    "CLUSTER_COLUMNS",
    "PARTICLE_COLUMNS",
    "SESSION_PARTICLE_COLUMNS",
    "AnalysisConfig",
    "DriftEstimator",
    "FrameAnalysis",
    "FrameLabels",
    "FrameMeasurement",
    "ParticleTracker",
    "SessionAnalyzer",
    "analyze_frame",
    "detect_needle",
    "draw_labels",
    "drift_image",
    "drift_iter",
    "empty_particles",
    "label_track_ids",
    "measure_frame",
    "measure_particles",
    "particle_contacts",
    "particle_outlines",
    "put_text",
    "rejoin_split_particles",
    "segment_particles",
    "session_iter",
    "track_iter",
    "track_label_image",
    "track_lut",
]
