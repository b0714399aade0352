"""Particles: seeded, outlined and cut back to their own contrast, at a scale read
from the frame when no pixel size is known (OpenCV)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ._config import AnalysisConfig
from ._prepare import (
    _VACUUM,
    _blur_width,
    _bounds,
    _boxed_components,
    _components,
    _histogram,
    _particle_threshold,
    _Prepared,
    _scale_threshold,
    _vacuum_noise,
)
from ._split import _SPLIT_SHAPE_WEIGHT, _split

__all__: list[str] = []

_SMOOTHING_PER_RADIUS = 5.0
"""Without a pixel size, particles are smoothed at their radius over this."""
_SCALE_ROUNDS = 4
_SCALE_GROWTH = 1.25
"""Without a pixel size, the frame is smoothed again at the scale measured after
smoothing while that grew by more than this factor, at most ``_SCALE_ROUNDS`` times."""
_MIN_AREA_FLOOR_PX = 6
"""No region under this many analysis pixels is a particle: a blob of smoothed noise
at 4 sigmas is about this big at the smallest smoothing."""
_EDGE_MIN_AREA_PX = 2 * _MIN_AREA_FLOOR_PX
"""Regions cut by the frame edge are particles down to this many analysis pixels."""
_OUTLINE_MIN_CONTRAST = 0.05
_OUTLINE_NOISE_SIGMAS = 4.0
"""A particle's outline is where it is darker than the vacuum by this much (relative)
plus this many sigmas of the flattened vacuum's noise (flattening leaves the vacuum
within a few percent of its level)."""


def _half_contrast(flat: np.ndarray, components: np.ndarray, count: int, keep: np.ndarray,
                   smoothing_px: float, grown: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The kept regions cut back to where they are half as dark as their own rim.

    A blurred edge crosses half-way between the two levels it separates exactly at the
    edge, whatever the contrast: each region's rim level is read just inside its
    outline, past the blur, and its boundary drawn at half-way between that level and
    the vacuum. The outline near the vacuum (which finds faint particles and keeps a
    clump in one piece) lies a blur width outside the particles, by a share of the
    area that changes as they swell. ``smoothing_px``: the Gaussian sigma ``flat`` was
    smoothed at (analysis px), which sets how far in the blur reaches.

    ``grown``: the kept regions' pixels (``keep[components]``).

    Returns the mask and each region's cut level (NaN where the outline was kept).
    """
    inner = cv2.distanceTransform(grown.view(np.uint8), cv2.DIST_L2, 5)
    blur = _blur_width(smoothing_px)
    ring = (inner > blur) & (inner <= blur + 2.0)
    ids = components[ring]
    total = np.bincount(ids, weights=flat[ring].astype(np.float64), minlength=count)
    number = np.bincount(ids, minlength=count)
    rim = np.full(count, np.nan)
    np.divide(total, number, out=rim, where=number > 0)
    # Regions too small to have a rim beyond the blur keep their outline.
    cut = np.where(np.isfinite(rim), (rim + _VACUUM) / 2.0, float(_VACUUM))
    cut[0] = 0.0
    result: np.ndarray = grown & (flat < cut[components])
    return result, np.where(np.isfinite(rim), cut, np.nan)


