"""Particle identities for archives and streams that carry no tracking ids.

The service's tracker (``track_id``) is used whenever it is present; this fallback
only keeps per-particle curves readable without it, by greedy nearest-centroid
linking, with a memory so that a particle the segmentation loses for a few frames
(merged with a neighbour, split in two) gets its id back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CentroidLinker"]


class CentroidLinker:
    """Assigns stable ids to particles from their centroids, one frame at a time.

    Parameters
    ----------
    max_step_px
        A particle further than this from every remembered track starts a new track.
    memory_frames
        How many frames a track that was not seen is still remembered.

    Notes
    -----
    Greedy: pairs are taken in order of increasing distance, each particle and each
    track used once. Enough for slowly swelling particles at frame rate; the
    service's tracker (optimal assignment with drift compensation) is better.

    References
    ----------
    J. C. Crocker and D. G. Grier, "Methods of digital video microscopy for colloidal
    studies", J. Colloid Interface Sci. 179 (1996) 298-310.
    """

    def __init__(self, *, max_step_px: float = 20.0, memory_frames: int = 20) -> None:
        self.max_step_px = float(max_step_px)
        self.memory_frames = int(memory_frames)
        self._positions = np.zeros((0, 2))
        self._ids = np.zeros(0, dtype=np.int64)
        self._age = np.zeros(0, dtype=np.int64)
        self._next_id = 1

    def update(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Ids (int64, one per particle) for this frame's centroids."""
        points = np.column_stack([np.asarray(rows, float), np.asarray(cols, float)])
        ids = np.full(len(points), -1, dtype=np.int64)
        matched = np.zeros(len(self._ids), bool)
        if len(points) and len(self._positions):
            distance = np.linalg.norm(points[:, None, :] - self._positions[None, :, :], axis=2)
            # Recently seen tracks first: a long-lost neighbour must not steal a particle.
            cost = distance + self._age[None, :] * 1e-3 * self.max_step_px
            used_new = np.zeros(len(points), bool)
            for flat in np.argsort(cost, axis=None):
                i, j = np.unravel_index(flat, cost.shape)
                if distance[i, j] > self.max_step_px:
                    continue
                if used_new[i] or matched[j]:
                    continue
                ids[i] = self._ids[j]
                used_new[i] = matched[j] = True
        fresh = ids < 0
        ids[fresh] = np.arange(self._next_id, self._next_id + int(fresh.sum()))
        self._next_id += int(fresh.sum())
        keep = ~matched & (self._age + 1 <= self.memory_frames)
        self._positions = np.vstack([points, self._positions[keep]])
        self._ids = np.concatenate([ids, self._ids[keep]])
        self._age = np.concatenate([np.zeros(len(points), np.int64), self._age[keep] + 1])
        return ids
