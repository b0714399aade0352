"""Per-particle measurements as a table of 1-D columns (like ``regionprops_table``)."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from lithoscope.service.schema import MEASURED_PARTICLE_COLUMNS

__all__ = ["PARTICLE_COLUMNS", "empty_particles", "measure_particles", "particle_contacts"]

PARTICLE_COLUMNS: dict[str, np.dtype[np.generic]] = MEASURED_PARTICLE_COLUMNS
"""The columns of :func:`measure_particles`, in order, with their dtypes (declared in
:mod:`lithoscope.service.schema`, the ``measured`` columns of the ``particles`` table)."""


def empty_particles() -> dict[str, np.ndarray]:
    """The particle table of a frame without particles: every column, zero length."""
    return {name: np.zeros(0, dtype) for name, dtype in PARTICLE_COLUMNS.items()}


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    needle_mask: np.ndarray | None = None,
    pixel_size_nm: float | None = None,
    contact_px: int = 2,
    binning: int = 1,
    areas_px: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Measure every labelled particle.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image, 0 for background (from :func:`segment_particles`).
    image : (M, N) ndarray
        The frame the intensities are read from (any numeric dtype); not modified.
    needle_mask : (M, N) ndarray of bool, optional
        The needle (from :func:`detect_needle`); without it no particle touches it.
    pixel_size_nm : float, optional
        Pixel size of the input frame; without it the nm columns are NaN.
    contact_px : int
        A particle touches the needle if it overlaps the needle dilated by this many
        input pixels.
    binning : int
        The arrays are at analysis resolution: each pixel stands for a ``binning`` x
        ``binning`` block of input pixels, and ``image`` holds the blocks' means. The
        table is in input pixels all the same (see Notes).
    areas_px : 1-D ndarray, optional
        Each label's area in pixels of ``labels``, indexed by label, when measured
        finer than by counting its pixels (sub-pixel outlines, see
        ``AnalysisConfig.subpixel_areas``); by default the pixel counts. The areas are
        rounded to whole input pixels in ``area_px``; ``area_nm2`` and
        ``equivalent_diameter_nm`` keep the fraction.

    Returns
    -------
    table : dict of str to 1-D ndarray
        One row per label present, in increasing label order, with the columns of
        :data:`PARTICLE_COLUMNS`: ``label`` (int32), ``area_px`` (int64),
        ``area_nm2``, ``centroid_row``, ``centroid_col``, ``equivalent_diameter_nm``
        (diameter of the disc of the same area), ``mean_intensity`` (float64) and
        ``touches_needle`` and ``touches_frame_edge`` (bool: it has pixels on the
        image's border, so part of it may be out of view). Zero-length columns if there
        is no particle.

    Notes
    -----
    With ``binning`` b, the table is the one the labels and the mask upsampled to input
    resolution (each pixel repeated over its block) would give, computed b² times
    cheaper: areas count b² input pixels per pixel (``areas_px``: b² times those), a
    centroid (r, c) is at input coordinates ((r + 0.5) b - 0.5, (c + 0.5) b - 0.5)
    (the centre of the blocks), means over blocks' means are means over their pixels
    (to half a count where the analysis rounded the blocks' means), and the needle is
    dilated by the blocks that hold a pixel within ``contact_px`` of one of its pixels.
    """
    if binning < 1:
        raise ValueError(f"Expected binning >= 1. Got {binning}.")
    if labels.shape != image.shape:
        raise ValueError(
            f"Expected labels and image of one shape. Got {labels.shape} and {image.shape}."
        )
    # The labelled pixels are gathered from the labels' bounding box: particles cover
    # a few percent of a large frame, and the same pixels come in the same order.
    rows_in = np.flatnonzero(labels.any(axis=1))
    if rows_in.size == 0:
        return empty_particles()
    cols_in = np.flatnonzero(labels.any(axis=0))
    r0, c0 = int(rows_in[0]), int(cols_in[0])
    box = (slice(r0, int(rows_in[-1]) + 1), slice(c0, int(cols_in[-1]) + 1))
    boxed = labels[box]
    where = np.flatnonzero(boxed)
    ids = boxed.ravel()[where].astype(np.intp)
    if ids.min() < 0:
        raise ValueError("Expected non-negative labels.")
    rows_of, cols_of = np.divmod(where, boxed.shape[1])
    rows_of += r0
    cols_of += c0
    size = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=size)
    present = np.flatnonzero(counts)
    present = present[present > 0]
    count = counts[present]
    sum_row = np.bincount(ids, weights=rows_of, minlength=size)[present]
    sum_col = np.bincount(ids, weights=cols_of, minlength=size)[present]
    values = image[box].ravel()[where].astype(np.float64)
    sum_value = np.bincount(ids, weights=values, minlength=size)[present]

    touches = np.zeros(present.size, np.bool_)
    if needle_mask is not None and needle_mask.any():
        if needle_mask.shape != labels.shape:
            raise ValueError(
                f"Expected a needle mask of shape {labels.shape}. Got {needle_mask.shape}."
            )
        near: np.ndarray = needle_mask.astype(np.uint8)
        if contact_px > 0:
            near = cv2.dilate(near, _contact_kernel(int(contact_px), binning))
        hit = np.zeros(size, np.bool_)
        hit[labels[near.view(np.bool_)]] = True
        touches = hit[present]

    border = np.zeros(size, np.bool_)
    border[labels[[0, -1], :]] = True
    border[labels[:, [0, -1]]] = True

    centroid_row, centroid_col = sum_row / count, sum_col / count
    mean_intensity = sum_value / count
    area = count.astype(np.float64)
    if areas_px is not None:
        if areas_px.ndim != 1 or areas_px.size < size:
            raise ValueError(f"Expected areas_px indexed by label, of length >= {size}. "
                             f"Got shape {areas_px.shape}.")
        area = np.asarray(areas_px, np.float64)[present]
    if binning > 1:
        centroid_row = (centroid_row + 0.5) * binning - 0.5
        centroid_col = (centroid_col + 0.5) * binning - 0.5
        area = area * binning * binning
    if pixel_size_nm is None or not math.isfinite(pixel_size_nm):
        area_nm2 = np.full(present.size, np.nan)
    else:
        area_nm2 = area * float(pixel_size_nm) ** 2
    return {
        "label": present.astype(np.int32),
        "area_px": np.rint(area).astype(np.int64),
        "area_nm2": area_nm2.astype(np.float64),
        "centroid_row": centroid_row,
        "centroid_col": centroid_col,
        "equivalent_diameter_nm": np.sqrt(4.0 * area_nm2 / np.pi),
        "mean_intensity": mean_intensity,
        "touches_needle": touches,
        "touches_frame_edge": border[present],
    }


