"""What the analysis saw in one frame, as images: particles labelled by track id, the
needle and grid masks, and the particles' outlines as polygons.

The per-frame segmentation labels particles ``1..N`` in no particular order; the
session's tracker gives each a stable ``track_id``. :func:`track_label_image` turns
the one into the other (pieces the session joined back into one particle,
:func:`rejoin_split_particles`, get that particle's id), so a label image in the
archive, a polygon on the wire and a row of the ``particles`` table name a particle
the same way. Everything stays at analysis resolution (``binning`` input pixels per
pixel), where the particles were measured; polygons are given in input (frame) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._prepare import _bounds

__all__ = ["MAX_OUTLINE_POINTS", "FrameLabels", "label_track_ids", "particle_outlines",
           "track_label_image", "track_lut"]

MAX_OUTLINE_POINTS = 16_384
"""Most polygon vertices in one frame's outlines (all particles together): a result's
JSON header stays far below the protocol's 1 MiB (about 12 bytes a vertex)."""


@dataclass(frozen=True, slots=True)
class FrameLabels:
    """One analysed frame as images at analysis resolution."""

    particles: np.ndarray
    """uint32 label image, each particle's pixels set to its ``track_id`` (0: none)."""
    needle: np.ndarray
    """bool mask of the needle (with its coating)."""
    grid: np.ndarray
    """bool mask of opaque grid bars."""
    binning: int
    """Input pixels per label pixel along each axis."""
    shape: tuple[int, int]
    """Shape of the input frame."""
    track_ids: np.ndarray | None = None
    """The track ids ``particles`` holds (sorted, 0 left out), as
    :func:`label_track_ids` gives them; None: read them off the image."""


def track_lut(segment_labels: np.ndarray, contacts: np.ndarray, kept_labels: np.ndarray,
              track_ids: np.ndarray) -> dict[int, int]:
    """Segmentation label -> track id, for every label of a frame's measurement.

    Parameters
    ----------
    segment_labels : (N,) int ndarray
        The labels measured in the frame (the ``label`` column before joining).
    contacts : (K, 2) int ndarray
        Pairs of touching labels of that measurement.
    kept_labels, track_ids : (M,) int ndarray
        The rows the session kept (a joined group keeps its lowest label) and their ids.

    Returns
    -------
    dict
        Each measured label's track id; a label joined into another row gets that row's
        id. Labels of no row (too small to measure) are left out.

    Notes
    -----
    :func:`rejoin_split_particles` joins whole groups of touching labels (connected
    components of ``contacts``) into the row of their lowest label, so a label that is
    not kept belongs to the row of its component's lowest label.
    """
    lut = {int(label): int(track) for label, track in zip(kept_labels.tolist(),
                                                           track_ids.tolist(), strict=True)}
    missing = [int(label) for label in segment_labels.tolist() if int(label) not in lut]
    if not missing or not contacts.size:
        return lut
    labels = np.asarray(segment_labels, np.int64)
    index = {int(label): i for i, label in enumerate(labels.tolist())}
    pairs = [(index[a], index[b]) for a, b in contacts.tolist() if a in index and b in index]
    if not pairs:
        return lut
    rows, cols = np.asarray(pairs).T
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(labels.size, labels.size))
    _, component = connected_components(graph, directed=False)
    lowest: dict[int, int] = {}
    for label, comp in zip(labels.tolist(), component.tolist(), strict=True):
        lowest[comp] = min(lowest.get(comp, label), label)
    for label in missing:
        owner = lowest[int(component[index[label]])]
        if owner in lut:
            lut[label] = lut[owner]
    return lut


