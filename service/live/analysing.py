"""The analysis hand-off: the analysis thread and what runs in it.

A frame is archived as it is received (:mod:`.worker`); analysis happens here, off the
socket loop. :class:`_AnalysisThread` runs the sessions' pipelines
(:class:`~lithoscope.service.pipeline.SessionPipeline`: analysis, operando, echem
filing) one job at a time in one background thread; each job returns a completion that
the worker's thread runs (:meth:`_AnalysisThread.complete`), so publishing and archiving
the rows stay with the thread that owns the sockets. With measuring processes
(``workers`` > 0, :mod:`.fanout`) the stateless measuring happens there and the
stateful half (tracking, operando, row shaping) is joined here in frame order.

The live skip policy: a live session's frame that was replaced by a newer one before the
analysis was free is *skipped* (counted; ``analysis_skipped`` when a quarter of the last
10 s were).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from ..alerts import Alert
from ..analysis import FrameLabels, FrameMeasurement
from ..archive import ArchiveWriter
from ..operando.echem import EchemBacklog
from ..pipeline import EchemOutput, FrameOutput
from ..protocol import Echem, EventKind, Frame
from .fanout import AnalysisPool, Outcome
from .preview import PreviewGate, make_preview
from .state import _SKIP_WINDOW_S, _append_rows, _Session, _token_ok, _WorkerState

log = logging.getLogger(__name__)

_SKIP_ALERT_FRACTION = 0.25
_SKIP_EVENT_INTERVAL_S = 60.0
"""``analysis_skipped`` is raised when at least a quarter of the frames of the last
10 s went unanalysed, and then at most once a minute: a single frame skipped while
the archive opened is in the heartbeat's counters, not worth an alert at 2 a.m."""
_ECHEM_PREROLL_S = 60.0
"""Echem samples that waited for their session's start: those up to this long before
the session's t0 go into its archive."""


