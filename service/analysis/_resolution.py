"""The analysis resolution: binning chosen from the particles' size in pixels.

The precision of an area (A/A0) depends on how many pixels a particle spans, not on the
camera's pixel count: particles 200 pixels across are measured as well binned to 25.
So the automatic binning takes the particles' diameter in input pixels, from the
configured diameter in nm and the pixel size when both are known, else read off a
coarse copy of the frame, and bins so that they stay
``analysis_particle_diameter_px`` analysis pixels across.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._config import AnalysisConfig
from ._needle import _find_needle, _Needle
from ._particles import _MIN_AREA_FLOOR_PX, _particle_radius
from ._prepare import _prepare, _Prepared, _scale_threshold

__all__: list[str] = []

_Ready = tuple[_Prepared, _Needle, float]
"""A copy of the frame the scale was read on: prepared, its opaque objects, and the
particle radius (analysis px) of the regions under the scale's threshold
(:func:`._prepare._scale_threshold`), opaque objects left out (the first scale
:func:`_segment` reads, the same on the same copy)."""

_COARSE_SIDE_PX = 512
"""The scale is read on a copy of the frame binned to about this many pixels on its
short side (frames under twice this are not binned for their scale). At 256, touching
particles 9 coarse pixels across blurred into one another and their diameter read 1.6
times too large (2048², 0.8 nm/px)."""
_MIN_COARSE_DIAMETER_PX = 8.0
"""A diameter under this many coarse pixels is not trusted (blur and noise specks):
the frame is then binned for its pixel size alone."""
_SURE_AT_MOST = 1.5
"""Particles read on the copy binned as far as the analysis may bin, at least this
many times ``analysis_particle_diameter_px`` across there, are measured well enough
on it to settle the binning (blur merging touching particles inflated the scale read
by 1.6 only when they were 9 px across)."""
_MIN_ANALYSIS_SIDE_PX = 64
"""The binned frame keeps at least this many pixels on its short side: the
illumination, the needle and the grid are estimated on it."""


def _coarse_scale(image: np.ndarray, config: AnalysisConfig, most: int,
                  ) -> tuple[float, _Ready | None]:
    """Typical particle diameter (input px) read off a copy of ``image`` binned to about
    ``_COARSE_SIDE_PX`` a side, or by ``most`` if that is less (the most the analysis
    may bin: the copy is then the analysis' own whenever the particles allow that
    much): twice the area-weighted median inscribed radius of the regions under
    the scale's threshold (:func:`._prepare._scale_threshold`), opaque objects
    (needle, grid) left out. NaN when the frame is
    too small to bin, or no particle spans ``_MIN_COARSE_DIAMETER_PX``. Also the
    coarse copy prepared, its opaque objects and its particle radius (``_Ready``), for
    reuse when the frame is analysed at that binning.

    When ``most`` bins further than that copy, the scale is first read at ``most``:
    particles found there at least ``_SURE_AT_MOST`` times
    ``analysis_particle_diameter_px`` across are large enough to be measured on it,
    and the frame is analysed on that same copy; otherwise the scale is read again
    on the finer copy."""
    coarse = min(image.shape) // _COARSE_SIDE_PX
    if coarse < 2:
        return math.nan, None
    if most > coarse:
        diameter, ready = _read_scale(image, config, most)
        if diameter >= _SURE_AT_MOST * config.analysis_particle_diameter_px * most:
            return diameter, ready
    return _read_scale(image, config, min(coarse, most))


def _read_scale(image: np.ndarray, config: AnalysisConfig, binning: int,
                ) -> tuple[float, _Ready | None]:
    """:func:`_coarse_scale` on one copy of ``image``, binned by ``binning``."""
    options = dataclasses.replace(config, binning=binning)
    prepared = _prepare(image, options)
    if not prepared.flat.any():
        return math.nan, None
    needle = _find_needle(prepared, options)
    opaque = needle.mask | needle.grid
    threshold = _scale_threshold(prepared.flat, opaque, options)
    radius = _particle_radius((prepared.flat < threshold) & ~opaque, _MIN_AREA_FLOOR_PX)
    if 2 * radius < _MIN_COARSE_DIAMETER_PX:
        return math.nan, (prepared, needle, radius)
    return 2.0 * radius * prepared.binning, (prepared, needle, radius)


def _choose_binning(image: np.ndarray, config: AnalysisConfig, *,
                    pixel_size_nm: float | None,
                    ) -> tuple[AnalysisConfig, float, _Ready | None]:
    """``config`` (already at the frame's pixel size, see
    :meth:`AnalysisConfig.at_pixel_size`) with the binning raised to what the particle
    scale allows, the diameter (input px) it was chosen from (NaN: not known, or not
    read because the limits below leave no choice), and the
    frame already prepared at that binning with its opaque objects and particle radius
    (``_Ready``), if the scale was read at it (None: prepare it).

    The binning is the largest that keeps a particle of that diameter
    ``analysis_particle_diameter_px`` analysis pixels across, leaves the frame
    ``_MIN_ANALYSIS_SIDE_PX`` a side and, with a pixel size, analysis pixels no
    coarser than ``max_analysis_pixel_nm``; never below the one for the pixel size
    (analysis pixels no finer than ``reference_pixel_size_nm``).
    """
    target = config.analysis_particle_diameter_px
    if target <= 0:
        return config, math.nan, None
    known = pixel_size_nm is not None and math.isfinite(pixel_size_nm) and pixel_size_nm > 0
    most = max(1, min(image.shape) // _MIN_ANALYSIS_SIDE_PX)
    if known and pixel_size_nm is not None and config.max_analysis_pixel_nm > 0:
        most = min(most, max(1, math.floor(
            config.max_analysis_pixel_nm / pixel_size_nm * (1 + 1e-9))))
    if most <= config.binning:  # no particle size would change it: nothing to read
        return config, math.nan, None
    coarse: _Ready | None = None
    if known and config.particle_diameter_nm > 0 and pixel_size_nm is not None:
        diameter = config.particle_diameter_nm / pixel_size_nm
    else:
        diameter, coarse = _coarse_scale(image, config, most)
    binning = config.binning
    if math.isfinite(diameter):
        binning = max(config.binning, min(most, math.floor(diameter / target)))
    if binning != config.binning:
        config = dataclasses.replace(config, binning=binning)
    if coarse is not None and coarse[0].binning != binning:
        coarse = None
    return config, diameter, coarse
