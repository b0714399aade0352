"""One session's frames in, the rows of every archive table and the messages out.

:class:`SessionPipeline` is the code that turns a frame (or its measurement, done in a
measuring process) and the session's echem samples into archive rows (``cluster``,
``particles``, ``events``, ``echem``, ``operando``, ``particle_dose``,
``region_dose``) and the messages to publish (``result``, ``event``, ``echem``). It
has no sockets, threads or files (the clock that stamps latencies is given to it): the
live worker (measuring
inline or fanned out to processes) and offline re-analysis (:mod:`.reanalyze`) call
the same methods, so an archive re-analysed with the settings it was recorded with
gets the same tables.

Which pixel size and exposure a frame is analysed with is decided here, once: the
frame's own value when it has one, else the session's (``session_start``), and for the
exposure, else one frame interval at the session's ``fps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .alerts import Alert, AlertConfig
from .analysis import (
    CLUSTER_COLUMNS,
    AnalysisConfig,
    FrameLabels,
    FrameMeasurement,
    SessionAnalyzer,
    label_track_ids,
    particle_outlines,
    track_label_image,
)
from .operando.context import OperandoConfig, OperandoContext
from .protocol import Echem, Event, Result, SessionStart

__all__ = ["EchemOutput", "FrameOutput", "SessionPipeline", "event_message", "event_row",
           "json_safe"]


@dataclass(frozen=True)
class FrameOutput:
    """What one analysed frame gives: the message to publish, the events it raised and
    the archive rows, as ``(table, columns)`` in the order they are appended."""

    result: Result
    events: list[Event]
    rows: list[tuple[str, dict[str, Any]]]
    operando_error: BaseException | None = None
    """Set when the operando bookkeeping failed on this frame: the analysis is still
    published and archived, without its operando rows."""
    labels: FrameLabels | None = None
    """The frame's particles (by track id), needle and grid as images, for the archive's
    ``labels/`` group; None where the measurement came without them."""


@dataclass(frozen=True)
class EchemOutput:
    """A batch of echem samples as filed: the ``echem`` rows and the message to forward."""

    rows: dict[str, Any]
    message: Echem
    samples: int = field(default=0)


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def event_message(session_id: str, alert: Alert) -> Event:
    """The ``event`` message of an alert."""
    return Event(session_id=session_id, kind=alert.kind.value, t_s=alert.t_s,
                 frame=alert.frame, magnitude=alert.magnitude, confidence=alert.confidence,
                 particle_ids=[int(i) for i in alert.particle_ids], message=alert.message,
                 context=dict(alert.context))


def event_row(event: Event) -> dict[str, Any]:
    """The ``events`` table row of an event message."""
    return {"frame": event.frame, "t_s": event.t_s, "kind": event.kind,
            "magnitude": event.magnitude, "confidence": event.confidence,
            "particle_ids": str(event.particle_ids), "message": event.message,
            "context_json": json.dumps(json_safe(event.context))}


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


_REGION_NAMES = {1: "needle", 2: "grid"}
_MAX_REGION_POINTS = 4096


def _region_outlines(labels: FrameLabels) -> list[dict[str, Any]]:
    """The needle's and the grid's outlines, as a result's ``regions``."""
    if not (labels.needle.any() or labels.grid.any()):
        return []
    classes = labels.needle.astype(np.uint8)
    classes[labels.grid] = 2
    return [{"region": _REGION_NAMES[o["track_id"]], "points": o["points"]}
            for o in particle_outlines(classes, binning=labels.binning,
                                       max_points=_MAX_REGION_POINTS)]


