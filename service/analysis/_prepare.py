"""Frame preparation: bin, flatten the illumination, and the thresholds read from
the flattened frame (OpenCV)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ._config import AnalysisConfig

__all__: list[str] = []

_VACUUM = 128
"""Flattened images are uint8 with the vacuum level at this value (headroom above)."""
_COARSE_SIDE = 64
"""The illumination is estimated on a grid about this many cells on its short side."""
_HOT_PIXEL_CEILING = 1.5
"""Pixels brighter than this multiple of the brightest coarse cell are camera defects
(hot pixels, cosmic rays): clipped before smoothing so they do not punch holes in
particles or bias the vacuum level."""
_VACUUM_BAND = 0.075
"""Coarse cells within this fraction of the fitted upper envelope are vacuum when the
illumination is estimated."""
_NOISE_ROW_STEP = 4
"""The vacuum's noise is measured on every this many rows."""


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
    pixel the mean of its ``binning``² block of raw counts (float32; for integer frames
    bright enough, see ``_ROUNDING_SHARE``, rounded to a whole count), before any
    correction; the input frame itself when unbinned."""


_RESIZABLE = frozenset({"uint8", "uint16", "int16", "float32", "float64"})
"""Dtypes OpenCV's area resize bins as they are (others are binned as float32)."""
_ROUNDING_SHARE = 0.01
"""Integer frames are binned in their own dtype (OpenCV rounds each block's mean to a
count) when that rounding (variance 1/12 count²) adds at most this share to the
variance of a block's mean, ``mean counts / binning²`` at the least (shot noise at
one count per electron); fainter frames are binned in float32, stripe by stripe."""
_STRIPE_ROWS = 256
"""Rows of binned output made per float32 stripe of the input frame."""