def _boundary_areas(labels: np.ndarray, flat: np.ndarray, level: np.ndarray,
                    excluded: np.ndarray) -> np.ndarray:
    """Each label's area (analysis px², indexed by label) with its outline placed
    between pixels: where the smoothed frame ``flat`` crosses the label's cut
    ``level`` (per label), interpolated linearly between the pixel inside and its
    4-neighbour outside.

    The pixel count puts every outline half-way between the two pixel centres. Along
    a row, the run of a particle's pixels is lengthened at each end by how far past
    that half-way point the interpolated crossing lies (-0.5 to +0.5 px); summed
    over the rows this is the area by the midpoint rule across rows, and the same
    along columns; the two are averaged, so that an outline nearly parallel to one
    axis is still measured across it by the other. Boundaries with another particle,
    the needle or the grid (``excluded``) and the frame edge are not moved: the split
    and the opaque objects are not intensity edges of this particle.

    References
    ----------
    W. E. Lorensen and H. E. Cline, "Marching cubes: a high resolution 3D surface
    construction algorithm", Comput. Graph. 21 (1987) 163-169 (the crossing placed by
    linear interpolation between samples).
    """
    size = int(labels.max()) + 1
    area = np.bincount(labels.ravel(), minlength=size).astype(np.float64)
    values = flat.astype(np.float32)
    free = (labels == 0) & ~excluded
    shift = np.zeros(size, np.float64)
    for axis in (0, 1):
        first = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        second = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        a, b = labels[first], labels[second]
        va, vb = values[first], values[second]
        for inside, outside, v_in, v_out in ((a, free[second], va, vb),
                                             (b, free[first], vb, va)):
            edge = (inside > 0) & outside
            ids = inside[edge]
            low, high = v_in[edge], v_out[edge]
            rise = high - low
            cut = level[ids].astype(np.float32)
            t = np.clip((cut - low) / np.where(rise > 0, rise, 1.0), 0.0, 1.0)
            moved = np.where(rise > 0, t - 0.5, 0.0)
            shift += np.bincount(ids, weights=moved, minlength=size)
    result: np.ndarray = area + shift / 2.0
    result[0] = 0.0
    return result


_DISTANCE_COLUMNS = 16
"""Column alignment of :func:`_boxed_distance`'s box: aligned to 4 columns, the box
already gave the whole frame's distances where unaligned it differed in the last bit;
16 is a multiple of every float32 vector width OpenCV builds for (4, 8, 16)."""


def _particle_radius(foreground: np.ndarray, min_area: int) -> float:
    """Typical particle radius (analysis px) of a foreground mask: the area-weighted
    median of each region's largest inscribed radius (the peak of its distance
    transform), regions under ``min_area`` left out; 0 without any region.

    The inscribed radius of a clump of touching particles is one particle's, so dense
    clusters do not inflate the scale, and weighting by area lets noise specks (many,
    but small) count for little.
    """
    count, components, area, _, box = _boxed_components(foreground.view(np.uint8))
    if count <= 1:
        return 0.0
    areas = area[1:].astype(np.float64)
    keep = np.flatnonzero(areas >= max(1, min_area)) + 1
    if keep.size == 0:
        return 0.0
    distance = _boxed_distance(foreground, box)
    # Each region's peak is a local maximum of its distance transform (its 8
    # neighbours are its own pixels or background, at 0): the peaks are read from
    # those few pixels, not by sorting every pixel by label as scipy's does.
    top = np.flatnonzero((distance >= cv2.dilate(distance, np.ones((3, 3), np.uint8)))
                         & (distance > 0))
    highest = np.zeros(count, np.float32)
    np.maximum.at(highest, components.ravel()[top], distance.ravel()[top])
    peaks = highest[keep].astype(np.float64)
    weights = areas[keep - 1]
    order = np.argsort(peaks)
    cumulative = np.cumsum(weights[order])
    return float(peaks[order][int(np.searchsorted(cumulative, cumulative[-1] / 2))])


