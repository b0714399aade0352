"""Alerts: turn the per-frame cluster measurements into events a microscopist acts on.

:class:`AlertDetector` is fed one frame's summary at a time (time, frame index,
cluster area, needle contact) and returns the alerts that frame completes:

* ``contact_made`` / ``contact_lost``: the needle touches / leaves the cluster,
  debounced over ``contact_debounce_frames`` consecutive frames;
* ``expansion_onset``: the cluster area rises above its level at contact, found
  by a one-sided CUSUM (Page 1954) on the relative area change, in units of the
  frame-to-frame noise estimated online;
* ``expansion_slowing``: after an onset, the growth rate falls below a fraction
  of its peak;
* ``contraction_onset``: after contact is lost, the area falls below its level at
  the loss (downward CUSUM);
* ``contraction_settled``: after a contraction onset, the shrinking rate falls below
  a fraction of its peak;
* ``drift_warning``: the specimen drifts faster than ``drift_warning_px_per_frame``
  for ``drift_warning_frames`` frames in a row (re-armed once it has been below half
  that speed as long).

Each physical change raises one alert: a detector re-arms only when the contact
state changes. The detector keeps no more than a few frames of history, does no
I/O, and runs the same live, on replay and in offline re-analysis
(:func:`alerts_iter`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._options import options_from_dict, options_to_dict
from .errors import ConfigError
from .protocol import EventKind

__all__ = ["Alert", "AlertConfig", "AlertDetector", "alerts_iter"]

_MEDIAN_EFFICIENCY = 1.2533
"""Standard error of a median of n normal samples, times sqrt(n) / sigma (sqrt(pi/2))."""
_MIN_NOISE_SAMPLES = 10
"""Frame-to-frame differences needed before the noise estimate is trusted."""


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Options of :class:`AlertDetector`. Relative changes are fractions (0.01 = 1 %).

    Thresholds are in units of the noise the detector measures in each session, with
    floors that keep segmentation jitter from counting as a physical change.
    """

    contact_debounce_frames: int = 2
    """Consecutive frames the needle contact must hold (or be absent) to change state."""
    needle_confirm_frames: int = 8
    """A session counts a needle's contact only once the needle has been found in this
    many more frames than not (a leaky count: each frame with it adds one, each without
    takes one off), and stops counting it once the count is back to zero. A needle is
    brought in from an edge and stays for minutes; a near-black crystal cut by the
    frame edge is needle-shaped now and then, for a frame or three."""
    baseline_frames: int = 8
    """Frames whose median area is the reference: the first ones in contact (expansion),
    the last ones before contact was lost (contraction)."""
    noise_window_frames: int = 40
    """Recent frame-to-frame relative area differences used to estimate the noise."""
    noise_floor: float = 0.002
    """Smallest relative area noise assumed, however quiet the measurements."""
    drift_sigmas: float = 1.0
    """CUSUM reference value k, in noise standard deviations: smaller changes are ignored."""
    threshold_sigmas: float = 8.0
    """CUSUM decision threshold h, in noise standard deviations."""
    min_relative_change: float = 0.005
    """An expansion or contraction alert also needs the area to have changed this much."""
    slowing_fraction: float = 0.3
    """``expansion_slowing`` when the growth rate falls below this fraction of its peak."""
    rate_window_s: float = 4.0
    """Time window of the least-squares growth rate used for ``expansion_slowing``
    and ``contraction_settled``."""
    drift_warning_px_per_frame: float = 2.0
    """Specimen drift speed that makes tracking and measurements unreliable. The
    session analysis gives the detector steps in pixels of the analysis'
    ``reference_pixel_size_nm`` (0.5 nm by default: 2 px is 1 nm per frame), so the
    threshold holds whatever the camera binning."""
    drift_warning_frames: int = 4
    """Consecutive frames the drift must exceed it (one bad correlation is not drift)."""

    def __post_init__(self) -> None:
        for name in ("contact_debounce_frames", "needle_confirm_frames", "baseline_frames",
                     "noise_window_frames", "drift_warning_frames"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"Expected {name} to be an integer >= 1. Got {value!r}.")
        for name in ("noise_floor", "drift_sigmas", "threshold_sigmas", "min_relative_change",
                     "rate_window_s", "drift_warning_px_per_frame"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"Expected {name} > 0. Got {value!r}.")
        if not 0 < self.slowing_fraction < 1:
            raise ConfigError(
                f"Expected slowing_fraction in (0, 1). Got {self.slowing_fraction!r}."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertConfig:
        """Build from plain values (TOML, JSON, CLI); a ConfigError names a bad key."""
        return options_from_dict(cls, data, what="alert")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values; inverse of :meth:`from_dict`."""
        return options_to_dict(self)


@dataclass(frozen=True, slots=True)
class Alert:
    """Something a microscopist should look at now.

    ``t_s`` is when the change began as far as the detector can tell (the first
    frame of a contact run, the CUSUM's change-point estimate); ``frame`` is the
    frame at which it was detected, so the detection delay is visible.
    """

    kind: EventKind
    t_s: float
    frame: int
    magnitude: float
    """Relative area change (0.041 = +4.1 %) for physical alerts."""
    confidence: float
    """0..1. For CUSUM alerts ``1 - exp(-S / h)``: a monotone summary of how far the
    statistic passed its threshold, not a probability."""
    particle_ids: tuple[int, ...]
    """Particles concerned; empty for the whole cluster."""
    message: str
    """One line for a person."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """What held at that moment (bias, charge, particle doses): see
    :class:`lithoscope.service.operando.OperandoContext`."""


@dataclass(slots=True)
class _Sample:
    t_s: float
    frame: int
    area: float
    """NaN when the frame had no usable area."""
    contact: bool


class _Cusum:
    """One-sided CUSUM of a relative change against a baseline that keeps learning.

    ``S_t = max(0, S_{t-1} + s * z_t - k)`` with ``z_t = (A_t - B) / B``, ``s`` = +1
    for an increase and -1 for a decrease; an alarm when ``S_t > h`` and
    ``s * z_t`` exceeds the minimum change. The change point is estimated as the
    first sample after ``S`` was last zero.

    The baseline ``B`` is the median of the frames seen so far (at most
    ``capacity``, the latest): a median of the first few frames alone is off by
    about ``1.25 sigma / sqrt(n)``, an error added to every ``z_t`` that eats the
    reference value ``k`` and lets the CUSUM random-walk to its threshold. Frames
    join the baseline once ``S`` has returned to zero after them (they were noise,
    not the start of a change), so a real change never leaks into its own baseline;
    ``k`` is raised by two standard errors of the baseline for what remains.
    """

    def __init__(self, samples: list[float], sign: int, capacity: int) -> None:
        self.sign = sign
        self.capacity = max(1, capacity)
        self.samples = list(samples)[-self.capacity:]
        self.pending: list[float] = []
        self.baseline = float(np.median(self.samples))
        self.statistic = 0.0
        self.start: _Sample | None = None
        self.sigma: float | None = None
        """The noise level, fixed once known: a threshold that followed a running noise
        estimate would be crossed whenever that estimate happened to dip."""

    @property
    def baseline_error(self) -> float:
        """Standard error of the baseline, in noise sigmas."""
        return _MEDIAN_EFFICIENCY / math.sqrt(len(self.samples))

    def relative(self, area: float) -> float:
        return (area - self.baseline) / self.baseline

    def update(self, sample: _Sample, *, config: AlertConfig) -> bool:
        sigma = self.sigma
        if sigma is None:
            return False
        z = self.sign * self.relative(sample.area)
        value = self.statistic + z - (config.drift_sigmas + 2 * self.baseline_error) * sigma
        if value <= 0.0:
            self.statistic = 0.0
            self.start = None
            self.samples += [*self.pending, sample.area]
            self.pending.clear()
            del self.samples[:-self.capacity]
            self.baseline = float(np.median(self.samples))
            return False
        self.pending.append(sample.area)
        # Only the latest ``capacity`` ever join the baseline: a small lasting change
        # that keeps S above zero without alarming must not grow this for hours.
        del self.pending[:-self.capacity]
        if self.start is None:
            self.start = sample
        self.statistic = value
        return value > config.threshold_sigmas * sigma and z >= config.min_relative_change


class AlertDetector:
    """Raise contact, expansion and contraction alerts from per-frame cluster values.

    Parameters
    ----------
    config : AlertConfig, optional
        Options; defaults to ``AlertConfig()``.

    Notes
    -----
    The noise ``sigma`` is estimated online as ``1.4826 * MAD / sqrt(2)`` of the
    recent relative area differences (robust to the odd bad frame and to a steady
    trend), between neighbouring frames and between frames ``baseline_frames`` apart
    (the slow wander), the larger of the two, floored at ``noise_floor``, and fixed
    for a CUSUM when it starts (at its baseline). While the needle is in contact, the
    median area of the first ``baseline_frames`` contact frames is the reference
    ``B`` and a one-sided CUSUM with reference value ``k = drift_sigmas * sigma``
    (plus two standard errors of ``B``) and threshold ``h = threshold_sigmas *
    sigma`` watches ``(A - B) / B`` for an increase, alarming once the change also
    reaches ``min_relative_change``; after contact is lost, the median of the last
    frames in contact is the reference and the CUSUM watches for a decrease.

    References
    ----------
    E. S. Page, "Continuous inspection schemes", Biometrika 41 (1954) 100-115.

    Examples
    --------
    >>> detector = AlertDetector()
    >>> alerts = []
    >>> for i in range(30):
    ...     alerts += detector.update(t_s=i * 0.5, frame=i, area_px=1000.0 + 20.0 * max(0, i - 20),
    ...                               needle_contact=i >= 5)
    >>> [a.kind.value for a in alerts]
    ['contact_made', 'expansion_onset']
    """

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config if config is not None else AlertConfig()
        c = self.config
        self._history: deque[_Sample] = deque(
            maxlen=c.baseline_frames + c.contact_debounce_frames + 1
        )
        self._differences: deque[float] = deque(maxlen=c.noise_window_frames)
        self._areas: deque[float] = deque(maxlen=c.noise_window_frames + c.baseline_frames)
        """Recent measured areas, for the noise at the baseline's time scale."""
        self._last_area: float | None = None
        self._in_contact = False
        self._run = 0
        """Consecutive frames disagreeing with the current contact state."""
        self._contact_baseline: list[float] = []
        self._contact_area: float | None = None
        self._expansion: _Cusum | None = None
        self._expanding_since: _Sample | None = None
        self._rates: deque[tuple[float, float]] = deque()
        self._peak_rate = 0.0
        self._slowing_reported = False
        self._contraction: _Cusum | None = None
        self._contracting_since: _Sample | None = None
        self._contraction_rates: deque[tuple[float, float]] = deque()
        self._peak_shrink_rate = 0.0
        self._settled_reported = False
        self._contraction_reference: float | None = None
        self._fast_drift = 0
        self._slow_drift = 0
        self._drift_armed = True

    @property
    def in_contact(self) -> bool:
        """The debounced contact state."""
        return self._in_contact

    @property
    def contact_area(self) -> float | None:
        """The reference the expansion is measured from: the median area of the first
        ``baseline_frames`` frames in contact; None until they are in."""
        return self._contact_area

    @property
    def sigma(self) -> float | None:
        """Current estimate of the relative area noise (floored); None until enough frames.

        The CUSUMs wait for it: a threshold in units of a noise estimated from a handful
        of frames would be a threshold picked at random.
        """
        if len(self._differences) < _MIN_NOISE_SAMPLES:
            return None
        d = np.fromiter(self._differences, float)
        mad = float(np.median(np.abs(d - np.median(d))))
        sigma = 1.4826 * mad / math.sqrt(2.0)
        # Segmentation noise is not white: flicker, drift over the illumination and
        # the coating's edge make the area wander over seconds, which differences of
        # neighbouring frames do not see. Differences over a baseline's span do, so a
        # slow wander counts as noise rather than as a change.
        lag = self.config.baseline_frames
        areas = np.fromiter(self._areas, float)
        if areas.size >= lag + _MIN_NOISE_SAMPLES:
            slow = (areas[lag:] - areas[:-lag]) / areas[:-lag]
            slow_mad = float(np.median(np.abs(slow - np.median(slow))))
            sigma = max(sigma, 1.4826 * slow_mad / math.sqrt(2.0))
        return max(self.config.noise_floor, sigma)

    @property
    def onset_not_before_s(self) -> float:
        """No ``expansion_onset`` this detector has still to raise can be dated earlier.

        An onset is dated to the first frame of its CUSUM's current excursion; with no
        excursion under way, to a frame not yet watched (``inf``), or to the earliest
        frame held back while a contact change is confirmed. The session analyser
        keeps the samples the diffusion fit may need from here on, and no more.
        """
        cusum = self._expansion
        if cusum is not None and cusum.start is not None:
            return cusum.start.t_s
        if self._run and self._history:
            return self._history[-min(self._run, len(self._history))].t_s
        return math.inf

    def update(
        self, *, t_s: float, frame: int, area_px: float, needle_contact: bool,
        drift_step_px: float = 0.0,
    ) -> list[Alert]:
        """Take one frame's values; return the alerts it completes (usually none).

        Parameters
        ----------
        t_s : float
            Acquisition time of the frame, s.
        frame : int
            Frame index.
        area_px : float
            Cluster area; NaN (or negative) if the frame could not be measured.
        needle_contact : bool
            Whether the needle touched the cluster in this frame.
        drift_step_px : float
            How far the specimen moved since the previous frame (pixels).
        """
        area = float(area_px)
        if not (math.isfinite(area) and area >= 0):
            area = math.nan
        sample = _Sample(float(t_s), int(frame), area, bool(needle_contact))
        if not math.isnan(area):
            if self._last_area is not None and self._last_area > 0:
                self._differences.append((area - self._last_area) / self._last_area)
            self._last_area = area
            if area > 0:
                self._areas.append(area)
        self._history.append(sample)

        alerts: list[Alert] = self._watch_drift(sample, float(drift_step_px))
        if sample.contact != self._in_contact:
            # A contact change pending confirmation: hold its frames back from the
            # watchers until we know which state they belong to.
            self._run += 1
            if self._run < self.config.contact_debounce_frames:
                return alerts
            history = list(self._history)
            run, before = history[-self._run:], history[: -self._run]
            self._run = 0
            self._in_contact = not self._in_contact
            if self._in_contact:
                alerts.append(self._contact_made(run, sample))
            else:
                alerts.append(self._contact_lost(run, before, sample))
        else:
            # A flicker that did not last: its frames belong to the current state.
            run = list(self._history)[-self._run - 1:]
            self._run = 0
        watch = self._watch_expansion if self._in_contact else self._watch_contraction
        for s in run:
            alerts += watch(s)
        return alerts

    # -- contact -------------------------------------------------------------------
    def _contact_made(self, run: list[_Sample], now: _Sample) -> Alert:
        self._contact_baseline = []
        self._contact_area = None
        self._expansion = None
        self._expanding_since = None
        self._contraction = None
        start = run[0]
        return Alert(EventKind.CONTACT_MADE, start.t_s, now.frame, 0.0, 1.0, (),
                     f"Needle touched the cluster (t = {start.t_s:.1f} s).")

    def _contact_lost(self, run: list[_Sample], before: list[_Sample], now: _Sample) -> Alert:
        start = run[0]
        areas = [s.area for s in before if s.contact and not math.isnan(s.area)]
        areas = areas[-self.config.baseline_frames:]
        self._expansion = None
        self._expanding_since = None
        self._contraction = None
        self._contracting_since = None
        change = math.nan
        if areas and float(np.median(areas)) > 0:
            reference = float(np.median(areas))
            self._contraction = _Cusum(areas, -1, self.config.noise_window_frames)
            self._contraction_reference = reference
            if self._contact_area:
                change = reference / self._contact_area - 1.0
        text = f"Needle left the cluster (t = {start.t_s:.1f} s)"
        if math.isfinite(change):
            text += f"; area {100 * change:+.1f} % since contact"
        return Alert(EventKind.CONTACT_LOST, start.t_s, now.frame,
                     change if math.isfinite(change) else 0.0, 1.0, (), text + ".")

    # -- expansion -----------------------------------------------------------------
    def _watch_expansion(self, sample: _Sample) -> list[Alert]:
        if math.isnan(sample.area):
            return []
        if self._contact_area is None:
            if sample.area > 0:
                self._contact_baseline.append(sample.area)
            if len(self._contact_baseline) >= self.config.baseline_frames:
                self._contact_area = float(np.median(self._contact_baseline))
                self._expansion = _Cusum(self._contact_baseline, +1,
                                         self.config.noise_window_frames)
            return []
        if self._expanding_since is not None:
            return self._watch_slowing(sample)
        if self._expansion is None:
            return []
        cusum = self._expansion
        if cusum.sigma is None:
            cusum.sigma = self.sigma
        if not cusum.update(sample, config=self.config):
            return []
        sigma = cusum.sigma
        assert sigma is not None
        start = cusum.start if cusum.start is not None else sample
        self._expanding_since = start
        self._expansion = None
        change = cusum.relative(sample.area)
        self._rates.clear()
        self._peak_rate = 0.0
        self._slowing_reported = False
        return [Alert(
            EventKind.EXPANSION_ONSET, start.t_s, sample.frame, change,
            _confidence(cusum.statistic, self.config.threshold_sigmas * sigma), (),
            f"Cluster expanding: {100 * change:+.1f} % since contact "
            f"(onset t = {start.t_s:.1f} s, detected t = {sample.t_s:.1f} s).",
        )]

    def _watch_slowing(self, sample: _Sample) -> list[Alert]:
        if self._slowing_reported or self._contact_area is None:
            return []
        c = self.config
        self._rates.append((sample.t_s, sample.area / self._contact_area))
        while self._rates and self._rates[0][0] < sample.t_s - c.rate_window_s:
            self._rates.popleft()
        if len(self._rates) < 3 or self._rates[-1][0] - self._rates[0][0] < 0.5 * c.rate_window_s:
            return []
        t, y = np.array(self._rates).T
        rate = float(np.polyfit(t - t[-1], y, 1)[0])  # relative area per second
        self._peak_rate = max(self._peak_rate, rate)
        assert self._expanding_since is not None
        if sample.t_s - self._expanding_since.t_s < 2 * c.rate_window_s:
            return []
        if (self._peak_rate * c.rate_window_s < c.min_relative_change
                or rate >= c.slowing_fraction * self._peak_rate):
            return []  # no real growth to slow down, or it has not slowed
        self._slowing_reported = True
        change = sample.area / self._contact_area - 1.0
        return [Alert(
            EventKind.EXPANSION_SLOWING, sample.t_s, sample.frame, change,
            1.0 - rate / self._peak_rate, (),
            f"Expansion slowing: {100 * rate:.2f} %/s, down from {100 * self._peak_rate:.2f} %/s;"
            f" {100 * change:+.1f} % since contact (t = {sample.t_s:.1f} s).",
        )]

    # -- contraction ---------------------------------------------------------------
    def _watch_contraction(self, sample: _Sample) -> list[Alert]:
        if self._contracting_since is not None and not math.isnan(sample.area):
            return self._watch_settling(sample)
        cusum = self._contraction
        if cusum is None or math.isnan(sample.area):
            return []
        if cusum.sigma is None:
            cusum.sigma = self.sigma
        if not cusum.update(sample, config=self.config):
            return []
        sigma = cusum.sigma
        assert sigma is not None
        self._contraction = None
        start = cusum.start if cusum.start is not None else sample
        change = cusum.relative(sample.area)
        self._contracting_since = start
        self._contraction_rates.clear()
        self._peak_shrink_rate = 0.0
        self._settled_reported = False
        return [Alert(
            EventKind.CONTRACTION_ONSET, start.t_s, sample.frame, change,
            _confidence(cusum.statistic, self.config.threshold_sigmas * sigma), (),
            f"Cluster contracting: {100 * change:+.1f} % since contact was lost "
            f"(onset t = {start.t_s:.1f} s, detected t = {sample.t_s:.1f} s).",
        )]

    def _watch_settling(self, sample: _Sample) -> list[Alert]:
        reference = self._contraction_reference
        if self._settled_reported or not reference:
            return []
        c = self.config
        rates = self._contraction_rates
        rates.append((sample.t_s, sample.area / reference))
        while rates and rates[0][0] < sample.t_s - c.rate_window_s:
            rates.popleft()
        if len(rates) < 3 or rates[-1][0] - rates[0][0] < 0.5 * c.rate_window_s:
            return []
        t, y = np.array(rates).T
        shrink = -float(np.polyfit(t - t[-1], y, 1)[0])  # relative area lost per second
        self._peak_shrink_rate = max(self._peak_shrink_rate, shrink)
        assert self._contracting_since is not None
        if sample.t_s - self._contracting_since.t_s < 2 * c.rate_window_s:
            return []
        if (self._peak_shrink_rate * c.rate_window_s < c.min_relative_change
                or shrink >= c.slowing_fraction * self._peak_shrink_rate):
            return []
        self._settled_reported = True
        change = sample.area / reference - 1.0
        return [Alert(
            EventKind.CONTRACTION_SETTLED, sample.t_s, sample.frame, change,
            1.0 - max(shrink, 0.0) / self._peak_shrink_rate, (),
            f"Contraction settling: {100 * shrink:.2f} %/s, down from "
            f"{100 * self._peak_shrink_rate:.2f} %/s; {100 * change:+.1f} % since contact was "
            f"lost (t = {sample.t_s:.1f} s).",
        )]

    # -- drift -----------------------------------------------------------------------
    def _watch_drift(self, sample: _Sample, step_px: float) -> list[Alert]:
        c = self.config
        if not math.isfinite(step_px):
            return []
        fast = step_px > c.drift_warning_px_per_frame
        self._fast_drift = self._fast_drift + 1 if fast else 0
        slow = step_px < 0.5 * c.drift_warning_px_per_frame
        self._slow_drift = self._slow_drift + 1 if slow else 0
        if not self._drift_armed:
            if self._slow_drift >= c.drift_warning_frames:
                self._drift_armed = True
            return []
        if self._fast_drift < c.drift_warning_frames:
            return []
        self._drift_armed = False
        return [Alert(
            EventKind.DRIFT_WARNING, sample.t_s, sample.frame, step_px,
            1.0 - math.exp(-step_px / c.drift_warning_px_per_frame), (),
            f"Specimen drifting {step_px:.1f} px/frame for {self._fast_drift} frames "
            f"(t = {sample.t_s:.1f} s): measurements may smear; consider re-centring.",
        )]


def _confidence(statistic: float, threshold: float) -> float:
    return float(1.0 - math.exp(-statistic / threshold)) if threshold > 0 else 1.0


def alerts_iter(detector: AlertDetector, rows: Iterable[Mapping[str, Any]]) -> Iterator[Alert]:
    """Feed rows of per-frame values to ``detector``; yield the alerts in order.

    Each row is a mapping with ``t_s``, ``frame``, ``area_px`` and
    ``needle_contact``, optionally ``drift_step_px`` (e.g. a row of an archive's
    cluster table, or a live result's ``cluster`` with its frame index and time added).
    """
    for row in rows:
        yield from detector.update(t_s=row["t_s"], frame=row["frame"], area_px=row["area_px"],
                                   needle_contact=row["needle_contact"],
                                   drift_step_px=row.get("drift_step_px", 0.0))
