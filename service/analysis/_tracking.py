"""State across frames: specimen drift and particle identities.

Two small classes in trackpy's ``Linker`` mould, each with one ``update`` and an
``_iter`` adaptor so live, replay and offline re-analysis run the same code:

* :class:`DriftEstimator`: the shift of the specimen between consecutive frames,
  by phase correlation of the flattened frames with the needle blanked out (the
  needle moves on its own; the particles and grid bar move with the stage);
* :class:`ParticleTracker`: a stable id per particle, by optimal assignment of this
  frame's centroids to the tracks' drift-compensated positions.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from ._prepare import _disc

__all__ = ["DriftEstimator", "ParticleTracker", "drift_image", "drift_iter", "track_iter"]

_DOUBTFUL_WEIGHT = 0.3
"""How far a doubtful match moves its track towards the detection."""
_RADIUS_HISTORY = 7
"""A track's radius is the median of its last this many matches: one frame in which
the segmentation merged the particle with a neighbour, or bit a piece off it, must not
become the size the next frames are matched against (at 2 e/A^2/s the particle came
back 20-40 % smaller than the merged blob and was given a new id)."""
_MERGE_MIN_MATCHES = 10
"""A track found in fewer frames may be a fragment: it is not taken for a neighbour
merged with a particle."""
_NEIGHBOUR_DISTANCE = 0.75
"""Touching particles' centres are about the sum of their radii apart; a piece bitten
off a particle has its centroid well inside it."""
_VACUUM = 128
"""Level of vacuum in the flattened frames (see ``_prepare``)."""


class DriftEstimator:
    """Cumulative specimen drift, from consecutive flattened frames.

    Parameters
    ----------
    downsample : int
        Correlate frames reduced by this factor (area average): drift of a few pixels per
        frame stays well inside the reduced frame, sub-pixel accuracy survives the
        peak's centroid, and the FFTs cost a quarter.
    min_response : float
        Below this phase-correlation peak height the frames share too little (a blank
        frame, a scene change) and the step is taken as zero.

    Notes
    -----
    ``update`` returns the step since the previous frame; ``drift_px`` accumulates
    the steps (row, col), in the input frame's pixels. The frame is mean-subtracted
    and windowed (Hann) so the image border does not correlate with itself.

    References
    ----------
    C. D. Kuglin and D. C. Hines, "The phase correlation image alignment method",
    Proc. IEEE Int. Conf. Cybernetics and Society (1975) 163-165.
    """

    def __init__(self, *, downsample: int = 2, min_response: float = 0.05) -> None:
        self.downsample = max(1, int(downsample))
        self.min_response = float(min_response)
        self.drift_px = (0.0, 0.0)
        self.response = math.nan
        self._previous: np.ndarray | None = None
        self._window: np.ndarray | None = None

    def update(self, flat: np.ndarray, *, exclude: np.ndarray | None = None,
               scale: float = 1.0) -> tuple[float, float]:
        """Take one flattened frame (vacuum at 128); return its (row, col) step in pixels.

        ``exclude`` marks pixels to blank (the needle); ``scale`` converts the
        frame's pixels to the caller's (the analysis binning).
        """
        image = drift_image(flat, exclude=exclude, downsample=self.downsample)
        return self.update_image(image, scale=scale * self.downsample)

    def update_image(self, image: np.ndarray, *, scale: float = 1.0) -> tuple[float, float]:
        """Take a frame already through :func:`drift_image`; ``scale`` is the caller's
        pixels per pixel of ``image``. The stateful half of :meth:`update`: a worker
        process may prepare the image, the session's one estimator correlates it."""
        previous, self._previous = self._previous, image
        if previous is None or previous.shape != image.shape or min(image.shape) < 8:
            return (0.0, 0.0)
        if self._window is None or self._window.shape != image.shape:
            self._window = cv2.createHanningWindow(image.shape[::-1], cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(previous, image, self._window)
        self.response = float(response)
        if not (response >= self.min_response and math.isfinite(dx) and math.isfinite(dy)):
            return (0.0, 0.0)
        step = (float(dy) * scale, float(dx) * scale)
        self.drift_px = (self.drift_px[0] + step[0], self.drift_px[1] + step[1])
        return step


_EXCLUDE_MARGIN_PX = 4
"""The blanked needle reaches this many pixels past its mask: the mask ends where the
frame crosses the needle's threshold, and the blurred rim outside it (three smoothing
sigmas, 1.5 px, and the microscope's own blur) is darker than vacuum and moves with the
needle. Left in, the rim of a large needle pulls the drift estimate along as the needle
moves, and the contact rule, which judges the tip less the drift, then sees no
withdrawal."""
_EXCLUDE_KERNEL = _disc(_EXCLUDE_MARGIN_PX)


def drift_image(flat: np.ndarray, *, exclude: np.ndarray | None = None,
                downsample: int = 2) -> np.ndarray:
    """What :class:`DriftEstimator` correlates: the flattened frame (vacuum at 128) with
    ``exclude`` (the needle) and ``_EXCLUDE_MARGIN_PX`` around it blanked to vacuum,
    reduced ``downsample`` times, float32 with vacuum at 0. Stateless and small (a
    sixteenth of a binned frame's bytes at 2), so it can be computed where the frame is
    analysed and sent on."""
    image: np.ndarray = flat.astype(np.float32)
    if exclude is not None and exclude.any():
        grown = cv2.dilate(exclude.astype(np.uint8), _EXCLUDE_KERNEL)
        image[grown.view(np.bool_)] = _VACUUM
    if downsample > 1:
        rows, cols = image.shape
        image = cv2.resize(image, (max(1, cols // downsample), max(1, rows // downsample)),
                           interpolation=cv2.INTER_AREA)
    image -= np.float32(_VACUUM)
    return image


def drift_iter(estimator: DriftEstimator,
               frames: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[
                   tuple[float, float]]:
    """Feed (flattened frame, exclusion mask) pairs; yield each frame's cumulative drift."""
    for flat, exclude in frames:
        estimator.update(flat, exclude=exclude)
        yield estimator.drift_px


@dataclass(slots=True)
class _Track:
    row: float
    """Position in specimen coordinates (image position minus cumulative drift)."""
    col: float
    radius: float
    """Median of ``radii``: what detections are compared with."""
    missed: int = 0
    radii: deque[float] = field(default_factory=lambda: deque(maxlen=_RADIUS_HISTORY))
    matches: int = 1
    """Frames it was found in."""


class ParticleTracker:
    """Give each particle the same id in every frame, under drift and swelling.

    Parameters
    ----------
    max_step : float
        A detection may join a track only within this fraction of the larger of
        their equivalent radii (drift already removed). Particles in a cluster touch,
        so their centres are at least about one radius apart: half a radius keeps a
        merged or mis-split detection from stealing a neighbour's id.
    max_radius_ratio : float
        ...and only if their equivalent radii differ by less than this factor. Swelling
        changes a radius by a fraction of a percent per frame; two particles merged by
        the segmentation make a blob about 1.4 times wider, which then gets an id of
        its own instead of taking the id of the particle it is centred on.
    memory_frames : int
        A track not seen for more than this many frames is forgotten; until then a
        reappearing particle (hidden by the needle, briefly merged with a neighbour)
        gets its old id back.

    Notes
    -----
    Assignment minimises the sum of costs (Hungarian algorithm, as
    ``scipy.optimize.linear_sum_assignment``) over the pairs within reach, a pair's
    cost its distance over its reach plus its log radius ratio over the largest
    allowed (both 0..1); new
    particles get new ids, counting up from 1. Ids are never reused.

    A match larger than its track is then tested as a merge: the particle and a
    neighbour the segmentation did not split apart. The neighbour is a track not
    matched in this frame, found in at least 10 frames (not a passing fragment),
    overlapping the detection and at least 0.75 of the sum of their radii from the
    particle (touching particles are about the sum apart; a piece bitten off the
    particle lies inside it). If the pair's summed area and area-weighted centroid
    explain the detection (within a quarter of the size gate and half the reach)
    better than the particle alone, the detection keeps the particle's id but its
    track keeps its size and place (:attr:`merged_with` names the neighbour). At
    2 e/A^2/s a particle was merged with a small neighbour in 40 % of the frames:
    the blob's size became the track's, and the particle, back on its own but
    bitten, fell outside the size gate and got a new id for a frame. Jaqaman et al.
    resolve merges the same way, by the intensity (here the area) two particles add
    up to.

    References
    ----------
    H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Res. Logist.
    Q. 2 (1955) 83-97.
    J. C. Crocker and D. G. Grier, "Methods of digital video microscopy for colloidal
    studies", J. Colloid Interface Sci. 179 (1996) 298-310.
    K. Jaqaman et al., "Robust single-particle tracking in live-cell time-lapse
    sequences", Nat. Methods 5 (2008) 695-702.
    """

    def __init__(self, *, max_step: float = 0.5, max_radius_ratio: float = 1.25,
                 memory_frames: int = 40) -> None:
        self.max_step = float(max_step)
        self.max_radius_ratio = float(max_radius_ratio)
        self.memory_frames = int(memory_frames)
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self.merged_with = np.zeros(0, np.int64)
        """Per detection of the latest :meth:`update`: the track id of the neighbour it
        is merged with (see the notes), or 0."""

    @property
    def track_count(self) -> int:
        """Ids handed out so far."""
        return self._next_id - 1

    def update(self, centroids: np.ndarray, radii: np.ndarray, *,
               drift_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Take one frame's particles; return their ids (int64, in input order).

        Parameters
        ----------
        centroids : (n, 2) ndarray
            (row, col) of each particle, image pixels.
        radii : (n,) ndarray
            Equivalent radius of each particle, pixels.
        drift_px : (float, float)
            Cumulative specimen drift (row, col) at this frame, from
            :class:`DriftEstimator`.
        """
        centroids = np.asarray(centroids, float).reshape(-1, 2)
        radii = np.asarray(radii, float).reshape(-1)
        specimen = centroids - np.asarray(drift_px, float)
        ids = np.zeros(len(centroids), np.int64)
        track_ids = list(self._tracks)
        matched: set[int] = set()
        doubtful: set[int] = set()
        if track_ids and len(centroids):
            tracks = [self._tracks[i] for i in track_ids]
            positions = np.array([(t.row, t.col) for t in tracks])
            track_radii = np.array([t.radius for t in tracks])
            reach = self.max_step * np.maximum.outer(track_radii, radii)
            distance = np.hypot(positions[:, None, 0] - specimen[None, :, 0],
                                positions[:, None, 1] - specimen[None, :, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                mismatch = np.abs(np.log(np.maximum(radii[None, :], 1e-9)
                                         / np.maximum(track_radii[:, None], 1e-9)))
            limit = math.log(max(self.max_radius_ratio, 1.0 + 1e-9))
            allowed = (distance <= reach) & (mismatch <= limit)
            cost = np.where(allowed, distance / np.maximum(reach, 1e-9) + mismatch / limit, 1e9)
            # Imported here: scipy.optimize takes ~1 s to import, and every CLI command
            # (even --help) imports the analysis package through the config.
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if allowed[r, c]:
                    ids[c] = track_ids[r]
                    matched.add(track_ids[r])
                    if distance[r, c] > reach[r, c] / 2 or mismatch[r, c] > limit / 2:
                        doubtful.add(c)
        if track_ids and len(centroids):
            # A detection given a younger id (or none) while an older, unmatched track
            # sits within reach with a similar size is that older particle: a frame of
            # mis-segmentation had split its history in two.
            older = {i for i, t in enumerate(track_ids) if t not in matched}
            # Only detections within reach of one of them at all (``older`` only
            # shrinks): the rest cost a Python step per pair of detection and track.
            within = allowed[sorted(older)].any(axis=0) if older else np.zeros(0, bool)
            for c in np.flatnonzero(within).tolist():
                candidates = [r for r in older if allowed[r, c]
                              and (ids[c] == 0 or track_ids[r] < ids[c])]
                if not candidates:
                    continue
                r = min(candidates, key=lambda k: track_ids[k])
                if ids[c]:
                    matched.discard(int(ids[c]))
                    del self._tracks[int(ids[c])]
                ids[c] = track_ids[r]
                matched.add(track_ids[r])
                older.discard(r)
                # Doubtful or not as a match of the older track, not of the younger.
                if distance[r, c] > reach[r, c] / 2 or mismatch[r, c] > limit / 2:
                    doubtful.add(c)
                else:
                    doubtful.discard(c)
        self.merged_with = np.zeros(len(centroids), np.int64)
        if track_ids and len(centroids):
            self._merges(ids, matched, specimen, radii, cost, track_ids)
        for i in np.flatnonzero(ids == 0):
            ids[i] = self._next_id
            self._next_id += 1
        for track_id in track_ids:
            if track_id not in self._tracks:
                continue
            if track_id not in matched:
                lost = self._tracks[track_id]
                lost.missed += 1
                if lost.missed > self.memory_frames:
                    del self._tracks[track_id]
        for index, (track_id, (row, col), radius) in enumerate(
                zip(ids.tolist(), specimen, radii, strict=True)):
            track = self._tracks.get(int(track_id))
            matches = track.matches + 1 if track is not None else 1
            if track is not None and self.merged_with[index]:
                # The particle with a neighbour stuck to it: found, but neither its
                # size nor its place.
                track.missed, track.matches = 0, matches
                continue
            history: deque[float] = track.radii if track is not None else deque(
                maxlen=_RADIUS_HISTORY)
            history.append(float(radius))
            # (statistics.median: the same value as numpy's on these few floats, without
            # converting them to an array for every particle of every frame.)
            size = float(statistics.median(history))
            if index in doubtful and track is not None:
                # Perhaps a mis-segmented frame (half a particle, two merged): it keeps
                # the id but moves the track only part of the way, so that one bad
                # frame does not mislead the next match while slow swelling is followed.
                w = _DOUBTFUL_WEIGHT
                self._tracks[int(track_id)] = _Track(
                    (1 - w) * track.row + w * float(row), (1 - w) * track.col + w * float(col),
                    size, radii=history, matches=matches)
                continue
            self._tracks[int(track_id)] = _Track(float(row), float(col), size, radii=history,
                                                 matches=matches)
        return ids

    def _merges(self, ids: np.ndarray, matched: set[int], specimen: np.ndarray,
                radii: np.ndarray, cost: np.ndarray, track_ids: list[int]) -> None:
        """Mark in :attr:`merged_with` the detections that are their match merged with
        a neighbour (see the class notes)."""
        limit = math.log(max(self.max_radius_ratio, 1.0 + 1e-9))
        row_of = {t: r for r, t in enumerate(track_ids)}
        tracks = self._tracks
        free = [t for t in track_ids if t in tracks and t not in matched
                and tracks[t].matches >= _MERGE_MIN_MATCHES]
        for c in range(ids.size):
            a = int(ids[c])
            if not a:
                continue
            ta = tracks[a]
            if math.log(max(float(radii[c]), 1e-9) / max(ta.radius, 1e-9)) <= limit / 4:
                continue  # not larger than the particle by more than its own jitter
            single = float(cost[row_of[a], c])
            reach = self.max_step * float(radii[c])
            best: tuple[float, int] | None = None
            for b in free:
                tb = tracks[b]
                if math.hypot(tb.row - specimen[c, 0], tb.col - specimen[c, 1]) > (
                        radii[c] + tb.radius):
                    continue  # nowhere near the detection
                if math.hypot(tb.row - ta.row, tb.col - ta.col) < _NEIGHBOUR_DISTANCE * (
                        ta.radius + tb.radius):
                    continue  # a piece bitten off the particle, not a neighbour
                wa, wb = ta.radius**2, tb.radius**2
                distance = math.hypot((wa * ta.row + wb * tb.row) / (wa + wb) - specimen[c, 0],
                                      (wa * ta.col + wb * tb.col) / (wa + wb) - specimen[c, 1])
                mismatch = abs(math.log(max(float(radii[c]), 1e-9) / math.sqrt(wa + wb)))
                if distance > reach / 2 or mismatch > limit / 4:
                    continue
                merge = distance / max(reach, 1e-9) + mismatch / limit
                if merge < single and (best is None or merge < best[0]):
                    best = (merge, b)
            if best is not None:
                self.merged_with[c] = best[1]
                free.remove(best[1])


def track_iter(tracker: ParticleTracker,
               frames: Iterable[tuple[np.ndarray, np.ndarray, tuple[float, float]]]) -> Iterator[
                   np.ndarray]:
    """Feed (centroids, radii, drift) per frame; yield each frame's particle ids."""
    for centroids, radii, drift in frames:
        yield tracker.update(centroids, radii, drift_px=drift)
