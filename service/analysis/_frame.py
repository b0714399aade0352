"""One call per frame: needle, particles, measurements and cluster summary."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._config import AnalysisConfig
from ._measure import measure_particles, particle_contacts
from ._needle import _find_needle, _joined, _Needle, _touching
from ._particles import _segment
from ._prepare import _histogram, _particle_threshold, _prepare, _Prepared, _upsample
from ._resolution import _choose_binning

__all__ = ["FrameAnalysis", "analyze_frame"]


@dataclass(frozen=True)  # no slots: the cached properties live in the instance's dict
class FrameAnalysis:
    """What :func:`analyze_frame` found in one frame.

    The images are kept at analysis resolution (see ``binning``), which is where they
    are measured; :attr:`labels`, :attr:`needle_mask` and :attr:`grid_mask` are
    upsampled to input resolution when first read, for whoever draws them over the
    frame (the worker never does).
    """

    particles: dict[str, np.ndarray]
    """Per-particle columns, see :func:`measure_particles`."""
    cluster: Mapping[str, Any]
    """``area_px`` (int, total particle area), ``area_nm2`` (float, NaN without a pixel
    size), ``particle_count`` (int), ``needle_contact`` (bool, the needle touches a
    particle), ``needle_joined`` (bool, a particle is joined to the needle with no
    vacuum between; a session holds a contact while this lasts), ``needle_area_px``
    and ``grid_area_px`` (int, the two kinds of opaque object), ``needle_tip_row``
    and ``needle_tip_col`` (float, NaN without a needle),
    ``particle_diameter_px`` (float, the typical particle diameter measured on this
    frame in input pixels: twice the area-weighted median inscribed radius of the
    particle regions; 0 without particles), ``particle_diameter_nm`` (float, the same
    in nm; NaN without a pixel size or particles), ``scale_mismatch`` (bool: with a
    pixel size, that diameter is more than a factor 2 off
    ``AnalysisConfig.particle_diameter_nm``, or off 20-100 nm when that is not set:
    the pixel size or the configuration is likely wrong), ``binning`` (int, input
    pixels per analysis pixel along each axis)."""
    contacts: np.ndarray
    """(K, 2) int32 pairs of touching particle labels, see :func:`particle_contacts`."""
    analysis_labels: np.ndarray
    """int32 label image of the particles at analysis resolution (0: background)."""
    analysis_needle_mask: np.ndarray
    """bool mask of the needle at analysis resolution."""
    analysis_grid_mask: np.ndarray
    """bool mask of opaque grid bars (with their blurred rim) at analysis resolution."""
    binning: int
    """Input pixels per analysis pixel along each axis."""
    shape: tuple[int, int]
    """Shape of the input frame."""

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """int32 label image of the particles at input resolution (0: background)."""
        return _upsample(self.analysis_labels, self.binning, self.shape)

    @functools.cached_property
    def needle_mask(self) -> np.ndarray:
        """bool mask of the needle at input resolution."""
        return _upsample(self.analysis_needle_mask, self.binning, self.shape)

    @functools.cached_property
    def grid_mask(self) -> np.ndarray:
        """bool mask of opaque grid bars (with their blurred rim) at input resolution."""
        return _upsample(self.analysis_grid_mask, self.binning, self.shape)

    def classes(self) -> np.ndarray:
        """uint8 class map: 0 vacuum, 1 particle, 2 needle (with its coating), 3 grid."""
        out = np.zeros(self.analysis_labels.shape, np.uint8)
        out[self.analysis_labels > 0] = 1
        out[self.analysis_needle_mask] = 2
        out[self.analysis_grid_mask] = 3
        return _upsample(out, self.binning, self.shape)


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
        Pixel size; the options' lengths are rescaled to it (see
        :meth:`AnalysisConfig.at_pixel_size`). Without it the nm values are NaN and
        the particle sizes are read from the frame: the smoothing, the smallest
        particle and the splitting distance follow the typical particle diameter
        measured on it (``cluster["particle_diameter_px"]``).

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
    given = config if config is not None else AnalysisConfig()
    config = given.at_pixel_size(pixel_size_nm)
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D image. Got shape {image.shape}.")
    ready = None
    if given.binning == 0:
        config, _, ready = _choose_binning(image, config, pixel_size_nm=pixel_size_nm)
    # The scale is read on a coarse copy; when the frame is analysed at that same
    # binning, its preparation and opaque objects are the analysis' own.
    first_radius = None
    if ready is not None:
        prepared, needle, first_radius = ready
    else:
        prepared = _prepare(image, config)
        needle = _find_needle(prepared, config)
    b = prepared.binning
    # Measured at analysis resolution, in input pixels: upsampled to be measured, the
    # labels took 125 of 174 ms per frame at 2048² (4x4 binning), for the same table.
    from_image = not (pixel_size_nm is not None and math.isfinite(pixel_size_nm)
                      and pixel_size_nm > 0)
    excluded = needle.mask | needle.grid
    # The flattened frame's histogram without the opaque objects: the segmentation's
    # thresholds and the contact threshold below are read from it.
    histogram = _histogram(prepared.flat, excluded)
    labels, radius, areas = _segment(prepared, excluded, config, from_image=from_image,
                                     first_radius=first_radius, histogram=histogram)
    particles = measure_particles(labels, prepared.image, needle_mask=needle.mask,
                                  pixel_size_nm=pixel_size_nm,
                                  contact_px=config.needle_contact_px, binning=b,
                                  areas_px=areas)
    if particles["label"].size and needle.mask.any():
        touches = _touching(labels, prepared.flat, needle, config, b,
                            _particle_threshold(prepared.flat, excluded, config,
                                                histogram=histogram))
        particles["touches_needle"] = touches[particles["label"]]
    joined = bool(particles["touches_needle"].any()) or (
        bool(particles["label"].size) and needle.mask.any()
        and _joined(labels, prepared.flat, needle, config, b))
    area_px = int(particles["area_px"].sum())
    has_size = pixel_size_nm is not None and math.isfinite(pixel_size_nm)
    diameter_px = 2.0 * radius * b
    diameter_nm = (diameter_px * float(pixel_size_nm)
                   if has_size and pixel_size_nm is not None and diameter_px > 0 else math.nan)
    cluster = {
        "area_px": area_px,
        "area_nm2": (area_px * float(pixel_size_nm) ** 2
                     if has_size and pixel_size_nm is not None else math.nan),
        "particle_count": int(particles["label"].size),
        "needle_contact": bool(particles["touches_needle"].any()),
        "needle_joined": bool(joined),
        "needle_area_px": int(np.count_nonzero(needle.mask)) * b * b,
        "grid_area_px": int(np.count_nonzero(needle.grid)) * b * b,
        "needle_tip_row": needle.tip[0],
        "needle_tip_col": needle.tip[1],
        "particle_diameter_px": diameter_px,
        "particle_diameter_nm": diameter_nm,
        "scale_mismatch": _scale_mismatch(diameter_nm, given.particle_diameter_nm),
        "binning": b,
    }
    analysis = FrameAnalysis(particles=particles, cluster=cluster,
                             contacts=particle_contacts(labels), analysis_labels=labels,
                             analysis_needle_mask=needle.mask, analysis_grid_mask=needle.grid,
                             binning=b, shape=prepared.shape)
    return analysis, prepared, needle


_DEFAULT_DIAMETERS_NM = (20.0, 100.0)
"""The particle diameters the defaults suit (see :class:`AnalysisConfig`)."""
_MISMATCH_FACTOR = 2.0
"""A measured particle diameter more than this factor off the expected one (or outside
the range the defaults suit) flags the pixel size, or the configuration, as wrong."""


def _scale_mismatch(measured_nm: float, expected_nm: float) -> bool:
    """Whether the diameter measured on a frame (nm, NaN without a pixel size or
    particles) is more than ``_MISMATCH_FACTOR`` off ``expected_nm`` (0: the range
    ``_DEFAULT_DIAMETERS_NM``)."""
    if not (math.isfinite(measured_nm) and measured_nm > 0):
        return False
    low, high = (expected_nm, expected_nm) if expected_nm > 0 else _DEFAULT_DIAMETERS_NM
    return bool(measured_nm < low / _MISMATCH_FACTOR or measured_nm > high * _MISMATCH_FACTOR)