class SessionPipeline:
    """Analysis, operando bookkeeping and row shaping for one session, frame by frame.

    Frames must be given in acquisition order (the analysis carries drift, tracks,
    references and alert detectors across frames). Echem samples may come at any
    time; each frame is aligned to the samples given before it.

    Parameters
    ----------
    start : SessionStart
        The session: its id, ``t0_unix``, and the pixel size and frame rate used when a
        frame has none of its own.
    analysis, alerts, operando : optional
        Settings (default: this version's defaults).
    clock : callable, optional
        Wall clock (``time.time``) for each result's ``latency_s``, from the frame's
        ``acquired_at`` to its analysis done; None (offline): NaN.
    """

    def __init__(self, start: SessionStart, *, analysis: AnalysisConfig | None = None,
                 alerts: AlertConfig | None = None, operando: OperandoConfig | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.start = start
        self.clock = clock
        self.analyzer = SessionAnalyzer(analysis, alerts)
        self.operando = OperandoContext(operando)
        self.echem_samples = 0
        """Samples filed so far: the ``seq`` of the next ``echem`` row."""

    def pixel_size_nm(self, frame_value: float | None) -> float | None:
        """The pixel size a frame is analysed with: its own, else the session's."""
        return frame_value or self.start.pixel_size_nm

    def exposure_s(self, frame_value: float | None) -> float | None:
        """A frame's exposure: its own, else one frame interval at the session's fps."""
        fps = self.start.fps
        return frame_value or (1.0 / fps if fps else None)

    # -- frames ------------------------------------------------------------------------
    def analyse(self, image: np.ndarray, *, index: int, t_s: float,
                pixel_size_nm: float | None, exposure_s: float | None,
                metadata: Mapping[str, Any], acquired_at: float) -> FrameOutput:
        """Analyse one frame: measure it, then :meth:`analyse_measured`.

        ``pixel_size_nm`` and ``exposure_s`` are the frame's own (None if it has none);
        ``acquired_at`` its acquisition time (Unix s), for the latency.
        """
        cluster, particles, alerts = self.analyzer.update(
            image, t_s=t_s, index=index, pixel_size_nm=self.pixel_size_nm(pixel_size_nm))
        analysis = self.analyzer.last
        assert analysis is not None
        lut = self.analyzer.last_track_lut
        labels = FrameLabels(
            particles=track_label_image(analysis.analysis_labels, lut),
            needle=analysis.analysis_needle_mask, grid=analysis.analysis_grid_mask,
            binning=analysis.binning, shape=analysis.shape,
            track_ids=label_track_ids(analysis.analysis_labels, lut))
        return self._complete(image, cluster, particles, alerts, index=index, t_s=t_s,
                              pixel_size_nm=pixel_size_nm, exposure_s=exposure_s,
                              metadata=metadata, acquired_at=acquired_at, labels=labels)

    def analyse_measured(self, measurement: FrameMeasurement, image: np.ndarray | None, *,
                         index: int, t_s: float, pixel_size_nm: float | None,
                         exposure_s: float | None, metadata: Mapping[str, Any],
                         acquired_at: float) -> FrameOutput:
        """:meth:`analyse` for a frame measured elsewhere (a measuring process)."""
        cluster, particles, alerts = self.analyzer.update_measured(
            measurement, t_s=t_s, index=index,
            pixel_size_nm=self.pixel_size_nm(pixel_size_nm))
        labels = None
        if measurement.labels is not None and measurement.regions is not None:
            b = measurement.binning
            rows, cols = measurement.labels.shape
            lut = self.analyzer.last_track_lut
            labels = FrameLabels(
                particles=track_label_image(measurement.labels, lut),
                needle=measurement.regions == 1, grid=measurement.regions == 2, binning=b,
                shape=image.shape if image is not None else (rows * b, cols * b),
                track_ids=label_track_ids(measurement.labels, lut))
        return self._complete(image, cluster, particles, alerts, index=index, t_s=t_s,
                              pixel_size_nm=pixel_size_nm, exposure_s=exposure_s,
                              metadata=metadata, acquired_at=acquired_at, labels=labels)

    def _complete(self, image: np.ndarray | None, cluster: dict[str, Any],
                  particles: dict[str, np.ndarray], alerts: list[Alert], *, index: int,
                  t_s: float, pixel_size_nm: float | None, exposure_s: float | None,
                  metadata: Mapping[str, Any], acquired_at: float,
                  labels: FrameLabels | None = None) -> FrameOutput:
        rows: list[tuple[str, dict[str, Any]]] = []
        error: BaseException | None = None
        try:
            cluster, particles, alerts, context = self.operando.update(
                image=image, t_s=t_s, index=index,
                pixel_size_nm=self.pixel_size_nm(pixel_size_nm),
                exposure_s=self.exposure_s(exposure_s), metadata=metadata, cluster=cluster,
                particles=particles, alerts=alerts)
        except Exception as exc:  # the bookkeeping must never cost the frame its results
            error = exc
        else:
            n = len(context.particle_rows["track_id"])
            m = len(context.region_rows["region_row"])
            rows += [("operando", context.row),
                     ("particle_dose", {**context.particle_rows, "frame": np.full(n, index),
                                        "t_s": np.full(n, t_s)}),
                     ("region_dose", {**context.region_rows, "frame": np.full(m, index),
                                      "t_s": np.full(m, t_s)})]
        latency_s = self.clock() - acquired_at if self.clock is not None else math.nan
        count = len(particles["label"])
        rows += [("cluster", {**{k: cluster[k] for k in CLUSTER_COLUMNS},
                              "frame": index, "t_s": t_s, "latency_s": latency_s}),
                 ("particles", {**particles, "frame": np.full(count, index),
                                "t_s": np.full(count, t_s)})]
        session_id = self.start.session_id
        events = [event_message(session_id, alert) for alert in alerts]
        rows += [("events", event_row(event)) for event in events]
        outlines = ([] if labels is None else
                    particle_outlines(labels.particles, binning=labels.binning))
        regions = [] if labels is None else _region_outlines(labels)
        result = Result(session_id=session_id, index=index, t_s=t_s, latency_s=latency_s,
                        cluster=cluster, particles={k: v.tolist() for k, v in particles.items()},
                        outlines=outlines, regions=regions)
        return FrameOutput(result=result, events=events, rows=rows, operando_error=error,
                           labels=labels)

    # -- echem -------------------------------------------------------------------------
    def add_echem(self, t_unix: np.ndarray, bias_v: np.ndarray, current_a: np.ndarray, *,
                  clock_offset_s: float | np.ndarray, source: str | np.ndarray,
                  not_before_s: float = -math.inf) -> EchemOutput | None:
        """File echem samples (instrument clock) into the session; None if none is kept.

        Samples are put on the session's clock (``t_unix + clock_offset_s - t0_unix``);
        those before ``not_before_s`` (a backlog from before the session) are left out.
        """
        t_unix = np.asarray(t_unix, dtype=np.float64)
        offset = np.broadcast_to(np.asarray(clock_offset_s, dtype=np.float64), t_unix.shape)
        t_s = t_unix + offset - self.start.t0_unix
        keep = t_s >= not_before_s
        if not keep.any():
            return None
        bias = np.asarray(bias_v, dtype=np.float64)[keep]
        current = np.asarray(current_a, dtype=np.float64)[keep]
        # Object references to one string (or the per-row strings of a re-read table),
        # not a fixed-width copy of it per sample.
        sources = np.broadcast_to(np.asarray(source, dtype=object), t_unix.shape)[keep]
        t_s, t_unix, offset = t_s[keep], t_unix[keep], offset[keep]
        self.operando.add_echem(t_s, bias, current)
        n = int(t_s.size)
        first = self.echem_samples
        self.echem_samples += n
        rows = {"t_s": t_s, "t_unix": t_unix, "bias_v": bias, "current_a": current,
                "clock_offset_s": offset.copy(), "source": sources.copy(),
                "seq": np.arange(first, first + n)}
        message = Echem(source=str(sources[0]), t_unix=t_unix.tolist(),
                        bias_v=_nullable(bias), current_a=_nullable(current),
                        clock_offset_s=float(offset[0]), session_id=self.start.session_id)
        return EchemOutput(rows=rows, message=message, samples=n)
