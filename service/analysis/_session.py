"""A session's analysis: per-frame measurements joined up across frames.

:class:`SessionAnalyzer` is what the worker calls once per analysed frame. It runs
the stateless per-frame analysis, then the state across frames: drift
(:class:`DriftEstimator`), particle identities (:class:`ParticleTracker`), the
reference areas at the start of lithiation, rates and the apparent diffusion
coefficient (:mod:`lithoscope.service.physics`), and the alerts
(:class:`lithoscope.service.alerts.AlertDetector`). No I/O; the same code runs live,
on replay and offline (:func:`session_iter`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lithoscope.service import physics, schema
from lithoscope.service.alerts import Alert, AlertConfig, AlertDetector
from lithoscope.service.protocol import EventKind

from ._config import AnalysisConfig
from ._contact import NeedleWatch
from ._frame import FrameAnalysis
from ._labels import track_lut
from ._measurement import _DRIFT_DOWNSAMPLE, FrameMeasurement, _measure
from ._rejoin import _neighbours, rejoin_split_particles
from ._tracking import DriftEstimator, ParticleTracker

__all__ = ["CLUSTER_COLUMNS", "SESSION_PARTICLE_COLUMNS", "SessionAnalyzer", "session_iter"]

SESSION_PARTICLE_COLUMNS: dict[str, np.dtype[Any]] = schema.SESSION_PARTICLE_COLUMNS
"""Per-particle columns of :meth:`SessionAnalyzer.update`: those of
:func:`measure_particles` plus the particle's stable ``track_id``, the track ids of
the particles it touches (``neighbour_ids``, space-separated str), and its physics."""

CLUSTER_COLUMNS: tuple[str, ...] = schema.CLUSTER_VALUES
"""Keys of the cluster dict of :meth:`SessionAnalyzer.update` (the ``tracked`` columns of
the ``cluster`` table in :mod:`lithoscope.service.schema`)."""

_HISTORY = 4096
"""Most samples kept per track: the fit of D needs the whole swelling, minutes at most.
Outside a swelling (before contact, once it is lost, and in contact until an onset
could be dated) only the rate window is kept."""
_FORGET_S = 120.0
"""A track's history is dropped once unseen this long: the tracker has retired its id
long before, and a session of hours must not keep every id it ever gave out."""
_FIT_INTERVAL_S = 1.0
"""The diffusion fit is refreshed at most this often (it costs more than a frame)."""


class _Samples:
    """(t_s, area_px) pairs, oldest first, at most ``maxlen`` (appending to a full one
    drops the oldest), kept in two float64 arrays.

    The rate window and the samples since the onset are read every frame for every
    track: as slices of arrays they cost a comparison, where a deque of tuples cost a
    Python step per sample and a conversion to an array (0.1 ms a track at 100
    frames/s).
    """

    __slots__ = ("_area", "_end", "_start", "_t", "maxlen")

    def __init__(self, maxlen: int = _HISTORY) -> None:
        self.maxlen = maxlen
        self._t = np.empty(64)
        self._area = np.empty(64)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, t_s: float, area_px: float) -> None:
        if self._end - self._start >= self.maxlen:
            self._start += 1
        if self._end == self._t.size:
            n = self._end - self._start
            size = self._t.size if 2 * n <= self._t.size else 2 * self._t.size
            t, area = np.empty(size), np.empty(size)
            t[:n], area[:n] = self._t[self._start:self._end], self._area[self._start:self._end]
            self._t, self._area, self._start, self._end = t, area, 0, n
        self._t[self._end] = t_s
        self._area[self._end] = area_px
        self._end += 1

    def extend(self, pairs: Iterable[tuple[float, float]]) -> None:
        for t_s, area_px in pairs:
            self.append(t_s, area_px)

    def drop_before(self, t_s: float) -> None:
        """Drop the oldest samples while they are older than ``t_s``."""
        t = self._t
        while self._start < self._end and t[self._start] < t_s:
            self._start += 1

    def recent(self, from_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(t_s, area_px) of the newest samples back to the first older than ``from_s``
        (or not comparable with it), oldest first: copies."""
        t = self._t[self._start:self._end]
        outside = np.flatnonzero(~(t >= from_s))
        first = self._start + (int(outside[-1]) + 1 if outside.size else 0)
        return self._t[first:self._end].copy(), self._area[first:self._end].copy()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(t_s, area_px) of every sample, oldest first: views, valid until the next
        change."""
        return self._t[self._start:self._end], self._area[self._start:self._end]


@dataclass(slots=True)
class _Series:
    """One particle's (or the cluster's) history in this session."""

    before: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    """(t_s, area_px) of the latest frames, until the reference is taken."""
    reference_px: float | None = None
    """Area when lithiation could begin (the needle's contact)."""
    samples: _Samples = field(default_factory=_Samples)
    """(t_s, area_px) since the reference, those the rate and the fit of D may still use."""
    diffusion_cm2_per_s: float = math.nan
    fitted_at_s: float = -math.inf
    last_seen_s: float = -math.inf


class SessionAnalyzer:
    """Analyse one session frame by frame; remembers what it needs across frames.

    Parameters
    ----------
    config : AnalysisConfig, optional
        Per-frame segmentation options.
    alerts : AlertConfig, optional
        Alert thresholds.

    Notes
    -----
    * Drift: phase correlation of consecutive flattened frames with the needle
      blanked; cumulative, in pixels. Tracks are matched on drift-compensated
      centroids, so a particle keeps its id while the stage wanders.
    * Reference: the areas are referred to their values just before the needle
      touched the cluster (median of the last ``baseline_frames`` frames before the
      debounced contact began; for a particle first seen later, of its first frames):
      lithiation cannot start before contact, and a reference taken after it would
      hide chemical lithiation, which starts at contact.
    * Physics, per particle and for the cluster: ``relative_area_change`` = A/A0 - 1,
      ``volume_ratio`` = (A/A0)^(3/2), ``lithium_x`` (x in LixSi), the area rate
      (Theil-Sen slope over ``rate_window_s``, nm^2/s) and the apparent diffusion
      coefficient (Kezdy-Swinbourne time constant of the volume ratio since the
      expansion onset, read as diffusion into a sphere of the reference radius).
      The cluster's D is that of the particle touching the needle that swelled most:
      the one fed directly, whose kinetics the sphere model describes.
    * Resolution: with automatic binning (``config.binning`` 0), the binning chosen
      on the first frame with particles (from their size, see
      :class:`AnalysisConfig`) is kept for the following frames at the same pixel
      size (:meth:`frame_config`, used by :meth:`update`), so that A and A0 are
      measured on one grid. :func:`measure_frame` chooses per frame unless given it.
    * Alerts come from :class:`AlertDetector` on the cluster area, with the drift
      step; the particles concerned are filled in here. The area the alerts watch
      leaves out the particles cut by the frame edge (``touches_frame_edge``), whose
      area in view changes as the specimen drifts, not as it lithiates: it changes
      from frame to frame by what the particles in view in both frames gained, plus
      the particles newly seen and less those gone (:meth:`_watched_area`). A particle
      crossing the edge enters or leaves it without a step; with no particle at the
      edge it is the cluster area.
    * Contact (``needle_contact``) is made by the frame's contact rule (a particle
      within ``needle_contact_px`` of the coating's edge) and held while a particle
      stays joined to the needle with no vacuum between (``needle_joined``), or while
      the needle stays where it was relative to the specimen (its tip less the drift,
      within ``threshold_sigmas`` of its own jitter over the contact debounce,
      :meth:`NeedleWatch.moved`): a lithiated shell pressed on the coating may be lighter
      than the particles' threshold, or fainter than the coating's edge and within a
      few noise sigmas of the vacuum, and a closing gap joins them a frame or more
      before they touch. A contact ends when the rule no longer sees it and the
      needle moves away; a needle withdrawn more slowly than that reach per debounce
      (about a pixel per frame) keeps a held contact until it moves faster.
      Either counts only once the session has a needle (``needle_confirm_frames`` of
      :class:`AlertConfig`): with no needle in view, a near-black crystal cut by the
      frame edge is taken for one for a frame or three.

    References
    ----------
    See :mod:`lithoscope.service.physics` and docs/analysis.md.
    """

    def __init__(self, config: AnalysisConfig | None = None,
                 alerts: AlertConfig | None = None) -> None:
        self.config = config if config is not None else AnalysisConfig()
        self.alert_config = alerts if alerts is not None else AlertConfig()
        self.drift = DriftEstimator(downsample=_DRIFT_DOWNSAMPLE)
        self.tracker = ParticleTracker()
        self.detector = AlertDetector(self.alert_config)
        self.last: FrameAnalysis | None = None
        """The latest frame's per-frame analysis (labels, masks), for display and tests."""
        self.last_track_lut: dict[int, int] = {}
        """The latest frame's segmentation label -> track id (see :func:`track_lut`)."""
        self._first_area_px: float | None = None
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """(drift-compensated centroids, areas, frames joined) of the last frame's
        particles, see :func:`rejoin_split_particles`."""
        self._cluster = _Series()
        self._tracks: dict[int, _Series] = {}
        self._pruned_at_s = -math.inf
        self._contact_started_s: float | None = None
        self._onset_s: float | None = None
        self._contact_lost = False
        self._keep_from_s = -math.inf
        """Samples older than this are of no further use (see :meth:`_keep_from`)."""
        self._last_touching: list[int] = []
        self._growing: list[int] = []
        self._fed: tuple[int, ...] = ()
        """Particles touching the needle when contact was made: lithium enters there."""
        self._fed_detector: AlertDetector | None = None
        self._fed_missing = 0
        """Consecutive frames in which a fed particle was not found."""
        self._onset_reported = False
        """An expansion onset was raised in the current contact (by either detector)."""
        self._needle = NeedleWatch(self.alert_config)
        """The needle across frames: confirmed present, moved (see Notes)."""
        self._watched_px: float | None = None
        """The area the alerts watch (see Notes)."""
        self._previous_by_id: dict[int, tuple[float, bool]] = {}
        """track id: (area, cut by the frame edge) in the last frame."""
        self._binning: tuple[float | None, int] | None = None
        """(pixel size, binning) chosen automatically on the first frame with particles,
        kept for the session's frames at that pixel size (see :meth:`update`)."""

    def update(
        self, image: np.ndarray, *, t_s: float, index: int, pixel_size_nm: float | None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Alert]]:
        """Analyse one frame: the cluster values, the particle columns and new alerts.

        Parameters
        ----------
        image : (M, N) ndarray
            The frame; not modified.
        t_s : float
            Its acquisition time, s.
        index : int
            Its frame index.
        pixel_size_nm : float or None
            Pixel size; without it the nm values (areas, rates, D) are NaN.

        Returns
        -------
        cluster : dict
            The keys of :data:`CLUSTER_COLUMNS`.
        particles : dict of str to 1-D ndarray
            The columns of :data:`SESSION_PARTICLE_COLUMNS`.
        alerts : list of Alert
            Alerts this frame completes.
        """
        analysis, measurement = _measure(image, self.frame_config(pixel_size_nm),
                                         pixel_size_nm)
        self.last = analysis
        return self.update_measured(measurement, t_s=t_s, index=index,
                                    pixel_size_nm=pixel_size_nm)

    def frame_config(self, pixel_size_nm: float | None) -> AnalysisConfig:
        """The options to measure the session's next frame of ``pixel_size_nm`` with:
        :attr:`config`, its automatic binning replaced by the one of the session's
        first frame with particles at that pixel size (see Notes). Whoever measures
        frames elsewhere (:func:`measure_frame` in other processes) passes it along so
        that they too are measured on one grid."""
        locked = self._binning
        if self.config.binning == 0 and locked is not None and locked[0] == pixel_size_nm:
            return replace(self.config, binning=locked[1])
        return self.config

    def update_measured(
        self, measurement: FrameMeasurement, *, t_s: float, index: int,
        pixel_size_nm: float | None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Alert]]:
        """:meth:`update` for a frame already through :func:`measure_frame` (e.g. in
        another process). Frames must come in acquisition order; ``self.last`` is not
        set (there is no label image here)."""
        cluster_in = measurement.cluster
        if (self.config.binning == 0 and self._binning is None
                and cluster_in.get("particle_diameter_px", 0) > 0 and "binning" in cluster_in):
            self._binning = (pixel_size_nm, int(cluster_in["binning"]))
        step = self.drift.update_image(measurement.drift_image, scale=measurement.drift_scale)
        drift = self.drift.drift_px
        table, contacts = measurement.particles, measurement.contacts
        streak = np.zeros(table["label"].size, np.int64)
        if self._previous is not None and table["label"].size >= 2 and contacts.size:
            table, contacts, streak = rejoin_split_particles(
                table, contacts, self._previous[0] + np.asarray(drift), self._previous[1],
                previous_streak=self._previous[2])
        positions = np.column_stack([table["centroid_row"], table["centroid_col"]])
        self._previous = (positions - np.asarray(drift), table["area_px"].astype(np.float64),
                          streak)
        radii = np.sqrt(table["area_px"] / np.pi)
        ids = self.tracker.update(np.column_stack([table["centroid_row"], table["centroid_col"]]),
                                  radii, drift_px=drift)
        self.last_track_lut = track_lut(measurement.particles["label"], measurement.contacts,
                                        table["label"], ids)
        # A particle found merged with a neighbour: its id, but not its area.
        merged = self.tracker.merged_with > 0
        cluster = dict(measurement.cluster)
        cluster["particle_count"] = int(table["label"].size)
        area = float(cluster["area_px"])
        if self._first_area_px is None and area > 0:
            self._first_area_px = area
        cluster["relative_area"] = area / self._first_area_px if self._first_area_px else math.nan
        cluster["drift_row_px"], cluster["drift_col_px"] = drift
        step_px = math.hypot(*step)
        cluster["drift_step_px"] = step_px

        # The drift threshold is in reference pixels, like the analysis lengths: a
        # nanometre of drift per frame is the same whatever the camera's binning.
        ref = self.config.reference_pixel_size_nm
        known = pixel_size_nm is not None and math.isfinite(pixel_size_nm) and pixel_size_nm > 0
        step_ref = step_px * float(pixel_size_nm) / ref if ref > 0 and known and pixel_size_nm \
            else step_px
        watched = self._watched_area(table, ids)
        # Contact is made when a particle comes within reach of the coating's edge and
        # held while one stays joined to it with no vacuum between, or while the needle
        # stays where it was (a lithiated shell lighter than the particles' threshold,
        # or fainter still, pressed on the coating).
        rule = bool(cluster["needle_contact"])
        tip = (float(cluster.get("needle_tip_row", math.nan)) - drift[0],
               float(cluster.get("needle_tip_col", math.nan)) - drift[1])
        moved = self._needle.moved(tip, measured=rule and self.detector.in_contact)
        held = self.detector.in_contact and (
            bool(cluster.get("needle_joined", False)) or not moved)
        contact = self._needle.confirmed(int(cluster.get("needle_area_px", 0)) > 0) and (
            rule or held)
        cluster["needle_contact"] = contact
        alerts = self.detector.update(t_s=t_s, frame=index, area_px=watched,
                                      needle_contact=contact, drift_step_px=step_ref)
        alerts = self._merge_fed_onset(alerts, table, ids, merged, t_s, index,
                                       contact, watched)
        for alert in alerts:
            if alert.kind is EventKind.CONTACT_MADE:
                # References stay those of the first contact (the pristine cluster);
                # each contact is a lithiation of its own: its onset, its fit of D.
                if self._contact_started_s is None:
                    self._contact_started_s = alert.t_s
                    self._freeze_references(alert.t_s)
                self._onset_s = None
                self._contact_lost = False
            elif alert.kind is EventKind.EXPANSION_ONSET and self._onset_s is None:
                self._onset_s = alert.t_s
                for series in (self._cluster, *self._tracks.values()):
                    series.fitted_at_s = -math.inf
            elif alert.kind is EventKind.CONTACT_LOST:
                self._contact_lost = True
        self._keep_from_s = self._keep_from(t_s)

        size = pixel_size_nm if pixel_size_nm is not None and math.isfinite(pixel_size_nm) \
            else math.nan
        columns = self._particle_physics(table, ids, merged, t_s, size)
        columns["neighbour_ids"] = _neighbours(contacts, table["label"], ids)
        self._cluster_physics(cluster, area, t_s, size, table, columns)
        touching = [int(i) for i in ids[table["touches_needle"]]]
        alerts = [self._with_particles(a, touching, columns) for a in alerts]
        if touching:
            self._last_touching = touching
        return cluster, columns, alerts

    def _watched_area(self, table: dict[str, np.ndarray], ids: np.ndarray) -> float:
        """The area the alerts watch: the cluster's, less the particles cut by the frame
        edge, without a step when one crosses the edge.

        From the previous frame it changes by the area now of the particles in view
        now and not cut before, less the area before of those in view before and not
        cut now: a particle in view in both counts its change, one newly seen or gone
        counts whole (as in the cluster area), one crossing the edge not at all. A
        particle cut by the edge drifts in and out of view with the stage; on a
        real-looking specimen its area in view swung the total by 10 % over 20 s,
        read as an expansion (docs/analysis.md).
        """
        edge = table.get("touches_frame_edge")
        if edge is None or edge.size != ids.size:
            edge = np.zeros(ids.size, np.bool_)
        areas = table["area_px"].astype(np.float64)
        now = {int(i): (float(a), bool(e)) for i, a, e in zip(ids, areas, edge, strict=True)}
        before = self._previous_by_id
        self._previous_by_id = now
        if self._watched_px is None:
            self._watched_px = float(sum(a for a, e in now.values() if not e))
            return self._watched_px
        gained = sum(a for i, (a, e) in now.items() if not e and not before.get(i, (0, False))[1])
        lost = sum(a for i, (a, e) in before.items() if not e and not now.get(i, (0, False))[1])
        self._watched_px = max(0.0, self._watched_px + gained - lost)
        return self._watched_px

    # -- references ------------------------------------------------------------------
    def _freeze_references(self, contact_t_s: float) -> None:
        n = self.alert_config.baseline_frames
        for series in (self._cluster, *self._tracks.values()):
            before = [a for t, a in series.before if t < contact_t_s][-n:]
            if before:
                series.reference_px = float(np.median(before))
                series.samples.extend((t, a) for t, a in series.before if t >= contact_t_s)
            series.before.clear()

    def _observe(self, series: _Series, t_s: float, area_px: float) -> None:
        if self._contact_started_s is None:
            series.before.append((t_s, area_px))
            return
        if series.reference_px is None:
            # Seen only after contact: its own first frames are its reference.
            series.before.append((t_s, area_px))
            if len(series.before) >= self.alert_config.baseline_frames:
                series.reference_px = float(np.median([a for _, a in series.before]))
                series.samples.extend(series.before)
                series.before.clear()
            return
        series.samples.append(t_s, area_px)
        series.samples.drop_before(self._keep_from_s)

    def _keep_from(self, t_s: float) -> float:
        """The oldest sample time the rate or the fit of D can still use.

        The rate needs the last ``rate_window_s``; the fit, every sample since the
        expansion onset while the contact lasts, and before the onset is found, every
        sample since the earliest time a detector could still date it to. Everything
        older would only grow with the session (a track seen for an hour after the
        contact was lost kept 4096 samples it never read).
        """
        keep_from = t_s - self.alert_config.rate_window_s
        if self._contact_started_s is None or self._contact_lost:
            return keep_from
        if self._onset_s is not None:
            return min(keep_from, self._onset_s)
        detectors = [d for d in (self.detector, self._fed_detector) if d is not None]
        return min([keep_from, *(d.onset_not_before_s for d in detectors)])

    # -- physics ---------------------------------------------------------------------
    def _kinetics(self, series: _Series, t_s: float, area_px: float, size_nm: float,
                  ) -> tuple[float, float, tuple[np.ndarray, np.ndarray] | None]:
        """A/A0 and D of one series, and its (t_s, area_px) samples in the rate window
        (None: fewer than 3), whose Theil-Sen slope times the pixel area is its rate
        (nm^2/s). The volume, x and the slopes of all the particles are taken together
        (:meth:`_particle_physics`, :func:`physics.theil_sen_slopes`)."""
        self._observe(series, t_s, area_px)
        if series.reference_px is None or not series.reference_px > 0:
            return math.nan, math.nan, None
        ratio = area_px / series.reference_px
        window = self.alert_config.rate_window_s
        # From the newest back: the samples since the onset can be many more.
        recent = series.samples.recent(t_s - window)
        samples = recent if recent[0].size >= 3 else None
        if (self._onset_s is not None and not self._contact_lost
                and t_s - series.fitted_at_s >= _FIT_INTERVAL_S):
            series.fitted_at_s = t_s
            times, areas = series.samples.arrays()
            since = times >= self._onset_s
            if np.count_nonzero(since) >= 6:
                t, a = times[since], areas[since]
                duration = t[-1] - t[0]
                tau = physics.relaxation_time_s(
                    t, physics.volume_ratio(a / series.reference_px), lag_s=duration / 4)
                radius_nm = math.sqrt(series.reference_px / math.pi) * size_nm
                series.diffusion_cm2_per_s = physics.diffusion_coefficient_cm2_per_s(
                    tau, radius_nm)
        return ratio, series.diffusion_cm2_per_s, samples

    def _particle_physics(self, table: dict[str, np.ndarray], ids: np.ndarray,
                          merged: np.ndarray, t_s: float, size_nm: float,
                          ) -> dict[str, np.ndarray]:
        n = ids.size
        values = np.full((n, 5), np.nan)
        windows: list[tuple[np.ndarray, np.ndarray]] = []
        rated: list[int] = []
        for row, track_id in enumerate(ids.tolist()):
            series = self._tracks.get(track_id)
            if series is None:  # (not setdefault: a _Series for every row, every frame)
                series = self._tracks[track_id] = _Series()
            series.last_seen_s = t_s
            if merged[row]:
                continue  # its area is that of two particles: no sample, no physics
            ratio, values[row, 4], samples = self._kinetics(
                series, t_s, float(table["area_px"][row]), size_nm)
            values[row, 0] = ratio
            if samples is not None:
                windows.append(samples)
                rated.append(row)
        values[:, 1] = physics.volume_ratio(values[:, 0])
        values[:, 2] = physics.lithium_content_x(values[:, 1])
        values[:, 0] -= 1.0
        if windows:
            values[rated, 3] = physics.theil_sen_slopes(windows) * size_nm**2
        if t_s - self._pruned_at_s >= 10.0:
            self._pruned_at_s = t_s
            for stale in [k for k, v in self._tracks.items() if v.last_seen_s < t_s - _FORGET_S]:
                del self._tracks[stale]
        columns: dict[str, np.ndarray] = dict(table)
        columns["track_id"] = ids.astype(np.int64)
        columns["neighbour_ids"] = np.full(n, "", dtype=object)  # filled by the caller
        for k, name in enumerate(("relative_area_change", "volume_ratio", "lithium_x",
                                  "area_rate_nm2_per_s", "diffusion_coefficient_cm2_per_s")):
            columns[name] = values[:, k].copy()
        return columns

    def _cluster_physics(self, cluster: dict[str, Any], area_px: float, t_s: float,
                         size_nm: float, table: dict[str, np.ndarray],
                         columns: dict[str, np.ndarray]) -> None:
        ratio, _, samples = self._kinetics(self._cluster, t_s, area_px, size_nm)
        volume = float(physics.volume_ratio(ratio))
        change, x = ratio - 1.0, float(physics.lithium_content_x(volume))
        rate = (physics.theil_sen_slope(*samples) * size_nm**2 if samples is not None
                else math.nan)
        cluster.update(relative_area_change=change, volume_ratio=volume, lithium_x=x,
                       area_rate_nm2_per_s=rate)
        touching = table["touches_needle"]
        growth = np.where(touching, columns["relative_area_change"], -np.inf)
        d = math.nan
        if touching.any() and np.isfinite(growth).any():
            d = float(columns["diffusion_coefficient_cm2_per_s"][int(np.nanargmax(growth))])
        elif self._contact_lost:
            d = self._cluster.diffusion_cm2_per_s  # frozen at the last contact frame
        if touching.any():
            self._cluster.diffusion_cm2_per_s = d
        cluster["diffusion_coefficient_cm2_per_s"] = d
        changes = columns["relative_area_change"]
        if np.isfinite(changes).any():
            largest = float(np.nanmax(np.abs(changes)))
            threshold = max(self.alert_config.min_relative_change, 0.5 * largest)
            self._growing = [int(i) for i in columns["track_id"][np.abs(changes) >= threshold]]

    # -- alerts ----------------------------------------------------------------------
    def _merge_fed_onset(self, alerts: list[Alert], table: dict[str, np.ndarray],
                         ids: np.ndarray, merged: np.ndarray, t_s: float, index: int,
                         contact: bool, watched_px: float) -> list[Alert]:
        """Watch the particles the needle feeds as well as the whole cluster.

        Lithium enters through the particles touching the needle, which swell several
        times more (relatively) than the cluster: the same CUSUM on their area sees the
        onset sooner. Whichever detector sees it first raises ``expansion_onset``; the
        other's is dropped, so one physical change still makes one alert. A frame in
        which one of them is missing or merged with a neighbour (``merged``) has no
        area for it: at 2 e/A^2/s and 1 nm/px one frame of the fed particle merged
        with its neighbour (+50 %) raised an onset 3 s before the bias. A fed particle
        the tracker loses for longer than the contact debounce is watched afresh once
        found again: on real-looking crystals it came back as another cut of the clump,
        15 % larger, and raised an onset in a control.
        """
        out = []
        for alert in alerts:
            if alert.kind is EventKind.CONTACT_MADE:
                touching = ids[table["touches_needle"]]
                self._fed = tuple(sorted(int(i) for i in touching))
                self._fed_detector = AlertDetector(self.alert_config) if self._fed else None
                self._fed_missing = 0
                self._onset_reported = False
            elif alert.kind is EventKind.CONTACT_LOST:
                self._fed_detector = None
            elif alert.kind is EventKind.EXPANSION_ONSET:
                if self._onset_reported:
                    continue
                self._onset_reported = True
            out.append(alert)
        fed = self._fed_detector
        if fed is not None and not any(a.kind is EventKind.CONTACT_MADE for a in alerts):
            present = np.isin(ids, self._fed)
            whole = int(present.sum()) == len(self._fed)
            area = (float(table["area_px"][present].sum())
                    if whole and not merged[present].any() else math.nan)
            if not whole:
                self._fed_missing += 1
            elif self._fed_missing:
                if self._fed_missing > self.alert_config.contact_debounce_frames:
                    # Lost for longer than a flicker: the particle the tracker finds
                    # again may be another cut of the clump; its area is a new series.
                    fed = self._fed_detector = AlertDetector(self.alert_config)
                self._fed_missing = 0
            for alert in fed.update(t_s=t_s, frame=index, area_px=area, needle_contact=contact):
                if alert.kind is EventKind.EXPANSION_ONSET and not self._swelling_is_real(
                        fed, area, watched_px):
                    # Pixels moved between the fed particle and its neighbours (the split
                    # between them shifted): watch the fed particles afresh.
                    self._fed_detector = AlertDetector(self.alert_config)
                    break
                if alert.kind is EventKind.EXPANSION_ONSET and not self._onset_reported:
                    self._onset_reported = True
                    names = ", ".join(str(i) for i in self._fed)
                    out.append(replace(
                        alert, particle_ids=self._fed,
                        message=f"Particle{'s' if len(self._fed) > 1 else ''} {names} at the "
                        f"needle expanding: {100 * alert.magnitude:+.1f} % since contact "
                        f"(onset t = {alert.t_s:.1f} s, detected t = {t_s:.1f} s)."))
        return out


    def _swelling_is_real(self, fed: AlertDetector, fed_area: float,
                          cluster_area: float) -> bool:
        """Whether the cluster grew with the fed particles since contact (``cluster_area``:
        the area the cluster's detector watches).

        Lithium swells the cluster by what it swells the particles it enters; a shift
        of the split between a fed particle and its neighbour moves pixels between
        them and leaves the cluster as it was (in a control without lithium a fed
        particle of a 3-D clump "grew" 40 % this way and raised an onset). The fed
        particles must be larger than at contact (cut in two, one kept its id at 63 %
        of its size, and its CUSUM, learning the smaller size, alarmed), and half their
        gain, less two sigmas of the cluster's noise, must show in the cluster.
        """
        cluster = self.detector
        fed_reference, cluster_reference = fed.contact_area, cluster.contact_area
        if fed_reference is None or cluster_reference is None:
            return True  # nothing to compare with yet: the cluster's own CUSUM decides
        sigma = cluster.sigma or self.alert_config.noise_floor
        gained = fed_area - fed_reference
        if gained <= 0:
            return False  # smaller than at contact: a split moved, nothing swelled
        return bool(cluster_area - cluster_reference
                    >= 0.5 * gained - 2.0 * sigma * cluster_reference)

    def _with_particles(self, alert: Alert, touching: list[int],
                        columns: dict[str, np.ndarray]) -> Alert:
        if alert.particle_ids:
            return alert
        kind = alert.kind
        if kind is EventKind.CONTACT_MADE:
            ids = touching
        elif kind is EventKind.CONTACT_LOST:
            ids = self._last_touching
        elif kind in (EventKind.EXPANSION_ONSET, EventKind.EXPANSION_SLOWING,
                      EventKind.CONTRACTION_ONSET, EventKind.CONTRACTION_SETTLED):
            ids = self._growing
        else:
            return alert
        return replace(alert, particle_ids=tuple(sorted(ids)))


def session_iter(analyzer: SessionAnalyzer,
                 frames: Iterable[tuple[np.ndarray, float, int, float | None]]) -> Iterator[
                     tuple[dict[str, Any], dict[str, np.ndarray], list[Alert]]]:
    """Feed (image, t_s, index, pixel_size_nm) per frame; yield each frame's results."""
    for image, t_s, index, pixel_size_nm in frames:
        yield analyzer.update(image, t_s=t_s, index=index, pixel_size_nm=pixel_size_nm)