class _AnalysisThread:
    """Runs the sessions' pipelines (analysis, echem filing) in one background thread,
    in the order asked, so that receiving and archiving never wait for analysis.

    A job runs in the thread and returns a completion, run later in the worker's
    thread (which owns the sockets) by :meth:`complete`: publishing and archiving the
    rows stay with the worker. Each job done also makes :attr:`wake_fd` readable, so
    that the worker's poll returns at once to run its completion and hand over the next
    frame.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None]] | None] = (
            queue.SimpleQueue())
        self._done: collections.deque[Callable[[], None]] = collections.deque()
        self.pending = 0
        """Jobs submitted whose completion has not run yet (worker's thread only)."""
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="lithoscope-analysis",
                                        daemon=True)
        self._thread.start()

    @property
    def wake_fd(self) -> int:
        """A file descriptor readable once a job is done (for the worker's poller);
        :meth:`complete` empties it."""
        return self._wake_read.fileno()

    @property
    def in_thread(self) -> int:
        """Jobs submitted that the thread has not finished: waiting or running."""
        return self.pending - len(self._done)

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        self.pending += 1
        self._jobs.put(job)

    def complete(self) -> None:
        """Run the completions of the jobs done so far, in order."""
        with contextlib.suppress(BlockingIOError):  # empty: no wake-up waiting
            while self._wake_read.recv(4096):
                pass
        while self._done:
            completion = self._done.popleft()
            self.pending -= 1
            completion()

    def wait(self, timeout_s: float) -> bool:
        """Complete every job submitted so far; False past the deadline."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            self.complete()
            if not self.pending:
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, timeout_s: float) -> None:
        self._jobs.put(None)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._wake_read.close()
            self._wake_write.close()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._done.append(job())
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is waiting
                self._wake_write.send(b"\0")


class _Analysing(_WorkerState):
    """The worker's analysis side (see the module docstring)."""

    _analysis: _AnalysisThread
    _frames_in_analysis: int
    """Frames handed to the analysis thread whose completion has not run yet."""
    _pool: AnalysisPool | None
    """Measuring processes (``workers`` > 0 or measuring endpoints set), else None:
    frames are measured in the analysis thread."""
    _echem_unattached: EchemBacklog
    _interval_analysed: int
    _interval_latencies: list[float]
    _preview: PreviewGate

    def _analyse(self, session: _Session, frame: Frame) -> None:
        assert frame.image is not None
        pipeline = session.pipeline
        assert pipeline is not None
        if self._pool is not None:
            while not self._pool.has_room():  # replay: wait rather than skip
                self._join_measured(wait_s=1.0)
            self._pool.submit((session, frame), frame.image,
                              pixel_size_nm=pipeline.pixel_size_nm(frame.pixel_size_nm),
                              config=pipeline.analyzer.frame_config(
                                  pipeline.pixel_size_nm(frame.pixel_size_nm)))
            return
        image = frame.image

        def job() -> Callable[[], None]:  # in the analysis thread
            try:
                output = pipeline.analyse(
                    image, index=frame.index, t_s=frame.t_s,
                    pixel_size_nm=frame.pixel_size_nm, exposure_s=frame.exposure_s,
                    metadata=frame.metadata, acquired_at=frame.acquired_at)
            except Exception as exc:  # a bug in analysis must not cost the archive
                error = exc
                return lambda: self._frame_done(session, frame, None, error)
            return lambda: self._frame_done(session, frame, output, None)

        self._frames_in_analysis += 1
        self._analysis.submit(job)

    def _frame_done(self, session: _Session, frame: Frame, output: FrameOutput | None,
                    error: Exception | None) -> None:
        self._frames_in_analysis -= 1
        if output is None:
            if not self.counters["analysis_errors"]:
                log.error("Analysis failed on frame %d; further failures only counted.",
                          frame.index, exc_info=error)
            self.counters["analysis_errors"] += 1
            return
        self._analysed(session, frame, output)

    def _analysis_failed(self, frame: Frame, reason: str | None) -> None:
        if not self.counters["analysis_errors"]:
            if reason is None:
                log.exception("Analysis failed on frame %d; further failures only counted.",
                              frame.index)
            else:
                log.error("Analysis failed on frame %d (%s); further failures only counted.",
                          frame.index, reason)
        self.counters["analysis_errors"] += 1

    def _join_measured(self, wait_s: float = 0.0) -> None:
        """Feed measurements back from the pool, in frame order, to their sessions."""
        assert self._pool is not None
        if wait_s > 0:
            outcomes: list[Outcome] = self._pool.wait(wait_s)
        else:
            self._pool.receive()
            outcomes = self._pool.ready()
        for outcome in outcomes:
            session, frame = outcome.tag
            if outcome.measurement is None:
                self._analysis_failed(frame, outcome.error)
                continue
            self._frames_in_analysis += 1
            self._analysis.submit(functools.partial(
                self._join_job, session, frame, outcome.measurement))

    def _join_job(self, session: _Session, frame: Frame, measurement: FrameMeasurement
                  ) -> Callable[[], None]:
        """In the analysis thread, which owns the pipelines: the stateful half of a
        frame measured by a measuring process."""
        pipeline = session.pipeline
        assert pipeline is not None
        try:
            output = pipeline.analyse_measured(
                measurement, frame.image, index=frame.index, t_s=frame.t_s,
                pixel_size_nm=frame.pixel_size_nm, exposure_s=frame.exposure_s,
                metadata=frame.metadata, acquired_at=frame.acquired_at)
        except Exception as exc:
            error = exc
            return lambda: self._frame_done(session, frame, None, error)
        return lambda: self._frame_done(session, frame, output, None)

    def _finish_measuring(self, limit_s: float | None = None) -> None:
        """Wait for every frame out for measuring (a session's end, shutdown); past
        ``limit_s`` the rest are given up (counted as analysis errors)."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while self._pool is not None and self._pool.in_flight:
            if deadline is not None and time.monotonic() > deadline:
                for _, frame in self._pool.abandon():
                    self._analysis_failed(frame, "not measured before shutdown")
                return
            self._join_measured(wait_s=0.2)

    def _analysed(self, session: _Session, frame: Frame, output: FrameOutput) -> None:
        """Publish and archive what the pipeline made of a frame."""
        if output.operando_error is not None:
            if not self.counters["analysis_errors"]:
                log.error("Operando context failed on frame %d: %r", frame.index,
                          output.operando_error)
            self.counters["analysis_errors"] += 1
        latency = output.result.latency_s
        session.analysed += 1
        self.counters["analysed"] += 1
        if session.start.live:
            session.skip_rate.update(time.monotonic(), skipped=False)
        self._interval_analysed += 1
        self._interval_latencies.append(latency)
        self._send(output.result)
        if frame.image is not None and self._preview.due(time.monotonic()):
            self._send(make_preview(frame.image, session_id=session.start.session_id,
                                    index=frame.index, t_s=frame.t_s))
        if session.archive is not None:
            for table, rows in output.rows:
                self._archive.write(session.archive, functools.partial(_append_rows, table,
                                                                       rows))
            if output.labels is not None:  # labels/ beside the frame (archive.labels)
                self._archive.write(session.archive, functools.partial(
                    _append_labels, frame.index, output.labels))
        for event in output.events:
            self._announce(event)

    def _skip(self, session: _Session, frame: Frame) -> None:
        session.skipped += 1
        self.counters["skipped"] += 1
        now = time.monotonic()
        fraction = session.skip_rate.update(now, skipped=True)
        if (fraction is not None and fraction >= _SKIP_ALERT_FRACTION
                and now - session.last_skip_event >= _SKIP_EVENT_INTERVAL_S):
            session.last_skip_event = now
            self._emit(session, Alert(
                kind=EventKind.ANALYSIS_SKIPPED, t_s=frame.t_s, frame=frame.index,
                magnitude=fraction, confidence=1.0, particle_ids=(),
                message=f"Analysis is behind the camera: {100 * fraction:.0f} % of the frames "
                f"of the last {_SKIP_WINDOW_S:g} s archived but not analysed "
                f"({session.skipped} so far)."))

    # -- echem side stream ------------------------------------------------------------
    def _attach_unattached_echem(self, session: _Session) -> None:
        for msg in self._echem_unattached.take(
                session.start.session_id,
                accept=lambda msg: _token_ok(msg.session_token, session.token)):
            self._file_echem(session, msg, not_before_s=-_ECHEM_PREROLL_S)

    def _file_echem(self, session: _Session, msg: Echem, *,
                    not_before_s: float = -math.inf) -> None:
        pipeline = session.pipeline
        assert pipeline is not None
        bias = np.array([math.nan if v is None else v for v in msg.bias_v], dtype=np.float64)
        current = np.array([math.nan if v is None else v for v in msg.current_a],
                           dtype=np.float64)
        offset = msg.clock_offset_s or self.config.operando.clock_offset_s

        def job() -> Callable[[], None]:  # in the analysis thread, which owns the pipeline
            try:
                filed = pipeline.add_echem(
                    np.asarray(msg.t_unix, dtype=np.float64), bias, current,
                    clock_offset_s=offset, source=msg.source, not_before_s=not_before_s)
            except Exception as exc:
                error = exc
                return lambda: self._echem_failed(error)
            return lambda: self._echem_filed(session, filed)

        self._analysis.submit(job)

    def _echem_failed(self, error: Exception) -> None:
        if not self.counters["analysis_errors"]:
            log.error("Filing echem failed; further failures only counted.", exc_info=error)
        self.counters["analysis_errors"] += 1

    def _echem_filed(self, session: _Session, filed: EchemOutput | None) -> None:
        if filed is None:
            return
        if session.archive is not None:
            self._archive.write(session.archive, functools.partial(_append_rows, "echem",
                                                                   filed.rows))
        self._send(filed.message)


def _append_labels(index: int, labels: FrameLabels, writer: ArchiveWriter) -> None:
    writer.append_labels(index, labels)
