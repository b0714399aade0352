"""The session's memory of whole particles: pieces of one frame joined when the last
frame had them as one particle, and each particle's touching neighbours by track id."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rejoin_split_particles"]


def rejoin_split_particles(
    table: dict[str, np.ndarray], contacts: np.ndarray, previous_centroids: np.ndarray,
    previous_areas: np.ndarray, *, previous_streak: np.ndarray | None = None,
    area_tolerance: float = 0.25, max_frames: int = 10,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Join touching pieces of this frame that were one particle in the last.

    A group of touching particles (``contacts``) is joined into one row when one
    particle of the last frame (``previous_centroids``, already moved by this frame's
    drift, and ``previous_areas``) accounts for it: its centroid lies within the
    group's equivalent radius of the group's centroid, its area is the group's within
    ``area_tolerance``, and no other particle of the last frame lies within the group.
    A particle does not break in two between two frames, so such a split is the
    segmentation's (diffraction contrast moving inside a crystal), not the
    specimen's. :func:`measure_frame` stays stateless; this is the session's memory.
    A split that lasts (``previous_streak``: how many frames in a row each particle
    of the last frame was joined) more than ``max_frames`` frames is believed: two
    particles that one frame merged are not kept merged for ever.

    Returns the table (joined rows: summed areas, area-weighted centroids and mean
    intensities, the lowest label), the contacts relabelled (pairs inside a joined
    group dropped) and each row's streak of joined frames.
    """
    labels = table["label"]
    none = np.zeros(labels.size, np.int64)
    if labels.size < 2 or not contacts.size or not previous_areas.size:
        return table, contacts, none
    if previous_streak is None:
        previous_streak = np.zeros(previous_areas.size, np.int64)
    row_of = {int(label): row for row, label in enumerate(labels.tolist())}
    parent = list(range(labels.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in contacts.tolist():
        if a in row_of and b in row_of:
            ra, rb = find(row_of[a]), find(row_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for row in range(labels.size):
        groups.setdefault(find(row), []).append(row)
    area = table["area_px"].astype(np.float64)
    rows_c, cols_c = table["centroid_row"], table["centroid_col"]
    target = np.arange(labels.size)
    streak = np.zeros(labels.size, np.int64)
    for members in groups.values():
        if len(members) < 2:
            continue
        m = np.asarray(members)
        total = float(area[m].sum())
        centre = np.array([np.average(rows_c[m], weights=area[m]),
                           np.average(cols_c[m], weights=area[m])])
        radius = math.sqrt(total / math.pi)
        near = np.flatnonzero(np.hypot(*(previous_centroids - centre).T) < radius)
        if near.size != 1:
            continue
        if abs(previous_areas[near[0]] - total) > area_tolerance * total:
            continue
        if previous_streak[near[0]] >= max_frames:
            continue
        target[m] = m.min()
        streak[m.min()] = previous_streak[near[0]] + 1
    if np.array_equal(target, np.arange(labels.size)):
        return table, contacts, none
    keep = np.flatnonzero(target == np.arange(labels.size))
    out: dict[str, np.ndarray] = {}
    weights = area
    joined: np.ndarray
    for name, column in table.items():
        if name in ("area_px", "area_nm2"):
            joined = np.bincount(target, weights=column.astype(np.float64),
                                 minlength=labels.size)
        elif name in ("centroid_row", "centroid_col", "mean_intensity"):
            joined = np.bincount(target, weights=column * weights, minlength=labels.size) \
                / np.maximum(np.bincount(target, weights=weights, minlength=labels.size), 1e-12)
        elif name in ("touches_needle", "touches_frame_edge"):
            joined = np.bincount(target, weights=column.astype(np.float64),
                                 minlength=labels.size) > 0
        elif name == "equivalent_diameter_nm":
            nm2 = np.bincount(target, weights=table["area_nm2"].astype(np.float64),
                              minlength=labels.size)
            joined = 2.0 * np.sqrt(nm2 / math.pi)
        else:  # label: the group's first
            joined = column
        out[name] = np.asarray(joined[keep]).astype(column.dtype)
    label_of = {int(labels[row]): int(labels[target[row]]) for row in range(labels.size)}
    pairs = [(label_of.get(a, a), label_of.get(b, b)) for a, b in contacts.tolist()]
    pairs = sorted({(min(a, b), max(a, b)) for a, b in pairs if a != b})
    joined_contacts = np.asarray(pairs, np.int32).reshape(-1, 2)
    return out, joined_contacts, streak[keep]


def _neighbours(contacts: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Space-separated track ids of each particle's contacts, as an object column."""
    out = np.empty(labels.size, dtype=object)
    out[:] = ""
    if not contacts.size or not labels.size:
        return out
    track_of = dict(zip(labels.tolist(), ids.tolist(), strict=True))
    row_of = {label: row for row, label in enumerate(labels.tolist())}
    found: dict[int, list[int]] = {}
    for a, b in contacts.tolist():
        if a in track_of and b in track_of:
            found.setdefault(row_of[a], []).append(track_of[b])
            found.setdefault(row_of[b], []).append(track_of[a])
    for row, others in found.items():
        out[row] = " ".join(str(i) for i in sorted(others))
    return out