@functools.lru_cache(maxsize=32)
def _contact_kernel(contact_px: int, binning: int) -> np.ndarray:
    """The elliptical disc of radius ``contact_px`` at 1/``binning`` resolution: the
    block offsets (dr, dc) such that some pixel of block (dr, dc) lies on the disc
    around some pixel of block (0, 0); dilating by it and upsampling is upsampling and
    dilating by the disc."""
    size = 2 * contact_px + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    if binning == 1:
        disc.flags.writeable = False  # shared by the cache
        return disc
    # Input offset d from a pixel at position e (0..b-1) inside its block lands in
    # block floor((e + d) / b): the two blocks floor(d / b) and ceil(d / b), and only
    # those.
    dr, dc = (offsets - contact_px for offsets in np.nonzero(disc))
    reach = -(-contact_px // binning)
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1), np.uint8)
    for rows in (np.floor_divide(dr, binning), -np.floor_divide(-dr, binning)):
        for cols in (np.floor_divide(dc, binning), -np.floor_divide(-dc, binning)):
            kernel[rows + reach, cols + reach] = 1
    kernel.flags.writeable = False  # shared by the cache
    return kernel


def particle_contacts(labels: np.ndarray) -> np.ndarray:
    """The contact graph: pairs of labels whose regions touch (share an edge).

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image, 0 for background; not modified.

    Returns
    -------
    pairs : (K, 2) ndarray of int32
        Each touching pair once, smaller label first, sorted. Zero rows without contacts.

    Notes
    -----
    Split particles share a boundary with no background between them, so
    4-connectivity (one right and one down neighbour per pixel) finds every contact;
    two particles separated only by a diagonal step are not in contact. Labels at
    analysis (binned) resolution give the pairs of their upsampled image: two blocks
    share an edge exactly when their pixels do.
    """
    flat = labels.ravel()
    if not flat.any():
        return np.zeros((0, 2), np.int32)
    rows = np.flatnonzero(labels.any(axis=1))
    cols = np.flatnonzero(labels.any(axis=0))
    window = labels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.int64)
    codes = []
    for a, b in ((window[:, :-1], window[:, 1:]), (window[:-1, :], window[1:, :])):
        touching = (a != b) & (a > 0) & (b > 0)
        low, high = np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])
        codes.append(low << 32 | high)
    unique = np.unique(np.concatenate(codes))
    return np.stack([unique >> 32, unique & 0xFFFFFFFF], axis=1).astype(np.int32)
