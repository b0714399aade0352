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
from dataclasses import dataclass

import cv2
import numpy as np

from ._config import AnalysisConfig

__all__ = ["detect_needle", "segment_particles"]

_VACUUM = 128
"""Flattened images are uint8 with the vacuum level at this value (headroom above)."""
_COARSE_SIDE = 64
"""The illumination is estimated on a grid about this many cells on its short side."""
_HOT_PIXEL_CEILING = 1.5
"""Pixels brighter than this multiple of the brightest coarse cell are camera defects
(hot pixels, cosmic rays): clipped before smoothing so they do not punch holes in
particles or bias the vacuum level."""
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
_SMOOTHING_PER_RADIUS = 5.0
"""Without a pixel size, particles are smoothed at their radius over this."""
_SCALE_ROUNDS = 4
_SCALE_GROWTH = 1.25
"""Without a pixel size, the frame is smoothed again at the scale measured after
smoothing while that grew by more than this factor, at most ``_SCALE_ROUNDS`` times."""
_MIN_AREA_FLOOR_PX = 6
"""Without a pixel size, no region under this many analysis pixels is a particle: a
blob of smoothed noise at 4 sigmas is about this big at the smallest smoothing."""
_EDGE_MIN_AREA_PX = 2 * _MIN_AREA_FLOOR_PX
"""Regions cut by the frame edge are particles down to this many analysis pixels."""
_VACUUM_BAND = 0.075
"""Coarse cells within this fraction of the fitted upper envelope are vacuum when the
illumination is estimated."""
_CONVEX_SOLIDITY = 0.95
"""A region filling this fraction of its convex hull is convex: one particle, never
split, whatever its diffraction contrast (bend contours, a dark facet, thickness
fringes) puts in its landscape. Two touching discs fill under 0.9 of their hull
until they overlap by more than half a radius; a disc on a 1-px grid fills 0.98,
a regular hexagon or a 2:1 ellipse 1.0."""
_GRID_SIDE_FRACTION = 0.6
"""An opaque edge region covering this fraction of an image side is a grid bar."""
_GRID_EDGE_TOLERANCE_PX = 1.5
"""Opaque pixels this far beyond the grid bar's fitted inner edge still belong to it
(its edge is a straight line through noisy runs)."""
_NEEDLE_BULGE = 1.08
_NEEDLE_REACH = 0.8
"""An opaque object entering from an edge is the needle if nowhere wider than this
multiple of its width at the edge (a needle tapers; a disc whose centre is in the frame
bulges: by 1.09 or more when its centre is 0.4 radii in) and it reaches into the frame
at least this multiple of that width (a disc cut at or beyond its centre reaches at
most half its chord)."""
_COATING_MIN_RIM = 0.1
"""A coating is measured when grey runs start from at least this fraction of the
metal's rim (a tip coated over its apex and a little of its shaft)."""
_OUTLINE_MIN_CONTRAST = 0.05
_OUTLINE_NOISE_SIGMAS = 4.0
"""A particle's outline is where it is darker than the vacuum by this much (relative)
plus this many sigmas of the flattened vacuum's noise (flattening leaves the vacuum
within a few percent of its level)."""
_NOISE_ROW_STEP = 4
"""The vacuum's noise is measured on every this many rows."""
_SHAPE_SAMPLES = 20000
"""An opaque object's shape is judged on about this many of its pixels (and all those
where it enters): a needle across a 1024x1024 frame has ten times more."""
_COATING_MIN_CONTRAST = 0.03
_COATING_NOISE_SIGMAS = 4.0
"""The coating is what is darker than the vacuum by this much (relative) plus this
many sigmas of the flattened vacuum's noise, or than the particle threshold if that
is lighter."""
_COATING_QUANTILE = 0.6
"""The quantile of the grey runs from the metal's rim taken for the coating's
thickness: runs along the coating's tapered ends are shorter, through a particle
pressed on it longer."""
_COATING_MARGIN = 1.1
"""The coating reaches this multiple of its median measured thickness (plus a pixel):
its outer edge is blurred and, on a rounded tip, a little farther than along the
shaft."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A frame ready for thresholding, at analysis (binned) resolution."""

    flat: np.ndarray
    """uint8, smoothed image over the vacuum level, vacuum at ``_VACUUM``; None if blank."""
    binning: int
    shape: tuple[int, int]
    """Shape of the input frame."""
    image: np.ndarray
    """The input frame at analysis resolution, what intensities are measured on: each
    pixel the mean of its ``binning``² block of raw counts (float32), before any
    correction; the input frame itself when unbinned."""


@dataclass(frozen=True, slots=True)
class _Needle:
    mask: np.ndarray
    """bool, the needle with its coating, at analysis resolution."""
    core: np.ndarray
    """bool, the opaque metal only."""
    grid: np.ndarray
    """bool, opaque regions running along an image side (grid bars), with their rim."""
    tip: tuple[float, float]
    """(row, col) of the metal's apex: the mean of its pixels (nearly) farthest from where
    the needle enters the frame, in input pixels."""
    contact: np.ndarray | None = None
    """bool, the needle's outer surface (the coating's outer edge, at half its
    contrast): particles touching it touch the needle. None: ``mask``."""


