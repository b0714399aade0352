"""The opaque objects entering from the image edges: grid bars, and the needle with
its coating (OpenCV)."""

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
    _disc,
    _particle_threshold,
    _Prepared,
    _vacuum_noise,
)

__all__: list[str] = []

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
_SHAPE_SAMPLES = 20000
"""An opaque object's shape is judged on about this many of its pixels (and all those
where it enters): a needle across a 1024x1024 frame has ten times more."""
_COATING_MIN_CONTRAST = 0.03
_COATING_NOISE_SIGMAS = 4.0
"""The coating is what is darker than the vacuum by this much (relative) plus this
many sigmas of the flattened vacuum's noise, or than the particle threshold if that
is lighter."""
_COATING_NOISE = 0.025
_COATING_MAX_SIGMA_PX = 4.0
_COATING_SMOOTHER = 1.1
"""The coating's band is found on the frame smoothed (up to a Gaussian sigma of
``_COATING_MAX_SIGMA_PX`` analysis px, and only if that is ``_COATING_SMOOTHER`` times
its own smoothing or more) until the vacuum's noise is this share of the vacuum at
most: the faint level, ``_COATING_MIN_CONTRAST`` and ``_COATING_NOISE_SIGMAS`` sigmas
under the vacuum, then lies above a LiOx coating of 0.85 of the vacuum, the faintest
expected. Binned 2x2 at 2 e/A²/s, the frame's own smoothing (under a pixel) leaves
noise of 5 % of the vacuum, under which such a coating is not found. The band is tens
of pixels wide; the smoothing changes nothing on a quiet frame."""
_COATING_QUANTILE = 0.6
"""The quantile of the grey runs from the metal's rim taken for the coating's
thickness: runs along the coating's tapered ends are shorter, through a particle
pressed on it longer."""


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
    edge_level: float | None = None
    """Grey level of the coating's outer edge (half-way between the coating and the
    vacuum): a pixel darker than this next to the surface is not vacuum. None: no
    coating measured."""


def _find_needle(prepared: _Prepared, config: AnalysisConfig) -> _Needle:
    """The opaque objects entering from the image edges, told apart by their shape.

    Opaque (below ``needle_threshold_fraction`` of vacuum) components reaching an edge
    are, by shape: a **grid bar** if they cover most of one side (the bar is the band
    along that side up to its straight inner edge; whatever sticks out beyond it, a
    dark particle or the dark overlap of two, is not grid); the **needle** if they are
    widest where they enter and reach into the frame (a metal tip tapers from the edge
    and is longer than a circle segment of the same chord); anything else, such as a
    dark particle cut by the frame edge, is left to the particles. Of several
    needle-shaped objects only the largest is the needle (one needle per holder; a
    near-black crystal cut by the edge can be needle-shaped). The needle's coating is
    then the grey band along the metal, of a thickness measured in this frame
    (:func:`_coating`).
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
    # Labelled in the box holding the opaque pixels (a needle from one side: a quarter
    # of the frame), the same components as on the whole frame.
    count, components, area, on_edge, held = _boxed_components(dark)
    keep = np.flatnonzero(on_edge[1:] & (area[1:] * b * b >= config.needle_min_area_px)) + 1
    if keep.size == 0:
        return _Needle(mask=empty, core=empty, grid=empty, tip=nan)
    # Grid bars run along a side; the needle crosses the edge through a short stretch.
    reaches = (held[0].start == 0, held[0].stop == rows, held[1].start == 0,
               held[1].stop == cols)
    sides = (components[0], components[-1], components[:, 0], components[:, -1])
    lengths = (cols, cols, rows, rows)
    coverage = np.stack([np.bincount(side, minlength=count) / length if reached
                         else np.zeros(count)
                         for side, length, reached in zip(sides, lengths, reaches,
                                                          strict=True)])
    grid = empty
    candidates = [int(label) for label in keep
                  if coverage[:, label].max() >= _GRID_SIDE_FRACTION]
    if candidates:  # grid bars are judged on the whole frame
        whole = np.zeros(flat.shape, np.int32)
        whole[held] = components
        components, held = whole, (slice(0, rows), slice(0, cols))
        reaches = (True, True, True, True)
    entry = np.zeros(components.shape, np.bool_)
    for reached, line in zip(reaches, (entry[0], entry[-1], entry[:, 0], entry[:, -1]),
                             strict=True):
        if reached:
            line[...] = True
    bands = [_grid_band(components, label, int(np.argmax(coverage[:, label])))
             for label in candidates]
    if bands:
        band = np.logical_or.reduce(bands)
        grid = _grid_rim(band, flat, config, b)
        # What is left once the bars are taken out is the needle only if it enters
        # through the image border (a needle lying along a bar); what enters only
        # from the bar's edge hangs from it (dark particles, the overlap of two).
        count, components, area, _ = _components((dark.view(np.bool_) & ~band).view(np.uint8))
        touching = np.zeros(count, np.bool_)
        touching[components[entry]] = True
        touching[0] = False
        keep = np.flatnonzero(touching[1:] & (area[1:] * b * b
                                              >= config.needle_min_area_px)) + 1
    # Each candidate's pixels, gathered once: the needle's are read again for its tip.
    pixels = {int(label): _entry(components, int(label), entry,
                                 (held[0].start, held[1].start)) for label in keep}
    needles = [label for label, found in pixels.items() if _is_needle(*found)]
    if not needles:
        return _Needle(mask=empty, core=empty, grid=grid, tip=nan)
    # One needle feeds the cluster: of several needle-shaped objects the largest is it;
    # a smaller one is a near-black crystal cut by the frame edge (its coating-less
    # edge would otherwise "touch" particles as it drifts across the edge).
    largest = max(needles, key=lambda label: int(area[label]))
    core = np.zeros(flat.shape, np.bool_)
    core[held] = (components == largest) & ~grid[held]

    # The tip: the metal pixel farthest from where the needle enters.
    r, c, entry_r, entry_c, _ = pixels[largest]
    reach = np.hypot(r - entry_r, c - entry_c)
    apex = reach >= reach.max() - 1.5  # the front pixels, averaged against noise
    tip = ((r[apex].mean() + 0.5) * b - 0.5, (c[apex].mean() + 0.5) * b - 0.5)

    mask, contact, edge_level = _coating(flat, core, grid, config, b, (
        int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1),
        (float(r[apex].mean()), float(c[apex].mean())))
    return _Needle(mask=mask, core=core, grid=grid, tip=(float(tip[0]), float(tip[1])),
                   contact=contact, edge_level=edge_level)


def _entry(components: np.ndarray, label: int, entry: np.ndarray,
           origin: tuple[int, int] = (0, 0),
           ) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
    """A component's pixels (rows, cols), the mean of those where it enters (``entry``:
    the image border, and the edge of any grid bar), and which they are; ``components``
    and ``entry`` may be a box of the frame at ``origin``, the pixels are the frame's."""
    r, c = np.divmod(np.flatnonzero(components == label), components.shape[1])
    border = entry[r, c]
    r += origin[0]
    c += origin[1]
    return r, c, float(r[border].mean()), float(c[border].mean()), border