def _bin_counts(image: np.ndarray, binning: int, rows: int, cols: int,
                mean_counts: float) -> np.ndarray:
    """Block means of the raw counts at ``binning``, float32, without a full-size
    float copy of the frame: an integer frame bright enough (``mean_counts`` per
    pixel, see ``_ROUNDING_SHARE``) is binned in its own dtype, anything else in
    float32 stripes of ``_STRIPE_ROWS`` binned rows."""
    b = binning
    if (np.issubdtype(image.dtype, np.integer) and image.dtype.name in _RESIZABLE
            and mean_counts * _ROUNDING_SHARE * 12 >= b * b):
        binned = cv2.resize(image[: rows * b, : cols * b], (cols, rows),
                            interpolation=cv2.INTER_AREA)
        return binned.astype(np.float32)
    out = np.empty((rows, cols), np.float32)
    for start in range(0, rows, _STRIPE_ROWS):
        stop = min(rows, start + _STRIPE_ROWS)
        stripe = image[start * b: stop * b, : cols * b].astype(np.float32)
        out[start:stop] = cv2.resize(stripe, (cols, stop - start), interpolation=cv2.INTER_AREA)
    return out


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
    """Bin, correct and flatten a frame (see :class:`_Prepared`).

    The frame is binned first, in its own dtype, and only the binned copy is turned
    into float: at 2048² and 4x4 binning the float copies of the whole frame cost
    more than everything after them. Hot pixels are clipped all the same, as if
    before binning: each block holding one is lowered by the clipped excess over
    its pixel count.
    """
    if image.ndim != 2:
        raise ValueError(f"Expected a 2-D image. Got shape {image.shape}.")
    shape = (int(image.shape[0]), int(image.shape[1]))
    binning = int(config.binning)
    rows, cols = shape[0] // binning, shape[1] // binning
    if rows < 1 or cols < 1:
        binning, rows, cols = 1, shape[0], shape[1]
    dark = float(config.dark_level_counts)
    coarse = cv2.resize(image if image.dtype.name in _RESIZABLE else image.astype(np.float32),
                        (max(1, shape[1] // 8), max(1, shape[0] // 8)),
                        interpolation=cv2.INTER_AREA)
    ceiling = (float(coarse.max()) - dark) * _HOT_PIXEL_CEILING
    if binning > 1:
        # Block means of the raw counts, before the dark level and the clipping: the
        # particles' mean intensity is read from these.
        raw = _bin_counts(image, binning, rows, cols, float(coarse.mean()))
        pixels = raw.copy()
    else:
        raw = image
        # A C-ordered copy: the caller's array is never touched, and _clip_hot
        # subtracts from it through a flat view.
        pixels = image.astype(np.float32, order="C")
    if math.isfinite(ceiling) and ceiling > 0:
        _clip_hot(image, pixels, dark + ceiling, binning)
    if dark:
        pixels -= np.float32(dark)
    if min(pixels.shape) >= 3:
        # Single defective pixels (saturated hot pixels, dead ones; binned, a block
        # holding one) differ from their 3x3 median by more than a factor of two, which
        # shot noise at 1 e/A^2/s rarely does. Left in, one saturated pixel raised its
        # coarse cell's vacuum level by a fifth at low dose, and the vacuum around it
        # read as particle.
        median = cv2.medianBlur(pixels, 3)
        # (Doubling is exact in float32: x + x is numpy's 2 * x.)
        defective = cv2.bitwise_or(
            cv2.compare(pixels, cv2.add(median, median), cv2.CMP_GT),
            cv2.compare(cv2.add(pixels, pixels), median, cv2.CMP_LT))
        np.copyto(pixels, median, where=defective.view(np.bool_))
    if config.smoothing_sigma_px > 0:
        pixels = cv2.GaussianBlur(pixels, (0, 0), config.smoothing_sigma_px / binning)
    level = _vacuum_level(pixels, config, binning)
    if level is None:
        blank = np.zeros(pixels.shape, np.uint8)
        return _Prepared(flat=blank, binning=binning, shape=shape, image=raw)
    flat = cv2.divide(pixels, level, scale=_VACUUM, dtype=cv2.CV_8U)
    return _Prepared(flat=flat, binning=binning, shape=shape, image=raw)


def _clip_hot(image: np.ndarray, pixels: np.ndarray, ceiling: float, binning: int) -> None:
    """Lower ``pixels`` (``image`` binned by ``binning``, float32) as if every pixel of
    ``image`` above ``ceiling`` (raw counts) had been clipped to it before binning."""
    rows, cols = pixels.shape
    cropped = image[: rows * binning, : cols * binning]
    # Each row's brightest pixel (a reduction: no copy of the frame); only the rows
    # holding a hot pixel are searched for them.
    brightest = cropped.max(axis=1)
    if not float(brightest.max()) > ceiling:
        return
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if ceiling >= info.max:
            return
        # An integer threshold: compared with a float, numpy would make a float copy.
        level = image.dtype.type(max(info.min, math.floor(ceiling)))
    else:
        level = ceiling
    hot_rows = np.flatnonzero(brightest > level)
    if hot_rows.size == 0:
        return
    # Searched in bands of rows (views, in order), only those holding hot rows: a dim
    # frame has a hot pixel in every row, and gathering the rows copied all of it.
    # (A flat index and divmod: numpy's 2-D nonzero took 45 ms on a 4096² frame.)
    found = [start * cropped.shape[1] + np.flatnonzero(cropped[start:start + _STRIPE_ROWS] > level)
             for start in np.unique(hot_rows // _STRIPE_ROWS) * _STRIPE_ROWS]
    r, c = np.divmod(np.concatenate(found), cropped.shape[1])
    excess = (cropped[r, c].astype(np.float64) - ceiling) / (binning * binning)
    # One flat index per hot pixel: numpy's fast path for unbuffered subtraction (a
    # tuple of indices took 50 ms for the 26 000 hot pixels of a dim 2048² frame).
    np.subtract.at(pixels.reshape(-1), r // binning * cols + c // binning,
                   excess.astype(np.float32))


def _components(mask: np.ndarray, connectivity: int = 8,
                ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of a uint8 mask: their count (the background, label 0,
    included), the int32 label image, each label's area in pixels (int64) and whether
    it reaches the image border (bool), both indexed by label.

    Labelled without OpenCV's statistics and measured with a ``bincount`` and the four
    border lines: the statistics (bounding boxes, centroids, updated pixel by pixel)
    took five times the labelling itself at 1024², and nothing here needs more than
    the areas and the border.
    """
    count, labels = cv2.connectedComponentsWithAlgorithm(
        mask, connectivity, cv2.CV_32S, cv2.CCL_GRANA if connectivity == 8 else cv2.CCL_DEFAULT)
    # OpenCV's histogram of 16-bit labels takes half a bincount's time; its float32
    # counts are exact up to 2**24 pixels.
    if count <= 1 << 16 and labels.size <= 1 << 24:
        area = cv2.calcHist([labels.astype(np.uint16)], [0], None, [count],
                            [0, count]).ravel().astype(np.int64)
    else:
        area = np.bincount(labels.ravel(), minlength=count)
    on_edge = np.zeros(count, np.bool_)
    for line in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        on_edge[line] = True
    return int(count), labels, area, on_edge


def _bounds(mask: np.ndarray, margin: int = 0, *, even: bool = False,
            ) -> tuple[slice, slice] | None:
    """The bounding box of the nonzero pixels of a 2-D ``mask`` (row and column
    projections, no pass over its pixels' coordinates), grown by ``margin`` pixels and
    clipped to the frame, starting on even rows and columns with ``even``; None when no
    pixel is set. Work that only the set pixels and their surroundings decide is done
    in it: particles and the needle cover a fraction of a wide field."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0 = max(0, int(rows[0]) - margin)
    c0 = max(0, int(cols[0]) - margin)
    if even:
        r0, c0 = r0 // 2 * 2, c0 // 2 * 2
    return (slice(r0, min(mask.shape[0], int(rows[-1]) + 1 + margin)),
            slice(c0, min(mask.shape[1], int(cols[-1]) + 1 + margin)))


def _boxed_components(mask: np.ndarray, margin: int = 0,
                      ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray,
                                 tuple[slice, slice]]:
    """:func:`_components` of a sparse uint8 mask (8-connected), labelled in the box
    that holds its set pixels: the count, the labels *in that box*, the areas, whether
    each region reaches the frame's border (not the box's), and the box.

    The box grows by ``margin`` pixels of background (clipped to the frame) and starts
    on even rows and columns: OpenCV labels by 2x2 blocks, so aligned alike the
    numbering is the whole frame's. Particles cover a few percent of a wide field,
    and at 2048² labelling every pixel, and reading the labels back, cost more than
    all the work done in the box. ``area[0]`` counts the box's background only. An
    empty mask gives a count of 1 and an empty box.
    """
    box = _bounds(mask, margin, even=True)
    if box is None:
        return 1, np.zeros((0, 0), np.int32), np.zeros(1, np.int64), \
            np.zeros(1, np.bool_), (slice(0, 0), slice(0, 0))
    (r0, r1), (c0, c1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
    rows, cols = mask.shape
    count, labels, area, _ = _components(mask[box])
    on_edge = np.zeros(count, np.bool_)
    for reaches, line in ((r0 == 0, labels[0]), (r1 == rows, labels[-1]),
                          (c0 == 0, labels[:, 0]), (c1 == cols, labels[:, -1])):
        if reaches:
            on_edge[line] = True
    return count, labels, area, on_edge, box


def _disc(radius: float) -> np.ndarray:
    r = max(0, round(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


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
    # The medians from the differences' histogram (integers from -255 to 255): the
    # same values as sorting them, without the sort.
    shifted = (left - right + 255).astype(np.uint16)
    counts = cv2.calcHist([shifted], [0], both.view(np.uint8), [511], [0, 511]).ravel()
    centre = _histogram_median(counts)
    # |difference - centre|, doubled to stay an integer when the centre is a half.
    deviations = np.abs(2 * np.arange(511) - round(2 * centre))
    mad = _histogram_median(np.bincount(deviations, weights=counts)) / 2
    rho = math.exp(-1.0 / (4.0 * smoothing_px**2)) if smoothing_px > 0 else 0.0
    return 1.4826 * mad / math.sqrt(max(2.0 * (1.0 - rho), 1e-6))


def _histogram_median(counts: np.ndarray) -> float:
    """The median of values ``0 .. len(counts) - 1`` occurring ``counts`` times each, as
    :func:`numpy.median` gives it (the mean of the two middle values of an even count)."""
    cumulative = np.cumsum(counts)
    total = int(round(float(cumulative[-1])))
    low = int(np.searchsorted(cumulative, (total - 1) // 2, side="right"))
    high = int(np.searchsorted(cumulative, total // 2, side="right"))
    return (low + high) / 2


def _histogram(flat: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """The 256-bin histogram of ``flat`` with the ``exclude`` pixels left out, as
    :func:`_particle_threshold` reads it (float32 counts)."""
    mask = None if exclude is None else (~exclude).view(np.uint8)
    histogram: np.ndarray = cv2.calcHist([flat], [0], mask, [256], [0, 256]).ravel()
    return histogram


_SCALE_NOISE_SIGMAS = 2.0
"""The particle scale is read on regions at least this many standard deviations of the
vacuum's noise darker than the vacuum (:func:`_scale_threshold`)."""


def _particle_threshold(flat: np.ndarray, exclude: np.ndarray | None,
                        config: AnalysisConfig, *, capped: bool = True,
                        noise_led: bool = False, histogram: np.ndarray | None = None) -> int:
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
    # ``histogram``: :func:`_histogram` of the same arguments, when already made.
    hist, floor, otsu = _otsu_above_floor(flat, exclude, config, histogram, dark=False)
    if not capped:
        return max(floor + 1, otsu)
    level, noise = _vacuum_mode(hist, otsu)
    margin = max(config.particle_noise_sigmas * noise, config.particle_min_contrast * level)
    cap = math.floor(level - margin)
    if noise_led:  # the cap alone: the level nearest the vacuum that noise never reaches
        return max(floor + 1, cap)
    return max(floor + 1, min(otsu, cap))


def _vacuum_mode(hist: np.ndarray, otsu: int) -> tuple[int, float]:
    """The vacuum's level and noise (grey levels) on a histogram split at ``otsu``.

    The level is the histogram's brightest mode above Otsu's threshold, and the noise
    the spread of the pixels brighter than it (median absolute deviation): the
    particles' tail is all on the dark side.
    """
    upper = hist[otsu:]
    if float(upper.sum()) <= 0:
        return _VACUUM, 0.0
    level = otsu + int(np.argmax(upper))
    above = hist[level + 1:]
    if float(above.sum()) > 0:
        cumulative = np.cumsum(above) / float(above.sum())
        mad = 1.0 + float(np.searchsorted(cumulative, 0.5))
    else:
        mad = 0.5
    return level, 1.4826 * mad


def _scale_threshold(flat: np.ndarray, exclude: np.ndarray | None, config: AnalysisConfig,
                     *, histogram: np.ndarray | None = None) -> int:
    """The threshold the particle scale is read at (regions darker than it, opaque
    pixels left out; ``histogram`` as for :func:`_particle_threshold`).

    Otsu's threshold between everything darker than the vacuum and the vacuum, with
    two differences from the uncapped :func:`_particle_threshold`:

    * pixels under the opaque floor (``needle_threshold_fraction`` of the vacuum) count
      in the dark class, at the floor. The opaque objects are left out already; what
      is that dark are particles, dark at their centres (a transmission of 0.21-0.28
      is common), which would hardly count if left out of the histogram;
    * the threshold stays ``_SCALE_NOISE_SIGMAS`` of the vacuum's noise under its
      level. Otsu's split of a histogram whose dark class is a small share can fall
      into the vacuum's own noise (one grey level under its mode at 2 e/A²/s), whose
      pixels then join up across the frame: their inscribed radius of a few pixels
      would be read as the particles'. Two sigmas leave a faint particle whole,
      where the segmentation's cap (``particle_noise_sigmas``) cuts it into pieces.
    """
    hist, floor, otsu = _otsu_above_floor(flat, exclude, config, histogram, dark=True)
    level, noise = _vacuum_mode(hist, otsu)
    return max(floor + 1, min(otsu, math.floor(level - _SCALE_NOISE_SIGMAS * noise)))


def _otsu_above_floor(flat: np.ndarray, exclude: np.ndarray | None, config: AnalysisConfig,
                      histogram: np.ndarray | None, *, dark: bool,
                      ) -> tuple[np.ndarray, int, int]:
    """The histogram the particle thresholds read, the opaque floor
    (``needle_threshold_fraction`` of the vacuum) and Otsu's threshold on it.

    Pixels under the floor are left out, or with ``dark`` counted at the floor. The
    flattened vacuum is at _VACUUM: a threshold above it is Otsu splitting the vacuum
    from a bright tail (fringes, a brighter patch) when particles are few (2048², 0.4
    nm/px, 5x5 binning: the whole vacuum taken for particles), so it stays there.
    """
    hist = (_histogram(flat, exclude) if histogram is None else histogram).copy()
    floor = round(config.needle_threshold_fraction * _VACUUM)
    if dark:
        hist[floor] += hist[:floor].sum()
    hist[:floor] = 0
    return hist, floor, min(_otsu_index(hist) + 1, _VACUUM)
