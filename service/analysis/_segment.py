"""Flatten the illumination, find the needle, segment the particles (OpenCV).

The pipeline, shared by the public functions and :func:`analyze_frame`:

1. smooth (Gaussian) and flatten: divide by the vacuum level, interpolated across
   objects by normalized convolution on a coarse grid, so thresholds are fractions
   of the local vacuum level and a gradient in the illumination does not matter;
2. opaque regions (below ``needle_threshold_fraction``) connected to an image edge
   are told apart by shape: the grid bar when they cover most of one image side (up
   to its fitted straight inner edge), the needle when widest where they enter and
   reaching in (plus its LiOx coating, measured on each frame), else particles;
3. particles are seeded below an Otsu threshold capped by the frame's noise,
   outlined where they rise into the vacuum's fluctuation (hysteresis) and cut back
   to half their own rim contrast; without a pixel size the smoothing, minimum area
   and splitting distance follow the particle scale measured on the frame; holes
   are filled, particles cut by the frame edge kept, and touching particles split
   (never a convex region) by thickness with a pixel size, by shape without one.
"""

from __future__ import annotations

import math

import numpy as np

from ._config import AnalysisConfig
from ._needle import _find_needle
from ._particles import _segment
from ._prepare import _bin_mask, _prepare, _upsample

__all__ = ["detect_needle", "segment_particles"]


def detect_needle(image: np.ndarray, *, config: AnalysisConfig | None = None,
                  pixel_size_nm: float | None = None) -> np.ndarray:
    """Mask of the needle: the opaque region connected to an image edge, with its coating.

    Parameters
    ----------
    image : (M, N) ndarray
        A bright-field frame (uint8, uint16 or float); not modified.
    config : AnalysisConfig, optional
        ``needle_threshold_fraction``, ``needle_min_area_px``, ``needle_layer_px``,
        ``smoothing_sigma_px``, ``background_sigma_px``, ``binning`` are used.
    pixel_size_nm : float, optional
        Pixel size; the options' lengths are rescaled to it (see
        :meth:`AnalysisConfig.at_pixel_size`). Without it, the reference size.

    Returns
    -------
    mask : (M, N) ndarray of bool
        True on the needle (metal and the grey LiOx layer hugging it). All False if
        no dark region reaches an edge.

    Notes
    -----
    The frame is first divided by its local vacuum level (see
    :func:`segment_particles`), so the threshold is a fraction of the vacuum
    intensity wherever the needle is. The coating is taken as the grey pixels within
    ``needle_layer_px`` of the metal; particle pixels that close to the metal are
    counted as needle, a band of a few pixels where a particle presses on the tip.
    """
    config = (config if config is not None else AnalysisConfig()).at_pixel_size(pixel_size_nm)
    prepared = _prepare(image, config)
    return _upsample(_find_needle(prepared, config).mask, prepared.binning, prepared.shape)


def segment_particles(
    image: np.ndarray,
    *,
    needle_mask: np.ndarray | None = None,
    config: AnalysisConfig | None = None,
    pixel_size_nm: float | None = None,
) -> np.ndarray:
    """Label the particles of a bright-field frame (darker than vacuum, not the needle).

    Parameters
    ----------
    image : (M, N) ndarray
        A bright-field frame (uint8, uint16 or float); not modified.
    needle_mask : (M, N) ndarray of bool, optional
        Pixels to leave out, usually from :func:`detect_needle`. If omitted, the
        needle is detected here; pass an all-False mask to leave nothing out.
    config : AnalysisConfig, optional
        Segmentation options; defaults to ``AnalysisConfig()``.
    pixel_size_nm : float, optional
        Pixel size; the options' lengths are rescaled to it (see
        :meth:`AnalysisConfig.at_pixel_size`). Without it, the reference size.

    Returns
    -------
    labels : (M, N) ndarray of int32
        0 for background and needle, 1..n for particles.

    Notes
    -----
    The illumination is flattened by dividing the smoothed frame by its vacuum level,
    estimated on a coarse grid by normalized convolution of the vacuum pixels
    (Knutsson and Westin) and interpolated back. Particles are the pixels under
    Otsu's threshold of the flattened frame, the threshold capped at
    ``1 - particle_min_contrast`` of vacuum so that an empty frame stays empty;
    regions under ``min_particle_area_px`` are dropped. With ``split_touching``,
    touching particles are separated: local maxima of the distance transform are
    particle centres and radii, and each pixel goes to the disc it lies deepest
    inside (an additively weighted Voronoi partition, the exact split of
    overlapping discs). The split moves pixels between particles, never out of them.

    References
    ----------
    N. Otsu, "A threshold selection method from gray-level histograms",
    IEEE Trans. Syst. Man Cybern. 9 (1979) 62-66.
    H. Knutsson and C.-F. Westin, "Normalized and differential convolution",
    Proc. CVPR (1993) 515-523.
    F. Aurenhammer, "Voronoi diagrams - a survey of a fundamental geometric data
    structure", ACM Comput. Surv. 23 (1991) 345-405.
    """
    config = (config if config is not None else AnalysisConfig()).at_pixel_size(pixel_size_nm)
    prepared = _prepare(image, config)
    if needle_mask is None:
        found = _find_needle(prepared, config)
        needle = found.mask | found.grid
    else:
        needle = _bin_mask(needle_mask, prepared)
    from_image = not (pixel_size_nm is not None and math.isfinite(pixel_size_nm)
                      and pixel_size_nm > 0)
    labels = _segment(prepared, needle, config, from_image=from_image)[0]
    return _upsample(labels, prepared.binning, prepared.shape)