def track_label_image(segment_image: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """The segmentation's label image with each label replaced by its track id.

    Labels missing from ``lut`` become 0 (background). Returns uint32.

    Only the rectangle holding the particles is looked up; the rest stays 0 (label 0
    is always background). At 1024² the lookup over the whole image took 3.5 ms.
    """
    box = _occupied(segment_image)
    inside = segment_image if box is None else segment_image[box]
    top = int(inside.max(initial=0))
    table = np.zeros(top + 1, np.uint32)
    for label, track in lut.items():
        if 0 < label <= top:
            table[label] = track
    if box is None:
        whole: np.ndarray = np.take(table, segment_image)
        return whole
    image = np.zeros(segment_image.shape, np.uint32)
    image[box] = np.take(table, inside)  # (a third faster than table[inside])
    return image


def label_track_ids(segment_image: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """The track ids ``track_label_image(segment_image, lut)`` holds, sorted, 0 left out.

    Read off the segmentation labels present (a count per label, one pass over the
    rectangle holding the particles) rather than by sorting the track-id image's
    pixels: the archive records which tracks each frame shows, and ``np.unique`` over
    a 512² image took 3 ms a frame.
    """
    box = _occupied(segment_image)
    if box is None:
        labels = set(np.flatnonzero(np.bincount(segment_image.ravel())).tolist())
    else:
        inside = segment_image[box]
        labels = set(np.flatnonzero(np.bincount(inside.ravel())).tolist())
        if inside.size < segment_image.size:
            labels.add(0)  # the background around the rectangle
    ids = {lut.get(int(label), 0) for label in labels}
    ids.discard(0)
    return np.array(sorted(ids), np.uint32)


def _occupied(image: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest rectangle holding every nonzero pixel of a 2-D image (two
    projections); None for an image of another dimension or with no such pixel."""
    return _bounds(image != 0) if image.ndim == 2 else None


def particle_outlines(labels: np.ndarray, *, binning: int = 1, tolerance_px: float = 1.0,
                      max_points: int = MAX_OUTLINE_POINTS) -> list[dict[str, Any]]:
    """Each labelled region's outline as a simplified polygon in input pixels.

    Parameters
    ----------
    labels : (M, N) int ndarray
        Label image (track ids) at analysis resolution.
    binning : int
        Input pixels per label pixel: vertices are scaled to the input frame.
    tolerance_px : float
        Largest distance, in label pixels, between the polygon and the region's boundary
        (Douglas-Peucker).
    max_points : int
        Bound on the vertices of all polygons together: past it the tolerance is
        doubled until they fit (a frame of thousands of particles keeps coarser
        outlines, never a message too large to decode).

    Returns
    -------
    list of dict
        ``{"track_id": int, "points": [[row, col], ...]}`` per outer boundary, rows and
        columns in input pixels (pixel centres, rounded), in increasing track id; a
        region in several pieces gives one polygon per piece.

    References
    ----------
    S. Suzuki and K. Abe, "Topological structural analysis of digitized binary images
    by border following", CVGIP 30 (1985) 32-46 (``cv2.findContours``).
    D. H. Douglas and T. K. Peucker, "Algorithms for the reduction of the number of
    points required to represent a digitized line", Cartographica 10 (1973) 112-122
    (``cv2.approxPolyDP``).
    """
    if labels.ndim != 2:
        raise ValueError(f"Expected a 2-D label image. Got shape {labels.shape}.")
    if binning < 1:
        raise ValueError(f"Expected binning >= 1. Got {binning}.")
    if labels.dtype.kind not in "biu":
        labels = labels.astype(np.int64)
    contours: list[tuple[int, np.ndarray]] = []
    for track, (rows, cols) in _boxes(labels):
        # One pixel of padding so a region at the crop's edge still gets a closed trace.
        mask = np.zeros((rows.stop - rows.start + 2, cols.stop - cols.start + 2), np.uint8)
        mask[1:-1, 1:-1] = labels[rows, cols] == track
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                    offset=(cols.start - 1, rows.start - 1))
        contours += [(track, contour.reshape(-1, 2).astype(np.float32)) for contour in found]
    tolerance = float(tolerance_px)
    while True:
        simplified = [(track, cv2.approxPolyDP(xy.reshape(-1, 1, 2), tolerance, True)
                       .reshape(-1, 2)) for track, xy in contours]
        if sum(len(p) for _, p in simplified) <= max_points or tolerance > 1e4:
            break
        tolerance *= 2.0
    if not simplified:
        return []
    b = float(binning)
    # Pixel centre of label pixel i is input pixel (i + 0.5) * b - 0.5 (in float32, the
    # vertices' type), all polygons at once.
    xy = np.concatenate([p for _, p in simplified])
    points = np.column_stack([np.rint((xy[:, 1] + 0.5) * b - 0.5).astype(np.int64),
                              np.rint((xy[:, 0] + 0.5) * b - 0.5).astype(np.int64)]).tolist()
    out = []
    start = 0
    for track, vertices in simplified:
        out.append({"track_id": int(track), "points": points[start:start + len(vertices)]})
        start += len(vertices)
    total = 0
    kept = []
    for polygon in out:  # the tolerance cannot shrink a polygon below 3 vertices
        total += len(polygon["points"])
        if total > max_points:
            break
        kept.append(polygon)
    return kept


_FEW_LABELS = 4
"""Up to this many labels, their boxes come from a row and a column projection each
(the needle's and the grid's outlines) rather than from ``ndimage.find_objects``."""


def _boxes(labels: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """Each positive label's bounding box, in increasing label order, as
    ``ndimage.find_objects`` gives it (labels absent from the image left out).

    ``find_objects`` walks the whole image, element by element, through a generic
    n-dimensional iterator (1.2 ms at 512², 3.5 ms at 1024²): it is given only the
    rectangle holding every labelled pixel, found by two projections, and with a few
    labels each box is two projections of its own.
    """
    box = _occupied(labels)
    if box is None:
        return []
    r0, c0 = box[0].start, box[1].start
    crop = labels[box]
    top = int(crop.max())
    boxes: list[tuple[int, tuple[slice, slice]]] = []
    if top <= _FEW_LABELS:
        for label in range(1, top + 1):
            inside = crop == label
            r = np.flatnonzero(inside.any(axis=1))
            if r.size:
                c = np.flatnonzero(inside.any(axis=0))
                boxes.append((label, (slice(r0 + int(r[0]), r0 + int(r[-1]) + 1),
                                      slice(c0 + int(c[0]), c0 + int(c[-1]) + 1))))
        return boxes
    lab = crop.view(np.int32) if crop.dtype in (np.uint32, np.int32) else \
        crop.astype(np.int64, copy=False)
    for label, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is not None:
            boxes.append((label, (slice(r0 + box[0].start, r0 + box[0].stop),
                                  slice(c0 + box[1].start, c0 + box[1].stop))))
    return boxes