def _as_float(image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D image. Got shape {image.shape}.")
    return image.astype(np.float32)  # a copy: the caller's array is never touched


def _otsu_index(hist: np.ndarray) -> int:
    """Otsu's threshold on a histogram: the last bin of the lower class."""
    p = hist.astype(np.float64)
    total = p.sum()
    if total <= 0:
        return len(p) - 1
    p /= total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    between = (mu[-1] * omega - mu) ** 2
    denominator = omega * (1.0 - omega)
    valid = denominator > 1e-12
    between[valid] /= denominator[valid]
    between[~valid] = -1.0
    return int(np.argmax(between))


def _vacuum_level(smooth: np.ndarray, config: AnalysisConfig, binning: int) -> np.ndarray | None:
    """The local vacuum (background) level at every pixel, or None for a blank frame.

    On a coarse grid: first the upper envelope of the frame as a quadratic surface
    (least squares, refitted on the pixels not darker than the last fit, so objects
    drop out whatever the gradient); then, with vacuum taken as everything within
    half the particle contrast of that surface, the vacuum pixels interpolated across
    the objects by normalized convolution, which follows illumination shapes a
    quadratic cannot. Twice, re-selecting the vacuum against the new level.
    """
    rows, cols = smooth.shape
    factor = max(1, min(rows, cols) // _COARSE_SIDE)
    small = cv2.resize(smooth, (max(1, cols // factor), max(1, rows // factor)),
                       interpolation=cv2.INTER_AREA)
    high = float(small.max())
    if not (math.isfinite(high) and math.isfinite(float(small.min()))) or high <= 0:
        return None
    keep = np.float32(1.0 - _VACUUM_BAND)
    surface = _upper_envelope(small, keep)
    vacuum = small > surface * keep
    sigma = config.background_sigma_px / binning / factor
    level = surface
    for _ in range(2):
        if not vacuum.any():
            break
        weight = vacuum.astype(np.float32)
        numerator = cv2.GaussianBlur(small * weight, (0, 0), sigma)
        denominator = cv2.GaussianBlur(weight, (0, 0), sigma)
        # Far from any vacuum pixel, trust the smooth surface instead.
        level = np.where(denominator > 1e-2, numerator / np.maximum(denominator, 1e-2),
                         surface).astype(np.float32)
        vacuum = small > level * keep
    if not float(np.median(level)) > 0:
        return None
    return cv2.resize(level, (cols, rows), interpolation=cv2.INTER_LINEAR)


def _upper_envelope(small: np.ndarray, keep: np.float32) -> np.ndarray:
    """Quadratic surface through the bright (vacuum) pixels of a coarse frame."""
    rows, cols = small.shape
    y, x = np.mgrid[-1:1:rows * 1j, -1:1:cols * 1j]
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    values = small.reshape(-1).astype(np.float64)
    if values.size < 6 * 4:
        return np.full(small.shape, np.float32(np.median(values)))
    chosen = np.ones(values.size, np.bool_)
    fit = values
    for iteration in range(4):
        # Normal equations: six well-scaled terms on [-1, 1], and a 6x6 solve costs a
        # fraction of lstsq's SVD, which also stalls when BLAS threads compete.
        a = design[chosen]
        try:
            coefficients = np.linalg.solve(a.T @ a, a.T @ values[chosen])
        except np.linalg.LinAlgError:  # degenerate choice (all on one line): least squares
            coefficients = np.linalg.lstsq(a, values[chosen], rcond=None)[0]
        fit = design @ coefficients
        # First keep what is brighter than the fit through everything, then what is
        # within half the particle contrast of the fit through the bright pixels.
        update = values > (fit if iteration == 0 else fit * keep)
        if update.sum() < 6 * 4:
            break
        chosen = update
    return fit.reshape(small.shape).astype(np.float32)


def _prepare(image: np.ndarray, config: AnalysisConfig) -> _Prepared:
    pixels = _as_float(image)
    shape = (int(image.shape[0]), int(image.shape[1]))
    binning = int(config.binning)
    rows, cols = shape[0] // binning, shape[1] // binning
    if rows < 1 or cols < 1:
        binning = 1
    raw = image
    if binning > 1:
        # Block means of the raw counts, taken before the dark level and the clipping
        # below change the copy: the particles' mean intensity is read from these.
        raw = cv2.resize(pixels[: rows * binning, : cols * binning], (cols, rows),
                         interpolation=cv2.INTER_AREA)
    if config.dark_level_counts:
        pixels -= np.float32(config.dark_level_counts)
    coarse = cv2.resize(pixels, (max(1, shape[1] // 8), max(1, shape[0] // 8)),
                        interpolation=cv2.INTER_AREA)
    ceiling = float(coarse.max()) * _HOT_PIXEL_CEILING
    if math.isfinite(ceiling) and ceiling > 0:
        np.minimum(pixels, np.float32(ceiling), out=pixels)
    if binning > 1:
        pixels = cv2.resize(pixels[: rows * binning, : cols * binning], (cols, rows),
                            interpolation=cv2.INTER_AREA)
    if min(pixels.shape) >= 3:
        # Single defective pixels (saturated hot pixels, dead ones; binned, a block
        # holding one) differ from their 3x3 median by more than a factor of two, which
        # shot noise at 1 e/A^2/s rarely does. Left in, one saturated pixel raised its
        # coarse cell's vacuum level by a fifth at low dose, and the vacuum around it
        # read as particle.
        median = cv2.medianBlur(pixels, 3)
        np.copyto(pixels, median, where=(pixels > 2 * median) | (2 * pixels < median))
    if config.smoothing_sigma_px > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), config.smoothing_sigma_px / binning)
    level = _vacuum_level(pixels, config, binning)
    if level is None:
        blank = np.zeros(pixels.shape, np.uint8)
        return _Prepared(flat=blank, binning=binning, shape=shape, image=raw)
    flat = cv2.divide(pixels, level, scale=_VACUUM, dtype=cv2.CV_8U)
    return _Prepared(flat=flat, binning=binning, shape=shape, image=raw)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components with statistics (Grana's block-based labelling is the fastest
    of OpenCV's when statistics are wanted)."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, 8, cv2.CV_32S, cv2.CCL_GRANA
    )
    return int(count), labels, stats, centroids


def _disc(radius: float) -> np.ndarray:
    r = max(0, round(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _find_needle(prepared: _Prepared, config: AnalysisConfig) -> _Needle:
    """The opaque objects entering from the image edges, told apart by their shape.

    Opaque (below ``needle_threshold_fraction`` of vacuum) components reaching an edge
    are, by shape: a **grid bar** if they cover most of one side (the bar is the band
    along that side up to its straight inner edge; whatever sticks out beyond it, a
    dark particle or the dark overlap of two, is not grid); the **needle** if they are
    widest where they enter and reach into the frame (a metal tip tapers from the edge
    and is longer than a circle segment of the same chord); anything else, such as a
    dark particle cut by the frame edge, is left to the particles. The needle's
    coating is then the grey band along the metal, of a thickness measured in this
    frame (:func:`_coating`).
    """
    flat = prepared.flat
    b = prepared.binning
    rows, cols = flat.shape
    empty = np.zeros(flat.shape, np.bool_)
    nan = (math.nan, math.nan)
    if not flat.any():  # blank frame: no vacuum, nothing to see
        return _Needle(mask=empty, core=empty, grid=empty, tip=nan)
    threshold = round(config.needle_threshold_fraction * _VACUUM)
    dark = (flat < threshold).view(np.uint8)
    if not dark.any():
        return _Needle(mask=empty, core=empty, grid=empty, tip=nan)
    count, components, stats, _ = _components(dark)
    x, y, w, h, area = (stats[1:, i] for i in range(5))
    on_edge = (x == 0) | (y == 0) | (x + w == cols) | (y + h == rows)
    keep = np.flatnonzero(on_edge & (area * b * b >= config.needle_min_area_px)) + 1
    if keep.size == 0:
        return _Needle(mask=empty, core=empty, grid=empty, tip=nan)
    # Grid bars run along a side; the needle crosses the edge through a short stretch.
    sides = (components[0], components[-1], components[:, 0], components[:, -1])
    lengths = (cols, cols, rows, rows)
    coverage = np.stack([np.bincount(side, minlength=count) / length
                         for side, length in zip(sides, lengths, strict=True)])
    grid = empty
    entry = np.zeros(flat.shape, np.bool_)
    entry[[0, -1], :] = True
    entry[:, [0, -1]] = True
    bands = [_grid_band(components, int(label), int(np.argmax(coverage[:, label])))
             for label in keep if coverage[:, label].max() >= _GRID_SIDE_FRACTION]
    if bands:
        band = np.logical_or.reduce(bands)
        grid = _grid_rim(band, flat, config, b)
        # What is left once the bars are taken out is the needle only if it enters
        # through the image border (a needle lying along a bar); what enters only
        # from the bar's edge hangs from it (dark particles, the overlap of two).
        count, components, stats, _ = _components((dark.view(np.bool_) & ~band).view(np.uint8))
        touching = np.zeros(count, np.bool_)
        touching[components[entry]] = True
        touching[0] = False
        keep = np.flatnonzero(touching[1:] & (stats[1:, cv2.CC_STAT_AREA] * b * b
                                              >= config.needle_min_area_px)) + 1
    needles = [int(label) for label in keep if _is_needle(components, stats, int(label), entry)]
    if not needles:
        return _Needle(mask=empty, core=empty, grid=grid, tip=nan)
    keep = np.array(needles)
    lookup = np.zeros(count, np.bool_)
    lookup[keep] = True
    core = lookup[components] & ~grid

    # The tip: the metal pixel farthest from where the (largest) needle enters.
    largest = int(keep[np.argmax(stats[keep, cv2.CC_STAT_AREA])])
    r, c, entry_r, entry_c, _ = _entry(components, stats, largest, entry)
    reach = np.hypot(r - entry_r, c - entry_c)
    apex = reach >= reach.max() - 1.5  # the front pixels, averaged against noise
    tip = ((r[apex].mean() + 0.5) * b - 0.5, (c[apex].mean() + 0.5) * b - 0.5)

    x_all, y_all = stats[keep, 0], stats[keep, 1]
    mask, contact = _coating(flat, core, grid, config, b, (
        int(y_all.min()), int(x_all.min()), int((y_all + stats[keep, 3]).max()),
        int((x_all + stats[keep, 2]).max())), (float(r[apex].mean()), float(c[apex].mean())))
    return _Needle(mask=mask, core=core, grid=grid, tip=(float(tip[0]), float(tip[1])),
                   contact=contact)


def _entry(components: np.ndarray, stats: np.ndarray, label: int, entry: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    """A component's pixels (rows, cols), the mean of those where it enters (``entry``:
    the image border, and the edge of any grid bar), and which they are."""
    x0, y0, w0, h0 = (int(v) for v in stats[label, :4])
    r, c = np.nonzero(components[y0:y0 + h0, x0:x0 + w0] == label)
    r += y0
    c += x0
    border = entry[r, c]
    return r, c, float(r[border].mean()), float(c[border].mean()), border


def _is_needle(components: np.ndarray, stats: np.ndarray, label: int,
               entry: np.ndarray) -> bool:
    """Whether an opaque component entering from an edge is shaped like a needle.

    Across the direction from where it enters to its farthest point, a needle is
    widest at the edge (its shaft tapers towards the tip) and reaches farther in than
    ``_NEEDLE_REACH`` of that width (both measured across the axis from where it
    enters to its farthest point). A disc cut by the edge either bulges wider
    inside than where it is cut (its centre is in the frame) or, widest at the cut,
    reaches in no more than half its chord.
    """
    r, c, entry_r, entry_c, border = _entry(components, stats, label, entry)
    step = max(1, r.size // _SHAPE_SAMPLES)
    if step > 1:
        take = border | (np.arange(r.size) % step == 0)
        r, c, border = r[take], c[take], border[take]
    dr, dc = r - entry_r, c - entry_c
    reach = np.hypot(dr, dc)
    far = int(np.argmax(reach))
    length = float(reach[far])
    if length < 2:
        return False
    ur, uc = dr[far] / length, dc[far] / length
    depth = dr * ur + dc * uc
    across = dc * ur - dr * uc
    bins = np.clip(depth / 2.0, 0, None).astype(np.intp)  # 2-px slices along the axis
    n = int(bins.max()) + 1
    high = np.full(n, -np.inf)
    low = np.full(n, np.inf)
    np.maximum.at(high, bins, across)
    np.minimum.at(low, bins, across)
    width = np.where(np.isfinite(high), high - low + 1.0, 0.0)
    # Where it crosses the edge, across the axis: a needle cut obliquely by the edge
    # shows its whole width only a little way in.
    entry_width = float(across[border].max() - across[border].min() + 1.0)
    return bool(width.max() <= _NEEDLE_BULGE * entry_width
                and length >= _NEEDLE_REACH * entry_width)


def _grid_band(components: np.ndarray, label: int, side: int) -> np.ndarray:
    """The part of an opaque component that is the grid bar along image side ``side``
    (0 top, 1 bottom, 2 left, 3 right): from the edge to the bar's straight inner edge.

    The bar's depth at each position along the side is the run of opaque pixels from
    the edge; its inner edge is the line through those depths fitted on the shallow
    ones (whatever sticks out, a dark particle pressed on the bar or the overlap of two,
    only lengthens a run).
    """
    mine = components == label
    view = {0: mine, 1: mine[::-1], 2: mine.T, 3: mine.T[::-1]}[side]
    # Run from the edge: index of the first pixel not in the component.
    depth = np.where(view.all(axis=0), view.shape[0], np.argmin(view, axis=0)).astype(float)
    position = np.arange(depth.size, dtype=float)
    chosen = depth > 0
    line = np.zeros_like(depth)
    for _ in range(4):
        if chosen.sum() < 2:
            break
        slope, offset = np.polyfit(position[chosen], depth[chosen], 1)
        line = slope * position + offset
        update = (depth > 0) & (depth <= line + _GRID_EDGE_TOLERANCE_PX)
        if np.array_equal(update, chosen):
            break
        chosen = update
    limit = line + _GRID_EDGE_TOLERANCE_PX
    band_view = view & (np.arange(view.shape[0])[:, None] < limit[None, :])
    band: np.ndarray = {0: band_view, 1: band_view[::-1], 2: band_view.T,
                        3: band_view[::-1].T}[side]
    return band


def _coating(flat: np.ndarray, core: np.ndarray, grid: np.ndarray, config: AnalysisConfig,
             binning: int, box: tuple[int, int, int, int], apex: tuple[float, float],
             ) -> tuple[np.ndarray, np.ndarray]:
    """The needle with its coating: what particles leave out, and what they touch.

    The coating is the grey band along the metal, its thickness measured in this
    frame: each grey pixel touching the metal lies on a grey run from the metal out to
    the vacuum, as long as the distance to the metal plus the distance to the vacuum;
    along the coating that is its thickness, and a quantile over the metal's grey rim
    is the coating's (a particle pressed on it lengthens the runs through it, over a
    shorter stretch of the rim). Measured first on everything darker than the vacuum
    (the coating may be fainter than any particle) to read the coating's grey level,
    then at half-way between that level and the vacuum, where its blurred outer edge
    is: contact is decided there. Particles leave out the coating with its blurred
    rim (:func:`_blur_rim`, where lighter than a particle) as well. With no band that
    covers ``_COATING_MIN_RIM`` of the metal's rim near the apex (within three times
    ``coating_max_px``), the coating is what ``needle_layer_px`` says.

    Returns the mask to leave out and the needle's outer surface for contact.
    """
    rows, cols = flat.shape
    layer_px = config.needle_layer_px / binning
    blur = _blur_rim(config, binning)
    r0, c0, r1, c1 = box
    # Room around the metal for the thickest coating and the vacuum beyond.
    most = config.coating_max_px / binning
    pad = math.ceil(max(layer_px, most) + blur + 4)
    r0, c0 = max(0, r0 - pad), max(0, c0 - pad)
    r1, c1 = min(rows, r1 + pad), min(cols, c1 + pad)
    window = (slice(r0, r1), slice(c0, c1))
    metal = core[window]
    if not metal.any():
        return core, core
    threshold = _particle_threshold(flat, core | grid, config)
    noise = _vacuum_noise(flat, threshold, config.smoothing_sigma_px / binning)
    faint = max(threshold, round(_VACUUM * (1.0 - _COATING_MIN_CONTRAST)
                                 - _COATING_NOISE_SIGMAS * noise))
    local = flat[window]
    free = ~metal & ~grid[window]
    to_metal = cv2.distanceTransform((~metal).view(np.uint8), cv2.DIST_L2, 5)
    # The coating grows over the tip: its share is taken of the rim near the apex
    # (within three of the thickest coatings), not of a shaft that may cross the field.
    rows_w, cols_w = np.ogrid[r0:r1, c0:c1]
    near_apex = (rows_w - apex[0]) ** 2 + (cols_w - apex[1]) ** 2 <= (3 * most + blur) ** 2
    rim = (to_metal <= 1.5) & free & near_apex

    def band(level: float) -> tuple[np.ndarray, float | None]:
        """Pixels darker than ``level`` and the band's thickness (None: no band)."""
        grey = (local < level) & free
        # Noise leaves pinholes in a faint band at low dose: closed, they do not cut
        # its runs short.
        grey = cv2.morphologyEx(grey.view(np.uint8), cv2.MORPH_CLOSE, _disc(1)).view(
            np.bool_) & free
        to_vacuum = cv2.distanceTransform((grey | metal).view(np.uint8), cv2.DIST_L2, 5)
        runs = (to_metal + to_vacuum)[rim & grey]
        runs = runs[runs > max(layer_px, blur)]  # shorter: the metal's blurred edge
        if runs.size < max(8, _COATING_MIN_RIM * np.count_nonzero(rim)):
            return grey, None
        return grey, min(float(np.quantile(runs, _COATING_QUANTILE)), most)

    grey, rough = band(faint)
    exclude = core.copy()
    contact = core.copy()
    # Past the coating's edge, its blurred rim is lighter than the particles'
    # threshold; a particle pressed on the coating is darker there, and stays whole.
    tail = grey & (local >= threshold)
    if rough is None:
        exclude[window] |= (grey & (to_metal <= layer_px)) | (tail & (to_metal <= layer_px + blur))
        contact[window] |= grey & (to_metal <= layer_px) & (local < threshold)
        return exclude, contact
    inside = grey & (to_metal > blur) & (to_metal <= rough)
    level = float(np.median(local[inside])) if inside.any() else float(threshold)
    half = (level + _VACUUM) / 2.0
    wider, thickness = band(half)
    # The faint level's runs reach past the edge by the blurred rim at most. At low
    # dose the faint level sits near the coating's own level (4 noise sigmas below
    # the vacuum) and its band is riddled with noise; half-way is then lighter and
    # the band whole.
    thickness = max(thickness if thickness is not None else 0.0, rough - blur)
    if half > faint:
        grey = wider
        tail = grey & (local >= threshold)
    exclude[window] |= (grey & (to_metal <= thickness + 0.5)) | (
        tail & (to_metal <= thickness + blur))
    contact[window] |= grey & (to_metal <= thickness + 0.5)
    return exclude, contact


def _half_contrast(flat: np.ndarray, components: np.ndarray, count: int, keep: np.ndarray,
                   smoothing_px: float) -> np.ndarray:
    """The kept regions cut back to where they are half as dark as their own rim.

    A blurred edge crosses half-way between the two levels it separates exactly at the
    edge, whatever the contrast: each region's rim level is read just inside its
    outline, past the blur, and its boundary drawn at half-way between that level and
    the vacuum. The outline near the vacuum (which finds faint particles and keeps a
    clump in one piece) lies a blur width outside the particles, by a share of the
    area that changes as they swell. ``smoothing_px``: the Gaussian sigma ``flat`` was
    smoothed at (analysis px), which sets how far in the blur reaches.
    """
    grown = keep[components]
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
    return result


def _touching(labels: np.ndarray, flat: np.ndarray, needle: _Needle, config: AnalysisConfig,
              binning: int, threshold: int) -> np.ndarray:
    """bool per label (index 0 unused): the particle meets the needle's outer surface.

    A particle touches the needle when its pixels at the particles' threshold
    (``threshold``, between particle and vacuum) come within ``needle_contact_px`` of
    the needle's outer surface (``needle.contact``, the coating's edge at half its
    contrast). The particle's outline, nearer the vacuum, and the coating's blurred
    rim would bridge a gap of two blur widths (contact reported 1 s early at 1 nm/px).
    """
    from ._measure import _contact_kernel

    hit = np.zeros(int(labels.max()) + 1, np.bool_)
    surface = needle.contact if needle.contact is not None else needle.mask
    if not surface.any() or hit.size == 1:
        return hit
    contact_px = int(config.needle_contact_px)
    reach: np.ndarray = surface.view(np.uint8)
    if contact_px > 0:
        # A gap under a pixel and a half is below what the blur resolves: a one-pixel
        # reach takes the diagonal neighbours too (at 2 e/A^2/s the coating's noisy
        # edge left a pressed particle 1.4 px away in a third of the frames).
        kernel = (np.ones((3, 3), np.uint8) if contact_px == 1 and binning == 1
                  else _contact_kernel(contact_px, binning))
        reach = cv2.dilate(reach, kernel)
    near = reach.view(np.bool_) & (flat < threshold)
    hit[labels[near]] = True
    hit[0] = False
    return hit


def _grid_rim(band: np.ndarray, flat: np.ndarray, config: AnalysisConfig,
              binning: int) -> np.ndarray:
    """The grid bars with their blurred rim, but not the particles pressed on them.

    A pixel at distance x beyond a straight opaque edge reads ``Phi(x / sigma)`` of what
    it would read without the edge (a Gaussian blur of sigma ``sigma``: smoothing and
    optics); the opaque threshold puts the edge's contour half a sigma inside the edge.
    Divided by that, a rim pixel reads its own transmission: vacuum (the bar's rim) or
    darker than the particles' threshold (a particle hanging from the bar, kept whole:
    the rim taken as grid everywhere cut a band from the cluster along the bar, longer
    as it swelled, and A/A0 fell 4-6 % behind the truth).
    """
    sigma = math.hypot(config.smoothing_sigma_px / binning, 1.0)
    reach = max(config.grid_rim_px / binning, _blur_rim(config, binning))
    distance = cv2.distanceTransform((~band).view(np.uint8), cv2.DIST_L2, 3)
    rim = (distance > 0) & (distance <= reach)
    from scipy.special import ndtr  # scikit-image's dependency, imported with it

    x = (distance[rim] - 0.5) / sigma - 0.52  # from the edge itself, in sigmas
    response = ndtr(x)
    threshold = _particle_threshold(flat, band, config)
    own = flat[rim] / np.maximum(response, 1e-3)
    grid = band.copy()
    grid[rim] = (response < 0.5) | (own >= threshold)
    return grid


def _blur_rim(config: AnalysisConfig, binning: int) -> float:
    """How far (analysis pixels) the blurred edge of an opaque object stays darker than
    the particles' outline threshold: 1.64 sigma of the smoothing and the optics (a
    pixel) beyond the edge, which the opaque threshold puts half a sigma inside it,
    and a pixel for the noise."""
    return _blur_width(config.smoothing_sigma_px / binning)


def _blur_width(smoothing_px: float) -> float:
    """``_blur_rim`` for a frame smoothed at a Gaussian sigma of ``smoothing_px``
    (analysis px)."""
    return 2.2 * math.hypot(smoothing_px, 1.0) + 1.0


def _vacuum_noise(flat: np.ndarray, threshold: int, smoothing_px: float) -> float:
    """Standard deviation of the flattened frame's noise in the vacuum, grey levels.

    From differences of horizontal neighbours that are both vacuum (at or above the
    particle ``threshold``), so slow residues of the flattening do not count; the
    smoothing correlates neighbours, ``rho = exp(-1 / (4 s^2))`` for a Gaussian of
    sigma ``s``, and the difference of two has variance ``2 sigma^2 (1 - rho)``.
    """
    # Every fourth row: a quarter of a million pairs at 1024x1024 px is plenty for a
    # median, and the whole frame cost 70 ms.
    pixels = flat[::_NOISE_ROW_STEP].astype(np.int16)
    left, right = pixels[:, :-1], pixels[:, 1:]
    both = (left >= threshold) & (right >= threshold)
    if np.count_nonzero(both) < 64:
        return 0.0
    differences = (left - right)[both]
    mad = float(np.median(np.abs(differences - np.median(differences))))
    rho = math.exp(-1.0 / (4.0 * smoothing_px**2)) if smoothing_px > 0 else 0.0
    return 1.4826 * mad / math.sqrt(max(2.0 * (1.0 - rho), 1e-6))


def _particle_threshold(flat: np.ndarray, exclude: np.ndarray | None,
                        config: AnalysisConfig, *, capped: bool = True,
                        noise_led: bool = False) -> int:
    """Otsu between particles and vacuum (opaque pixels left out), capped by the noise.

    The cap keeps the threshold at least ``particle_noise_sigmas`` standard deviations
    of the vacuum's own fluctuation (shot noise and the support's texture, measured on
    this frame) and ``particle_min_contrast`` below the vacuum level, so that a frame
    with no particles yields none, whatever its dose, while faint particles on a quiet
    frame are not cut off by a fixed contrast.

    References
    ----------
    N. Otsu, "A threshold selection method from gray-level histograms",
    IEEE Trans. Syst. Man Cybern. 9 (1979) 62-66.
    """
    mask = None if exclude is None else (~exclude).view(np.uint8)
    hist = cv2.calcHist([flat], [0], mask, [256], [0, 256]).ravel()
    floor = round(config.needle_threshold_fraction * _VACUUM)
    hist[:floor] = 0
    otsu = _otsu_index(hist) + 1
    if not capped:
        return max(floor + 1, otsu)
    # The vacuum level is the histogram's brightest mode above Otsu's threshold, and
    # the noise the spread of the pixels brighter than it (median absolute
    # deviation): the particles' tail is all on the dark side.
    upper = hist[otsu:]
    total = float(upper.sum())
    if total > 0:
        level = otsu + int(np.argmax(upper))
        above = hist[level + 1:]
        if float(above.sum()) > 0:
            cumulative = np.cumsum(above) / float(above.sum())
            mad = 1.0 + float(np.searchsorted(cumulative, 0.5))
        else:
            mad = 0.5
        noise = 1.4826 * mad
    else:
        level, noise = _VACUUM, 0.0
    margin = max(config.particle_noise_sigmas * noise, config.particle_min_contrast * level)
    cap = math.floor(level - margin)
    if noise_led:  # the cap alone: the level nearest the vacuum that noise never reaches
        return max(floor + 1, cap)
    return max(floor + 1, min(otsu, cap))


def _particle_radius(foreground: np.ndarray, min_area: int) -> float:
    """Typical particle radius (analysis px) of a foreground mask: the area-weighted
    median of each region's largest inscribed radius (the peak of its distance
    transform), regions under ``min_area`` left out; 0 without any region.

    The inscribed radius of a clump of touching particles is one particle's, so dense
    clusters do not inflate the scale, and weighting by area lets noise specks (many,
    but small) count for little.
    """
    from scipy import ndimage

    count, components, stats, _ = _components(foreground.view(np.uint8))
    if count <= 1:
        return 0.0
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    keep = np.flatnonzero(areas >= max(1, min_area)) + 1
    if keep.size == 0:
        return 0.0
    distance = cv2.distanceTransform(
        cv2.copyMakeBorder(foreground.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE),
        cv2.DIST_L2, 5)[1:-1, 1:-1]
    inside = components > 0  # (only the regions' pixels: the sort is the cost)
    peaks = np.asarray(ndimage.maximum(distance[inside], components[inside], keep),
                       np.float64)
    weights = areas[keep - 1]
    order = np.argsort(peaks)
    cumulative = np.cumsum(weights[order])
    return float(peaks[order][int(np.searchsorted(cumulative, cumulative[-1] / 2))])


def _fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with its enclosed background pockets under ``max_area`` filled: a
    particle's bright facet, thin spot or Fresnel fringe is part of it, while a larger
    pocket (vacuum ringed by several particles) stays background."""
    background = (~mask).view(np.uint8)
    count, components, stats, _ = _components4(background)
    if count <= 1:
        return mask
    x, y, w, h, area = (stats[:, i] for i in range(5))
    rows, cols = mask.shape
    on_edge = (x == 0) | (y == 0) | (x + w == cols) | (y + h == rows)
    hole = ~on_edge & (area < max_area)
    hole[0] = False
    if not hole.any():
        return mask
    filled: np.ndarray = mask | hole[components]
    return filled


def _components4(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components (the background's, complement of 8-connected objects)."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, 4, cv2.CV_32S, cv2.CCL_DEFAULT)
    return int(count), labels, stats, centroids


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
        return _Scale(radius, base_sigma, config.min_particle_area_px / binning ** 2,
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
             *, from_image: bool = False) -> tuple[np.ndarray, float]:
    """int32 labels at analysis resolution, and the particle radius (analysis px)
    measured on the frame; ``needle``: every opaque pixel to leave out.

    ``from_image``: no pixel size is known, so the smoothing, the minimum area and the
    splitting distance follow the particle radius measured here (a first pass at the
    configured smoothing) rather than the configured lengths.

    On the frame smoothed at that scale, particles are seeded below the noise-capped
    Otsu threshold, outlined where they rise into the vacuum's fluctuation and cut back
    to half their own rim contrast (:func:`_half_contrast`): the outline then stays on
    each particle's edge whatever its darkness, whether a crystal's diffraction
    contrast or a particle lightening as it lithiates.
    """
    flat = prepared.flat
    b = prepared.binning
    if not flat.any():
        return np.zeros(flat.shape, np.int32), 0.0
    base = flat
    otsu = _particle_threshold(base, needle, config, capped=False)
    # The first scale from Otsu's threshold alone: at the configured smoothing, a
    # noisy frame's noise cap keeps only fragments of faint particles.
    radius = _particle_radius((base < otsu) & ~needle, _MIN_AREA_FLOOR_PX)
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
            # Otsu's threshold stays the one between the two classes' levels (at the
            # configured smoothing); only the noise cap is the smoother frame's.
            threshold = min(otsu, _particle_threshold(flat, needle, config))
        else:
            flat = base
            threshold = _particle_threshold(flat, needle, config)
        if not from_image:
            break
        # Smoothed at the particles' scale, fragments of a faint particle join up:
        # measured again, the scale grows, and the frame is smoothed again.
        # (Measured, like the first, on Otsu's regions of the smoothed frame: the
        # noise cap would cut faint particles into pieces.)
        measured = _particle_radius(
            (flat < _particle_threshold(flat, needle, config, capped=False)) & ~needle,
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
        _particle_threshold(flat, needle, config, noise_led=True)))
    foreground = (flat < outline) & ~needle
    count, components, stats, _ = _components(foreground.view(np.uint8))
    rows, cols = flat.shape
    # A particle cut by the frame edge shows only part of its area: it is kept down
    # to the size of a noise speck.
    x, y, w, h = (stats[:, i] for i in range(4))
    cut = (x == 0) | (y == 0) | (x + w == cols) | (y + h == rows)
    min_area = np.where(cut, min(scale.min_area_px, _EDGE_MIN_AREA_PX), scale.min_area_px)
    # Seeded by a quarter of a smallest particle below the threshold, so that a patch
    # of vacuum a little off its level is not grown into a particle.
    seeds = np.bincount(components[(flat < threshold) & foreground], minlength=count)
    keep = (stats[:, cv2.CC_STAT_AREA] >= min_area) & (seeds >= min_area / 4)
    keep[0] = False
    if not keep.any():
        return np.zeros(flat.shape, np.int32), radius
    foreground = _half_contrast(flat, components, count, keep, sigma)
    if radius > 0:
        foreground = _fill_holes(foreground, math.pi * radius ** 2) & ~needle
    # Labelled again: holes filled join their particle, and a sliver the cut-back
    # left is judged on its own size.
    count, components, stats, _ = _components(foreground.view(np.uint8))
    x, y, w, h = (stats[:, i] for i in range(4))
    cut = (x == 0) | (y == 0) | (x + w == cols) | (y + h == rows)
    keep = stats[:, cv2.CC_STAT_AREA] >= np.where(
        cut, min(scale.min_area_px, _EDGE_MIN_AREA_PX), scale.min_area_px)
    keep[0] = False
    if not keep.any():
        return np.zeros(flat.shape, np.int32), radius
    lookup = np.zeros(count, np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels: np.ndarray = lookup[components]
    if not config.split_touching:
        return labels, radius
    if not from_image:
        return _split(labels, int(keep.sum()), scale.split_min_distance_px, flat), radius
    # Without a pixel size the marker spacing is half the typical radius and the grid
    # a seventh of it (at a fifth, whether two discs of radius 40 and 30 px were split
    # hung on the rounding of the spacing).
    return _split(labels, int(keep.sum()), scale.split_min_distance_px, flat,
                  _SPLIT_SHAPE_WEIGHT, cells_per_spacing=7.0, flood_on_shape=True), radius


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
    from skimage.morphology import h_maxima
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
    peaks = h_maxima(score, height).view(np.bool_) & inner  # type: ignore[no-untyped-call]
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


def _upsample(array: np.ndarray, binning: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour back to input resolution ``shape`` (edge rows/cols lost to
    binning padded with zeros)."""
    if binning == 1:
        return array
    b = binning
    rows, cols = array.shape
    out = np.zeros(shape, array.dtype)
    # One pass, each block written from its analysis pixel (splitting axes gives a view
    # even of the cropped, non-contiguous region).
    out[: rows * b, : cols * b].reshape(rows, b, cols, b)[...] = array[:, None, :, None]
    return out


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


def _bin_mask(mask: np.ndarray, prepared: _Prepared) -> np.ndarray:
    """A caller's input-resolution mask at analysis resolution (any pixel set)."""
    shape = prepared.flat.shape
    mask = np.asarray(mask, dtype=np.bool_)
    if mask.shape != prepared.shape:
        raise ValueError(f"Expected a needle mask of shape {prepared.shape}. Got {mask.shape}.")
    b = prepared.binning
    if b == 1:
        return mask
    rows, cols = shape
    cropped = mask[: rows * b, : cols * b].reshape(rows, b, cols, b)
    return np.asarray(cropped.any(axis=(1, 3)))