def _boxed_distance(foreground: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """The distance transform of ``foreground`` (bool, every set pixel inside ``box``)
    in ``box``, as on the whole frame with its edges replicated (a region cut by the
    frame edge goes on beyond it).

    The box is padded as the frame would be there: the frame's edge replicated,
    background beyond the box's other sides (nothing outside the box is nearer
    background than that ring). OpenCV's float distances can differ in the last bit
    with a pixel's place along its row, so the transformed box starts on a multiple of
    ``_DISTANCE_COLUMNS`` columns and its padded rows are a whole number of them long
    (or end at the frame's edge): the same values as on the whole frame.
    """
    rows, cols = foreground.shape
    c0 = box[1].start // _DISTANCE_COLUMNS * _DISTANCE_COLUMNS
    c1 = min(cols, box[1].stop + (-(box[1].stop - c0 + 2)) % _DISTANCE_COLUMNS)
    padded = cv2.copyMakeBorder(foreground[box[0], c0:c1].view(np.uint8), 1, 1, 1, 1,
                                cv2.BORDER_REPLICATE)
    if box[0].start > 0:
        padded[0] = 0
    if box[0].stop < rows:
        padded[-1] = 0
    if c0 > 0:
        padded[:, 0] = 0
    if c1 < cols:
        padded[:, -1] = 0
    distance: np.ndarray = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[
        1:-1, 1 + box[1].start - c0: 1 + box[1].stop - c0]
    return distance


def _fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with its enclosed background pockets under ``max_area`` filled: a
    particle's bright facet, thin spot or Fresnel fringe is part of it, while a larger
    pocket (vacuum ringed by several particles) stays background."""
    background = (~mask).view(np.uint8)
    count, components, area, on_edge = _components(background, 4)
    if count <= 1:
        return mask
    hole = ~on_edge & (area < max_area)
    hole[0] = False
    if not hole.any():
        return mask
    filled: np.ndarray = mask | hole[components]
    return filled


@dataclass(frozen=True, slots=True)
class _Scale:
    """The particle scale a frame was segmented at (analysis px)."""

    radius_px: float
    """Typical particle radius measured on the frame (0: no particle)."""
    smoothing_sigma_px: float
    min_area_px: float
    split_min_distance_px: float


def _sizes(radius: float, config: AnalysisConfig, binning: int,
           from_image: bool) -> _Scale:
    """Sizes to segment at, in analysis px: from the measured particle radius when
    ``from_image`` (no pixel size known), else the configured ones."""
    base_sigma = config.smoothing_sigma_px / binning
    if not from_image or radius <= 0:
        # Binned coarser than the reference pixel (large particles, see _resolution),
        # the configured smallest particle may shrink to a speck of noise or of a
        # needle's blurred rim: never under the floor.
        return _Scale(radius, base_sigma,
                      max(_MIN_AREA_FLOOR_PX, config.min_particle_area_px / binning ** 2),
                      config.split_min_distance_px / binning)
    return _Scale(
        radius_px=radius,
        # A fifth of the radius smooths the noise and the texture inside a particle
        # while moving its half-contrast outline by a fraction of a pixel.
        smoothing_sigma_px=max(base_sigma, radius / _SMOOTHING_PER_RADIUS),
        # A particle of a third of the typical diameter is still a particle; smaller
        # regions are the noise's and the support's dark spots.
        min_area_px=max(_MIN_AREA_FLOOR_PX, math.pi * (radius / 3) ** 2),
        # Particles down to half the typical radius are split off a clump.
        split_min_distance_px=max(1.0, radius / 2),
    )


def _segment(prepared: _Prepared, needle: np.ndarray, config: AnalysisConfig,
             *, from_image: bool = False, first_radius: float | None = None,
             histogram: np.ndarray | None = None,
             ) -> tuple[np.ndarray, float, np.ndarray | None]:
    """int32 labels at analysis resolution, the particle radius (analysis px)
    measured on the frame, and the particles' areas (analysis px², indexed by label)
    with sub-pixel outlines (:func:`_boundary_areas`; None with
    ``subpixel_areas=False`` or no particle); ``needle``: every opaque pixel to leave
    out.

    ``from_image``: no pixel size is known, so the smoothing, the minimum area and the
    splitting distance follow the particle radius measured here (a first pass at the
    configured smoothing) rather than the configured lengths. ``first_radius``: that
    first pass's radius when already measured on this copy (by the particle scale
    read, :mod:`._resolution`, on the same regions). ``histogram``: the flattened
    frame's :func:`_histogram` without ``needle``, when the caller made it already.

    On the frame smoothed at that scale, particles are seeded below the noise-capped
    Otsu threshold, outlined where they rise into the vacuum's fluctuation and cut back
    to half their own rim contrast (:func:`_half_contrast`): the outline then stays on
    each particle's edge whatever its darkness, whether a crystal's diffraction
    contrast or a particle lightening as it lithiates.
    """
    flat = prepared.flat
    b = prepared.binning
    if not flat.any():
        return np.zeros(flat.shape, np.int32), 0.0, None
    base = flat
    # The unsmoothed frame's histogram, read by every threshold taken on it.
    if histogram is None:
        histogram = _histogram(base, needle)
    otsu = _particle_threshold(base, needle, config, capped=False, histogram=histogram)
    # The first scale at the scale's own threshold: at the configured smoothing, a
    # noisy frame's noise cap keeps only fragments of faint particles.
    radius = (_particle_radius(
        (base < _scale_threshold(base, needle, config, histogram=histogram)) & ~needle,
        _MIN_AREA_FLOOR_PX) if first_radius is None else first_radius)
    base_sigma = config.smoothing_sigma_px / b
    weight = (~needle).astype(np.float32)
    for _ in range(_SCALE_ROUNDS):
        scale = _sizes(radius, config, b, from_image)
        if scale.smoothing_sigma_px > base_sigma + 0.25:
            extra = math.sqrt(scale.smoothing_sigma_px ** 2 - base_sigma ** 2)
            # Normalized convolution leaving out the opaque objects: smoothed with
            # the rest, their darkness would spill past their rim and be taken for
            # particles hugging them.
            total = cv2.GaussianBlur(base.astype(np.float32) * weight, (0, 0), extra)
            norm = cv2.GaussianBlur(weight, (0, 0), extra)
            flat = np.where(needle | (norm < 1e-3), base, np.clip(
                total / np.maximum(norm, 1e-3) + 0.5, 0, 255)).astype(np.uint8)
            flat_histogram = _histogram(flat, needle)
            # Otsu's threshold stays the one between the two classes' levels (at the
            # configured smoothing); only the noise cap is the smoother frame's.
            threshold = min(otsu, _particle_threshold(flat, needle, config,
                                                      histogram=flat_histogram))
        else:
            flat, flat_histogram = base, histogram
            threshold = _particle_threshold(flat, needle, config, histogram=histogram)
        if not from_image:
            break
        # Smoothed at the particles' scale, fragments of a faint particle join up:
        # measured again, the scale grows, and the frame is smoothed again.
        # (Measured, like the first, at the scale's threshold on the smoothed frame:
        # the noise cap would cut faint particles into pieces.)
        measured = _particle_radius(
            (flat < _scale_threshold(flat, needle, config, histogram=flat_histogram))
            & ~needle,
            round(scale.min_area_px))
        grew = measured > _SCALE_GROWTH * radius
        radius = measured
        if not grew:
            break
    scale = _sizes(radius, config, b, from_image)
    sigma = scale.smoothing_sigma_px
    # Particles are found at the threshold (seeds) and outlined where they rise into
    # the vacuum's fluctuation (hysteresis), then each is cut back to half its own
    # rim contrast (_half_contrast). A threshold between the classes' means cuts a
    # particle inside its blurred rim, and deeper as lithiation makes it lighter
    # (a rim from 0.6 to 0.7 of vacuum moved that outline 1.1 px; near the vacuum,
    # 0.3 px), which biased A/A0 by 8 % over a swelling; on real crystals, each its
    # own darkness, it cut the fainter ones inside their outline. The outline clears
    # both the pixel noise (neighbour differences) and the support's texture (the
    # histogram's spread, in the noise cap), so that it never wanders into either.
    outline = max(threshold, min(
        round(_VACUUM * (1.0 - _OUTLINE_MIN_CONTRAST)
              - _OUTLINE_NOISE_SIGMAS * _vacuum_noise(flat, threshold, sigma)),
        _particle_threshold(flat, needle, config, noise_led=True,
                            histogram=flat_histogram)))
    foreground = (flat < outline) & ~needle
    # Labelled in the box holding the outlined pixels (with room for the margin of
    # the kept regions' box below): the same regions, numbered alike.
    count, components, area, cut, held = _boxed_components(foreground.view(np.uint8),
                                                           _BOX_MARGIN_PX)
    # A particle cut by the frame edge shows only part of its area: it is kept down
    # to the size of a noise speck.
    min_area = np.where(cut, min(scale.min_area_px, _EDGE_MIN_AREA_PX), scale.min_area_px)
    # Seeded by a quarter of a smallest particle below the threshold, so that a patch
    # of vacuum a little off its level is not grown into a particle.
    seeds = np.bincount(components[(flat[held] < threshold) & foreground[held]],
                        minlength=count)
    keep = (area >= min_area) & (seeds >= min_area / 4)
    keep[0] = False
    if not keep.any():
        return np.zeros(flat.shape, np.int32), radius, None
    # From here on every step is local to the kept regions (a cut-back, holes, a
    # split, outlines): done on their bounding box with a margin of background, the
    # same results at a fraction of the cost (at 2048², 0.4 nm/px, the particles'
    # box is 3 % of the frame).
    grown = np.take(keep, components)
    # (On even rows and columns: the regions are labelled again in it, numbered as in
    # the frame.)
    inner = _bounds(grown, _BOX_MARGIN_PX, even=True)
    assert inner is not None  # keep.any(): some region is kept
    window = (slice(held[0].start + inner[0].start, held[0].start + inner[0].stop),
              slice(held[1].start + inner[1].start, held[1].start + inner[1].stop))
    result = np.zeros(flat.shape, np.int32)
    flat, components, grown, needle = (flat[window], components[inner], grown[inner],
                                       needle[window])
    foreground, levels = _half_contrast(flat, components, count, keep, sigma, grown)
    # Each region's cut level over its pixels, for the sub-pixel outline (where the
    # outline was kept, its own level).
    cut_image = np.where(keep, np.nan_to_num(levels, nan=float(outline)), 0.0).astype(
        np.float32)[components]
    if radius > 0:
        foreground = _fill_holes(foreground, math.pi * radius ** 2) & ~needle
    # Labelled again: holes filled join their particle, and a sliver the cut-back
    # left is judged on its own size. (The box's edges are background but where they
    # are the frame's: a region on its edge is cut by the frame edge.)
    count, components, area, cut = _components(foreground.view(np.uint8))
    keep = area >= np.where(
        cut, min(scale.min_area_px, _EDGE_MIN_AREA_PX), scale.min_area_px)
    keep[0] = False
    if not keep.any():
        return result, radius, None
    lookup = np.zeros(count, np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels: np.ndarray = lookup[components]
    if config.split_touching:
        if not from_image:
            labels = _split(labels, int(keep.sum()), scale.split_min_distance_px, flat)
        else:
            # Without a pixel size the marker spacing is half the typical radius and
            # the grid a seventh of it (at a fifth, whether two discs of radius 40 and
            # 30 px were split hung on the rounding of the spacing).
            labels = _split(labels, int(keep.sum()), scale.split_min_distance_px, flat,
                            _SPLIT_SHAPE_WEIGHT, cells_per_spacing=7.0, flood_on_shape=True)
    result[window] = labels
    if not config.subpixel_areas:
        return result, radius, None
    # The split moves pixels between the pieces of one region, and filled holes lie
    # inside theirs: every label's pixels carry its region's cut (or 0, a filled hole).
    level = np.zeros(int(labels.max()) + 1, np.float32)
    placed = (labels > 0) & (cut_image > 0)
    level[labels[placed]] = cut_image[placed]
    return result, radius, _boundary_areas(labels, flat, level, needle)


_BOX_MARGIN_PX = 2
"""Background kept around the particles' bounding box (at least one pixel: holes open
to it and outlines next to it are judged as on the whole frame)."""