def _is_needle(r: np.ndarray, c: np.ndarray, entry_r: float, entry_c: float,
               border: np.ndarray) -> bool:
    """Whether an opaque component entering from an edge, given by its pixels as
    :func:`_entry` gives them, is shaped like a needle.

    Across the direction from where it enters to its farthest point, a needle is
    widest at the edge (its shaft tapers towards the tip) and reaches farther in than
    ``_NEEDLE_REACH`` of that width (both measured across the axis from where it
    enters to its farthest point). A disc cut by the edge either bulges wider
    inside than where it is cut (its centre is in the frame) or, widest at the cut,
    reaches in no more than half its chord.
    """
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
             ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The needle with its coating: what particles leave out, and what they touch.

    The coating is the grey band along the metal, its thickness measured in this
    frame: each grey pixel touching the metal lies on a grey run from the metal out to
    the vacuum, as long as the distance to the metal plus the distance to the vacuum;
    along the coating that is its thickness, and a quantile over the metal's grey rim
    is the coating's (a particle pressed on it lengthens the runs through it, over a
    shorter stretch of the rim). Measured first on everything darker than the vacuum
    (the coating may be fainter than any particle) to read the coating's grey level,
    then at half-way between that level and the vacuum, where its blurred outer edge
    is: contact is decided there. The band is found on the frame smoothed until the
    vacuum's noise is ``_COATING_NOISE`` of it at most, and with the noise's pinholes
    closed. Particles leave out the coating with its blurred
    rim (:func:`_blur_rim`, where lighter than a particle) as well. With no band that
    covers ``_COATING_MIN_RIM`` of the metal's rim near the apex (within three times
    ``coating_max_px``), the coating is what ``needle_layer_px`` says.

    Returns the mask to leave out, the needle's outer surface for contact, and the
    grey level of that surface (None without a measured coating).
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
        return core, core, None
    threshold = _particle_threshold(flat, core | grid, config)
    local = flat[window]
    # The band is found on the window smoothed until its noise is _COATING_NOISE at
    # most (white noise under a Gaussian of sigma s falls as 1 / s).
    sigma = config.smoothing_sigma_px / binning
    noise = _vacuum_noise(flat, threshold, sigma)
    seen = local
    wanted = min(sigma * noise / (_COATING_NOISE * _VACUUM), _COATING_MAX_SIGMA_PX)
    if wanted > sigma * _COATING_SMOOTHER:
        seen = cv2.GaussianBlur(local, (0, 0), math.sqrt(wanted ** 2 - sigma ** 2))
        sigma = wanted
        noise = _vacuum_noise(seen, threshold, sigma)
    faint = max(threshold, round(_VACUUM * (1.0 - _COATING_MIN_CONTRAST)
                                 - _COATING_NOISE_SIGMAS * noise))
    free = ~metal & ~grid[window]
    to_metal = cv2.distanceTransform((~metal).view(np.uint8), cv2.DIST_L2, 5)
    # The coating grows over the tip: its share is taken of the rim near the apex
    # (within three of the thickest coatings), not of a shaft that may cross the field.
    # (The distance to the apex taken at the rim's pixels only, not over the window.)
    rim = (to_metal <= 1.5) & free
    rim_r, rim_c = np.divmod(np.flatnonzero(rim), rim.shape[1])
    rim[rim_r, rim_c] = ((rim_r + r0 - apex[0]) ** 2 + (rim_c + c0 - apex[1]) ** 2
                         <= (3 * most + blur) ** 2)

    pinholes = _disc(max(1, math.ceil(sigma)))

    def band(level: float) -> tuple[np.ndarray, float | None]:
        """Pixels darker than ``level`` and the band's thickness (None: no band)."""
        grey = (seen < level) & free
        # Noise leaves pinholes in a faint band at low dose, specks as wide as the
        # smoothing: closed, they do not cut its runs short.
        grey = cv2.morphologyEx(grey.view(np.uint8), cv2.MORPH_CLOSE, pinholes).view(
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
        return exclude, contact, None
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
    return exclude, contact, half


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
    else:
        kernel = np.ones((1, 1), np.uint8)
    # Only pixels within the kernel's reach of the surface can be near it.
    box = _bounds(surface, max(kernel.shape) // 2)
    assert box is not None
    reach = cv2.dilate(reach[box], kernel)
    near = reach.view(np.bool_) & (flat[box] < threshold)
    hit[labels[box][near]] = True
    hit[0] = False
    return hit


def _joined(labels: np.ndarray, flat: np.ndarray, needle: _Needle, config: AnalysisConfig,
            binning: int) -> bool:
    """Whether a particle is joined to the needle's surface with no vacuum between them
    (:func:`_bridged`). Weaker than :func:`_touching` (a closing gap under a blur width
    joins them a frame or more before they touch), so a session only holds a contact
    already made with it."""
    surface = needle.contact if needle.contact is not None else needle.mask
    if needle.edge_level is None or not surface.any() or not labels.any():
        return False
    # A bridge reaches a blur width from the surface, and the particle one pixel more.
    box = _bounds(surface, math.ceil(_blur_rim(config, binning)) + 1)
    assert box is not None
    return bool(_bridged(labels[box], flat[box], surface[box], needle.edge_level, config,
                         binning).any())


def _bridged(labels: np.ndarray, flat: np.ndarray, surface: np.ndarray, level: float,
             config: AnalysisConfig, binning: int) -> np.ndarray:
    """bool image: particle pixels joined to the needle's surface by pixels darker than
    its edge ``level`` (no vacuum between them).

    A lithiated (amorphous, lighter) shell pressed on the coating can be lighter than
    the particles' threshold where it meets the coating: the particle's pixels at that
    threshold then end a few pixels out (3.6 px at t = 25 s of a crystal-look draw),
    though nothing as light as the vacuum beyond the coating's own edge lies between.
    The bridge runs through pixels outside the particles, within a blur width of the
    surface (farther, a particle's own rim would join it to its neighbours). A closing
    gap that the blur fills to below the edge level joins them too, a frame or more
    before they touch: see :func:`_joined`.
    """
    blur = _blur_rim(config, binning)
    size = 2 * math.ceil(blur) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    around = cv2.dilate(surface.view(np.uint8), kernel).view(np.bool_)
    bridge = (around & (flat < level) & (labels == 0)) | surface
    count, components = cv2.connectedComponents(bridge.view(np.uint8), connectivity=8)
    joined = np.zeros(count, np.bool_)
    joined[components[surface]] = True
    joined[0] = False
    region = joined[components]
    reached: np.ndarray = cv2.dilate(region.view(np.uint8), np.ones((3, 3), np.uint8)).view(
        np.bool_) & (labels > 0)
    return reached


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
