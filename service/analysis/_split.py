"""Touching particles split: markers from darkness and thickness, then a watershed
(scikit-image) or, by shape, the discs they lie deepest inside."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ._prepare import _VACUUM

__all__: list[str] = []

_SPLIT_DISTANCE_WEIGHT = 0.25
"""Flattened grey levels per pixel of distance to the background in the splitting
landscape: enough to separate uniformly grey particles at their neck, too little to
fill the bright rim-to-rim ridge between two particles of a clump (10-20 levels)."""
_SPLIT_SHAPE_WEIGHT = 1.0
"""The same weight without a pixel size: particles of unknown size and material
have diffraction contrast (bend contours, dark facets) as strong as their
thickness contrast, so the outline's shape (the distance transform) leads and the
darkness only breaks its ties."""
_SPLIT_MIN_HEIGHT = 2.0
_SPLIT_NOISE_SIGMAS = 4.0
"""A marker must rise this many landscape-noise sigmas (at least 2 grey levels) above
the saddle to its neighbour."""
_SPLIT_BROAD_SIGMAS = 2.5
"""...and this many sigmas of the broad (all-scale) noise of the particles' landscape.
Chosen on simulated frames (seed 0, 19 frames of a lithiation, 512², 0.5 nm/px):
particle count off by 0-4 (mostly over) at 2 e/A^2/s without it; at 2.5 sigmas
off by -1 to +2 (half the frames exact), and by 0/+-1 at the default dose; at 3.2
sigmas under-split by 1-3 at both doses."""
_CONVEX_SOLIDITY = 0.95
"""A region filling this fraction of its convex hull is convex: one particle, never
split, whatever its diffraction contrast (bend contours, a dark facet, thickness
fringes) puts in its landscape. Two touching discs fill under 0.9 of their hull
until they overlap by more than half a radius; a disc on a 1-px grid fills 0.98,
a regular hexagon or a 2:1 ellipse 1.0."""


def _split(regions: np.ndarray, count: int, spacing: float,
           flat: np.ndarray, distance_weight: float = _SPLIT_DISTANCE_WEIGHT,
           cells_per_spacing: float = 5.0, flood_on_shape: bool = False) -> np.ndarray:
    """Split touching particles: one marker per particle, then a watershed.

    A sphere is thickest, hence darkest in bright field, at its centre, whoever its
    neighbours are; the distance to the background is largest at the centre only for
    a particle on the rim of a clump. So the landscape is the darkness of the
    flattened frame (smoothed at a seventh of ``split_min_distance_px``: more blurs
    away the bright rim-to-rim ridge between touching particles) plus a small
    multiple of the distance transform, which breaks the ties of uniformly grey
    (thickness-less) particles. Markers are its local maxima at least
    ``split_min_distance_px`` inside the particle, each the highest point within half
    its own distance to the background (at least ``split_min_distance_px``): a large
    particle's flat top then yields one marker however noisy. Each region with several
    markers is flooded from them (watershed); the others are left whole.

    References
    ----------
    S. Beucher and F. Meyer, "The morphological approach to segmentation: the
    watershed transformation", in Mathematical Morphology in Image Processing
    (1993) 433-481.
    P. Soille, *Morphological Image Analysis*, 2nd ed., Springer (2003), ch. 6
    (regional maxima, markers).
    """
    # Imported here: scikit-image's import costs a second, paid on the first split.
    from skimage.segmentation import watershed

    rows, cols = regions.shape
    ys, xs = np.nonzero(regions.any(axis=1))[0], np.nonzero(regions.any(axis=0))[0]
    r0, r1 = int(ys[0]), int(ys[-1]) + 1
    c0, c1 = int(xs[0]), int(xs[-1]) + 1
    window = regions[r0:r1, c0:c1]
    # Markers and flooding on a grid reduced to a fifth of the marker spacing: a
    # particle is still many cells across, and h-maxima costs a quarter.
    f = max(1, int(spacing // cells_per_spacing))
    height_px, width_px = window.shape
    pad_r, pad_c = -height_px % f, -width_px % f
    small_size = ((width_px + pad_c) // f, (height_px + pad_r) // f)

    def reduce(array: np.ndarray, border: int | float) -> np.ndarray:
        padded = cv2.copyMakeBorder(array, 0, pad_r, 0, pad_c, cv2.BORDER_CONSTANT,
                                    value=border)
        return cv2.resize(padded, small_size, interpolation=cv2.INTER_AREA)

    coverage = reduce((window > 0).astype(np.float32), 0.0)
    foreground = (coverage >= 0.5).view(np.uint8)
    if not foreground.any():
        return regions
    # Pad so that regions touching the crop edge are not measured against it.
    distance = cv2.distanceTransform(
        cv2.copyMakeBorder(foreground, 1, 1, 1, 1, cv2.BORDER_REPLICATE), cv2.DIST_L2, 5
    )[1:-1, 1:-1] * np.float32(f)
    darkness = reduce(np.float32(_VACUUM) - flat[r0:r1, c0:c1].astype(np.float32), 0.0)
    sigma = max(0.5, spacing / 7 / f)
    darkness = cv2.GaussianBlur(darkness, (0, 0), sigma)
    score = darkness + np.float32(distance_weight) * distance
    # The landscape's own noise, from second differences of neighbouring cells inside
    # the particles (smooth shading cancels), corrected for the correlation the
    # Gaussian smoothing put between them: markers must stand out of it (h-maxima),
    # or noise splits a particle.
    inner = distance >= max(1.0, spacing)
    three = inner[:, 2:] & inner[:, 1:-1] & inner[:, :-2]
    if not three.any():
        return regions
    curvature = (darkness[:, 2:] - 2 * darkness[:, 1:-1] + darkness[:, :-2])[three]
    rho1, rho2 = (math.exp(-k * k / (4.0 * sigma * sigma)) for k in (1, 2))
    noise = 1.4826 * float(np.median(np.abs(curvature))) / math.sqrt(
        max(6.0 - 8.0 * rho1 + 2.0 * rho2, 1e-6))
    # Second differences see only what the smoothing left of the fine-grained noise;
    # the broad bumps that make false maxima are larger (at 2 e/A^2/s particles split
    # into 2-4 extra pieces). Clear vacuum (far from every object, not opaque) holds
    # the landscape's noise at all scales; scaled by the square root of the particles'
    # transmission it is theirs (shot noise).
    height = max(_SPLIT_MIN_HEIGHT, _SPLIT_NOISE_SIGMAS * noise)
    clear = cv2.distanceTransform((coverage == 0).view(np.uint8), cv2.DIST_L2, 3) \
        > 3 * sigma + 2
    vacuum = darkness[clear]
    vacuum = vacuum[vacuum < 0.2 * _VACUUM]  # not the needle or the grid
    if vacuum.size >= 64:
        broad = 1.4826 * float(np.median(np.abs(vacuum - np.median(vacuum))))
        transmission = float(np.median(flat[r0:r1, c0:c1][window > 0])) / _VACUUM
        broad *= math.sqrt(min(max(transmission, 0.05), 1.0))
        height = max(height, _SPLIT_BROAD_SIGMAS * broad)
    peaks = _h_maxima(score, height) & inner
    n_peaks, markers = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8)
    if n_peaks <= 2:
        return regions
    small_window = cv2.copyMakeBorder(window, 0, pad_r, 0, pad_c, cv2.BORDER_CONSTANT,
                                      value=0)[::f, ::f]
    region_of = np.zeros(n_peaks, np.int64)
    region_of[markers[peaks]] = small_window[peaks]
    region_of[0] = 0
    per_region = np.bincount(region_of[1:], minlength=count + 1)
    per_region[0] = 0
    crowded = per_region >= 2
    for region in np.flatnonzero(crowded):
        crowded[region] = not _is_convex(window == region)
    if not crowded.any():
        return regions
    lonely = ~crowded[region_of]
    lonely[0] = False
    markers[lonely[markers]] = 0
    inside = crowded[window]
    # Flood every cell that holds any pixel of a crowded region, so that scaled back
    # up, the pieces cover the region.
    reach = reduce(inside.astype(np.float32), 0.0) > 0
    flooded_small = watershed(  # type: ignore[no-untyped-call]
        -score, markers, mask=reach)
    if flood_on_shape:
        flooded_small = _deepest_disc(flooded_small, distance, reach, small_window,
                                      region_of)
    flooded = np.repeat(np.repeat(flooded_small, f, axis=0), f, axis=1)[:height_px, :width_px]
    # Consecutive labels: uncrowded regions keep theirs, split pieces follow.
    out = window.copy()
    pieces = np.flatnonzero(np.bincount(flooded_small.ravel()))
    pieces = pieces[pieces > 0]
    lookup = np.zeros(int(flooded.max()) + 1, np.int32)
    lookup[pieces] = np.arange(count + 1, count + 1 + pieces.size, dtype=np.int32)
    out[inside] = lookup[flooded[inside]]
    result = np.zeros_like(regions)
    result[r0:r1, c0:c1] = out
    used = np.flatnonzero(np.bincount(result.ravel()))
    relabel = np.zeros(int(used.max()) + 1, np.int32)
    relabel[used] = np.arange(used.size, dtype=np.int32)
    relabelled: np.ndarray = relabel[result]
    return relabelled


_SQUARE = np.ones((3, 3), np.uint8)


def _h_maxima(image: np.ndarray, height: float) -> np.ndarray:
    """bool mask of the maxima of ``image`` (float32) at least ``height`` high:
    :func:`skimage.morphology.h_maxima`, pixel for pixel, with its reconstruction by
    dilation done as repeated OpenCV dilations (a few dozen on a particle landscape)
    instead of scikit-image's sort of every pixel, ten times slower on these windows.

    References
    ----------
    P. Soille, *Morphological Image Analysis*, 2nd ed., Springer (2003), ch. 6.
    L. Vincent, "Morphological grayscale reconstruction in image analysis:
    applications and efficient algorithms", IEEE Trans. Image Process. 2 (1993)
    176-201.
    """
    if height > np.ptp(image):
        return np.zeros(image.shape, np.bool_)
    # As scikit-image: the seed lies ``height`` below, less a rounding allowance.
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    reconstructed = np.minimum(image - height - resolution, image)
    while True:  # geodesic dilation under the image until nothing changes
        grown = np.minimum(cv2.dilate(reconstructed, _SQUARE), image)
        if np.array_equal(grown, reconstructed):
            break
        reconstructed = grown
    peaks: np.ndarray = (image - reconstructed) >= height
    return peaks


def _deepest_disc(pieces: np.ndarray, distance: np.ndarray, reach: np.ndarray,
                  small_regions: np.ndarray, region_of: np.ndarray) -> np.ndarray:
    """Each cell of ``reach`` to the piece whose disc it lies deepest inside.

    A piece (of a first, marker-driven watershed) stands for one particle, a disc: its
    centre the piece's deepest point (largest distance to the background), its radius
    that distance. A cell goes to the disc maximizing radius minus distance to the
    centre, among the discs of its own region (an additively weighted Voronoi
    partition): the exact split of overlapping discs, whose boundary runs through the
    points where their outlines cross, wherever the intensity inside them put its
    bends and facets.

    References
    ----------
    F. Aurenhammer, "Voronoi diagrams - a survey of a fundamental geometric data
    structure", ACM Comput. Surv. 23 (1991) 345-405.
    """
    ids = np.flatnonzero(np.bincount(pieces.ravel()))
    ids = ids[ids > 0]
    rows, cols = np.nonzero(reach)
    region = small_regions[rows, cols]
    best = np.full(rows.size, -np.inf, np.float32)
    label = np.zeros(rows.size, np.int32)
    for piece in ids:
        r, c = np.nonzero(pieces == piece)
        depth_in = distance[r, c]
        deepest = depth_in >= depth_in.max() - 0.5
        centre_r, centre_c = float(r[deepest].mean()), float(c[deepest].mean())
        radius = float(depth_in.max())
        depth = radius - np.hypot(rows - centre_r, cols - centre_c).astype(np.float32)
        depth[(region > 0) & (region != region_of[piece])] = -np.inf
        better = depth > best
        best[better] = depth[better]
        label[better] = piece
    out = np.zeros(pieces.shape, np.int32)
    out[rows, cols] = label
    return out


def _is_convex(mask: np.ndarray) -> bool:
    """Whether the region ``mask`` fills ``_CONVEX_SOLIDITY`` of its convex hull."""
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return True
    points = np.concatenate(contours)
    hull = cv2.convexHull(points)
    # Areas in pixels counted (not polygon areas, which leave out half the outline).
    hull_mask = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    hull_area = int(np.count_nonzero(hull_mask))
    return bool(hull_area == 0 or np.count_nonzero(mask) >= _CONVEX_SOLIDITY * hull_area)
