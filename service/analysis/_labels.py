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
    """
    top = int(segment_image.max(initial=0))
    table = np.zeros(top + 1, np.uint32)
    for label, track in lut.items():
        if 0 < label <= top:
            table[label] = track
    image: np.ndarray = table[segment_image]
    return image


def label_track_ids(segment_image: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """The track ids ``track_label_image(segment_image, lut)`` holds, sorted, 0 left out.

    Read off the segmentation labels present (a count per label, one pass) rather
    than by sorting the track-id image's pixels: the archive records which tracks
    each frame shows, and ``np.unique`` over a 512² image took 3 ms a frame.
    """
    present = np.flatnonzero(np.bincount(segment_image.ravel()))
    ids = {lut.get(int(label), 0) for label in present.tolist()}
    ids.discard(0)
    return np.array(sorted(ids), np.uint32)


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
    # One pass over the image for every region's bounding box (no sort of the pixels);
    # the boundary is then traced per particle, in its box.
    lab = labels.view(np.int32) if labels.dtype in (np.uint32, np.int32) else \
        labels.astype(np.int64, copy=False)
    boxes = ndimage.find_objects(lab)
    contours: list[tuple[int, np.ndarray]] = []
    for track, box in enumerate(boxes, start=1):
        if box is None:
            continue
        r0, c0 = box[0].start, box[1].start
        # One pixel of padding so a region at the crop's edge still gets a closed trace.
        mask = np.pad((lab[box] == track).astype(np.uint8), 1)
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in found:
            shifted = contour.reshape(-1, 2) + np.array([c0 - 1, r0 - 1])
            contours.append((track, shifted.astype(np.float32)))
    tolerance = float(tolerance_px)
    while True:
        simplified = [(track, cv2.approxPolyDP(xy.reshape(-1, 1, 2), tolerance, True)
                       .reshape(-1, 2)) for track, xy in contours]
        if sum(len(p) for _, p in simplified) <= max_points or tolerance > 1e4:
            break
        tolerance *= 2.0
    b = float(binning)
    out = []
    for track, xy in simplified:
        # Pixel centre of label pixel i is input pixel (i + 0.5) * b - 0.5.
        rows = np.rint((xy[:, 1] + 0.5) * b - 0.5).astype(np.int64)
        cols = np.rint((xy[:, 0] + 0.5) * b - 0.5).astype(np.int64)
        out.append({"track_id": int(track),
                    "points": np.column_stack([rows, cols]).tolist()})
    total = 0
    kept = []
    for polygon in out:  # the tolerance cannot shrink a polygon below 3 vertices
        total += len(polygon["points"])
        if total > max_points:
            break
        kept.append(polygon)
    return kept
