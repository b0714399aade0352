"""The worker: receive frames, archive every one, analyse, publish results and alerts.

Sockets:

* frames: PULL, bound; publishers connect with PUSH. PUSH/PULL never drops: when the
  worker's queue is full the publisher's send waits. That is what makes replay and
  archiving lossless (an unthrottled PUB/SUB stream loses frames at its high-water mark).
* results: XPUB, bound; results, events and heartbeats for any number of subscribers.
  A slow subscriber loses updates at its high-water mark; the worker never waits for it.

This module is the socket loop: bind, receive, dispatch, heartbeat, hand-off. The rest
of :class:`Worker` is in its bases, one concern each:

* :mod:`.sessions`: the session table (ownership by ``session_token``, open, close,
  the fallback archive, which waiting frame is analysed next);
* :mod:`.analysing`: the analysis thread, the live skip policy, joining the measuring
  processes' results (:mod:`.fanout`), echem filing;
* :mod:`.state`: the session record and what every part uses to publish and count.

Each session's analysis and row shaping is a
:class:`~lithoscope.service.pipeline.SessionPipeline`; each archive's whole life (open,
writes, size, close) belongs to the archive thread
(:class:`~lithoscope.service.archive.thread.ArchiveThread`), which writes the frames
that queued up while it was busy in batches. Memory is bounded in bytes: every
frame the worker holds (waiting for the archive, for analysis, out for measuring) is
counted once against ``memory_budget_bytes`` (:mod:`.budget`); when it is full the
worker stops reading frames, the frames socket fills to its high-water mark
(``frame_hwm``) and the publisher waits: nothing accepted is dropped. A session's
``session_closed`` is sent once the archive thread has closed its archive.

Every frame is handed to the archive thread as it is received, before any analysis.
Live policy: a camera does not wait, so in a live session the worker analyses only the
newest frame that has arrived; the frames it did not analyse are counted as
``skipped`` (heartbeat) and announced with an ``analysis_skipped`` event. A replay
session (``live = false``) analyses every frame: its frames wait in a backlog (within
the memory budget). The pipelines run in one analysis thread, one frame at a
time, while the loop goes on receiving and archiving; the loop publishes and archives
what the analysis thread hands back.
"""

from __future__ import annotations

import collections
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..alerts import Alert
from ..archive import ArchiveWriter, recover_abandoned
from ..archive.thread import ArchiveThread, SessionArchive
from ..config import ServiceConfig
from ..errors import LithoscopeError
from ..operando.echem import EchemBacklog
from ..protocol import (
    Decoder,
    Echem,
    EventKind,
    Frame,
    Heartbeat,
    Message,
    MessageType,
    SessionClosed,
    SessionStart,
    SessionStop,
)
from ..security import ServerCurve
from ..sockets import harden_socket
from .analysing import _AnalysisThread
from .budget import MemoryBudget
from .fanout import AnalysisPool
from .preview import PreviewGate
from .sessions import _Sessions, default_archive_path
from .state import SkipRate, _printable, _Session

__all__ = ["SkipRate", "Worker", "WorkerThread", "default_archive_path"]

log = logging.getLogger(__name__)

_MAX_BATCH = 256
_PUBLISHED_TOPICS = tuple(kind.value.encode() for kind in MessageType)
"""Topics a subscription may name (or a prefix of): every message type."""
_CLOSE_RETRY_S = 5.0
"""How often an archive that could not be closed (disk full) is tried again."""
_SIZE_INTERVAL_S = 30.0
"""How often the heartbeat's ``archive_bytes`` is recounted (see ``_archive_bytes``)."""
_SHUTDOWN_MEASURE_S = 5.0
"""At shutdown, how long frames waiting for analysis or out for measuring are given
(they are archived already; only their measurements are lost past it)."""
_DRAIN_TIMEOUT_S = 120.0
"""Longest wait for the queued archive writes at a session's end or at shutdown; past
it (a hung disk) the archive is left to the next start's recovery, never closed under
the writer thread's feet."""


class Worker(_Sessions):
    """One analysis worker. ``bind()`` then ``run(stop_event)``; always ``close()``.

    Parameters
    ----------
    config
        Endpoints, archive folder, analysis and alert settings.
    archive_path_for
        Chooses each session's archive path; defaults to :func:`default_archive_path`
        under ``config.sessions_dir``. Replay uses it to write exactly where asked.
    """


    def __init__(
        self,
        config: ServiceConfig | None = None,
        *,
        context: zmq.Context[Any] | None = None,
        archive_path_for: Callable[[SessionStart], Path] | None = None,
    ) -> None:
        self.config = config or ServiceConfig()
        self._own_context = context is None
        self.context: zmq.Context[Any] = context or zmq.Context()
        self.archive_path_for = archive_path_for or (
            lambda start: default_archive_path(self.config.sessions_dir, start))
        self.decoder = Decoder(limits=self.config.limits)
        self.sessions: dict[str, _Session] = {}
        self.closed_sessions: dict[str, SessionClosed] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("received", "analysed", "archived", "dropped", "skipped", "archive_errors",
             "analysis_errors", "late", "memory_full", "message_errors",
             "sessions_closed_idle", "frames_lost"), 0)
        self._message_errors: collections.Counter[str] = collections.Counter()
        """Unexpected exceptions while handling one message, by message type and
        exception type: each logged once, all counted (``message_errors``)."""
        self._results_seq = 0
        self._frames: zmq.Socket[Any] | None = None
        self._results: zmq.Socket[Any] | None = None
        self.frames_endpoint: str | None = None
        self.results_endpoint: str | None = None
        self._interval_received = 0
        self._interval_analysed = 0
        self._interval_latencies: list[float] = []
        self._last_heartbeat = time.monotonic()
        self._last_session_id: str | None = None
        self._auth: ThreadAuthenticator | None = None
        self._abandoned: dict[str, tuple[Path, dict[str, Any]]] = {}
        self._unclosed: list[_Session] = []
        self._last_close_retry = time.monotonic()
        self._analysis = _AnalysisThread()
        self._frames_in_analysis = 0
        self._archive = ArchiveThread(inline=self.config.archive.inline,
                                      batch_frames=self.config.archive.batch_frames,
                                      fallback=self._open_fallback)
        self.budget = MemoryBudget(self.config.memory_budget_bytes)
        """The bytes of every frame held (see :mod:`.budget`)."""
        self._reading = True
        """Whether the loop reads the frames socket (False while the budget is full)."""
        self._by_archive: dict[SessionArchive, _Session] = {}
        self._closing: dict[str, _Session] = {}
        """Sessions stopped whose archive the archive thread is closing."""
        self._size_asked = -math.inf
        self._pool: AnalysisPool | None = None
        """Measuring processes (``workers`` > 0 or measuring endpoints set), else None:
        frames are measured in this thread."""
        self._pool_dir: str | None = None
        self._echem_unattached = EchemBacklog(self.config.limits.echem_backlog_bytes)
        self._stopping = threading.Event()
        """The stop event of :meth:`run`."""
        self._closed = False
        self._preview = PreviewGate()
        """Sends ``preview`` messages while someone subscribes to them (.preview)."""

    def bind(self) -> tuple[str, str]:
        """Bind both sockets; returns the actual endpoints (ports picked by the OS for ``:*``)."""
        curve = None
        if self.config.server_key is not None and self.config.client_keys is not None:
            curve = ServerCurve.load(self.config.server_key, self.config.client_keys)
            self._auth = curve.start_authenticator(self.context)
        frames = self.context.socket(zmq.PULL)
        harden_socket(frames, max_part_bytes=self.config.limits.max_message_bytes,
                      receive_hwm=self.config.frame_hwm)
        results = self.context.socket(zmq.XPUB)
        results.setsockopt(zmq.SNDHWM, self.config.results_hwm)
        # What arrives on the results socket is subscriptions: a few bytes each, and
        # only those that can match a topic the worker publishes are taken
        # (:meth:`_take_subscriptions`), so a subscriber holds a bounded set of them.
        results.setsockopt(zmq.XPUB_MANUAL, 1)
        harden_socket(results, max_part_bytes=self.config.limits.subscription_bytes)
        if curve is not None:
            curve.apply(frames)
            curve.apply(results)
        try:
            frames.bind(self.config.frames_endpoint)
            results.bind(self.config.results_endpoint)
        except zmq.ZMQError as exc:
            frames.close()
            results.close()
            raise LithoscopeError(f"Cannot listen on {self.config.frames_endpoint} / "
                                  f"{self.config.results_endpoint}: {exc}.") from None
        self._frames, self._results = frames, results
        c = self.config
        if c.workers > 0 or c.measure_jobs_endpoint is not None:
            jobs, measured = c.measure_jobs_endpoint, c.measure_results_endpoint
            if jobs is None or measured is None:
                self._pool_dir = tempfile.mkdtemp(prefix="lithoscope-measure-")
                jobs = f"ipc://{self._pool_dir}/jobs"
                measured = f"ipc://{self._pool_dir}/measurements"
            self._pool = AnalysisPool(self.context, jobs_endpoint=jobs,
                                      measurements_endpoint=measured, processes=c.workers,
                                      job_timeout_s=c.measure_timeout_s, curve=curve)
            log.info("Measuring in %d local process(es); others may join at %s and %s.",
                     c.workers, self._pool.jobs_endpoint, self._pool.measurements_endpoint)
        self.frames_endpoint = frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.results_endpoint = results.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.frames_endpoint, self.results_endpoint

    def recover_abandoned(self) -> list[tuple[Path, dict[str, Any]]]:
        """Mark archives a killed worker left ``recording`` as ``interrupted``, and
        remember them: if their publisher is still streaming, the frames that follow go
        into a new archive linked both ways (``continues`` / ``continued_in``).

        Only ``lithoscope serve`` calls this, once bound (a second service on the same
        endpoints fails to bind first); replay never touches the sessions folder.
        """
        recovered = recover_abandoned(self.config.sessions_dir)
        for path, meta in recovered:
            if isinstance(meta.get("session_id"), str):
                self._abandoned[meta["session_id"]] = (path, meta)
        return recovered

    def close(self) -> None:
        """Close every open session's archive (status ``interrupted``) and the sockets."""
        if self._closed:
            return
        self._closed = True
        # Frames received and archived but not analysed yet get the same grace as
        # frames out for measuring; past it they stay archived, unanalysed.
        deadline = time.monotonic() + _SHUTDOWN_MEASURE_S
        while (self._analysis_ready() or self._analysis.pending) and (
                time.monotonic() < deadline):
            self._analysis.wait(max(deadline - time.monotonic(), 0.0))
            self._analyse_pending()
        self._finish_measuring(limit_s=max(deadline - time.monotonic(), 0.0))
        self._analysis.wait(max(deadline - time.monotonic(), 0.0))
        for session_id in list(self.sessions):
            self._close_session(session_id, reason="shutdown")
        self._retry_closing()
        # One deadline for everything queued: past it (a hung disk) the archives are
        # left recording, for the next start's recovery, never closed under the writer.
        if not self._archive.drain(_DRAIN_TIMEOUT_S):
            log.error("Archive writes did not finish within %.0f s (disk hung?): %s left "
                      "recording.", _DRAIN_TIMEOUT_S, ", ".join(
                          str(s.archive.path) for s in self._closing.values() if s.archive))
        self._collect()
        self._archive.stop(1.0)
        self._analysis.stop(1.0)
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._pool_dir is not None:
            shutil.rmtree(self._pool_dir, ignore_errors=True)
            self._pool_dir = None
        for sock in (self._frames, self._results):
            if sock is not None:
                sock.close(linger=0)
        self._frames = self._results = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set. Bad messages are counted, never fatal."""
        if self._frames is None:
            self.bind()
        assert self._frames is not None
        self._stopping = stop
        poller = zmq.Poller()
        if self._pool is not None:
            poller.register(self._pool.socket, zmq.POLLIN)
        assert self._results is not None
        poller.register(self._results, zmq.POLLIN)
        # A job done in the analysis thread ends the wait at once: its results are
        # published, and the next frame handed over, without a poll timeout's delay.
        poller.register(self._analysis.wake_fd, zmq.POLLIN)
        while not stop.is_set():
            # Frames are taken (and archived at once) while the frames held fit in the
            # memory budget; past it ZeroMQ holds the publisher back.
            if self._budget_has_room():
                poller.register(self._frames, zmq.POLLIN)
            elif self._frames in dict(poller.sockets):
                poller.unregister(self._frames)
            # Not reading (the budget is full): look again soon, as the archive and
            # analysis threads give memory back, so the publisher is not held long.
            timeout_ms = (0 if self._analysis_ready() else 5 if not self._reading else 100)
            ready = dict(poller.poll(timeout_ms))
            self._analysis.complete()
            if self._pool is not None:
                self._join_measured()
            if self._results in ready:
                self._take_subscriptions()
            if self._frames in ready:
                self._drain()
            self._analyse_pending()
            self._tick()

    def _take_subscriptions(self) -> None:
        """Apply the subscriptions that can match a published topic (a prefix of one,
        the empty prefix included); refuse the rest (``rejected_subscription``).

        The results socket is an XPUB in manual mode: ZeroMQ hands each
        (un)subscription to the worker instead of keeping it. Each is at most
        ``limits.subscription_bytes``, and a subscriber can hold at most the prefixes of
        the topic names, so no number of subscriptions makes the socket's memory grow.
        """
        assert self._results is not None
        for _ in range(_MAX_BATCH):
            try:
                request = self._results.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, topic = request[:1], request[1:]
            if kind not in (b"\x00", b"\x01") or not any(
                    name.startswith(topic) for name in _PUBLISHED_TOPICS):
                self._reject("subscription", f"subscription {request[:40]!r} matches no "
                             "topic the worker publishes.")
                continue
            option = zmq.SUBSCRIBE if kind == b"\x01" else zmq.UNSUBSCRIBE
            self._results.setsockopt(option, topic)
            self._preview.subscription(kind == b"\x01", topic)

    def _drain(self) -> None:
        """Take what the frames socket holds (at most ``_MAX_BATCH`` messages), one
        message at a time while the memory budget has room."""
        assert self._frames is not None
        for _ in range(_MAX_BATCH):
            if not self._budget_has_room():
                break
            try:
                parts = self._frames.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self.decoder(parts)
            del parts  # a refused message's buffers go now, not at the next one
            if msg is not None:
                self._dispatch(msg)
        self._collect()

    def _budget_has_room(self) -> bool:
        """May the loop read another frame? Counts each time it must stop
        (``memory_full``)."""
        room = self.budget.has_room()
        if not room and self._reading:
            self.counters["memory_full"] += 1
        self._reading = room
        return room

    def _dispatch(self, msg: Message) -> None:
        """Handle one decoded message. Whatever it holds, the loop goes on: an
        unexpected exception is logged once per reason and counted, never fatal."""
        try:
            self._handle(msg)
        except Exception as exc:
            reason = f"{type(msg).__name__}:{type(exc).__name__}"
            if not self._message_errors[reason]:
                log.exception("Unexpected error handling a %s message (%s); further ones "
                              "only counted.", type(msg).__name__, reason)
            self._message_errors[reason] += 1
            self.counters["message_errors"] += 1

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Frame):
            self._on_frame(msg)
        elif isinstance(msg, SessionStart):
            self._on_session_start(msg)
        elif isinstance(msg, Echem):
            self._on_echem(msg)
        elif isinstance(msg, SessionStop):
            self._on_session_stop(msg)
        else:
            self.decoder.rejected["wrong_channel"] += 1

    def _tick(self) -> None:
        self._collect()
        now = time.monotonic()
        if now - self._last_heartbeat >= self.config.heartbeat_s:
            self._heartbeat(now)
        if self._unclosed and now - self._last_close_retry >= _CLOSE_RETRY_S:
            self._last_close_retry = now
            self._retry_closing()
        idle = [sid for sid, session in self.sessions.items()
                if now - max(session.last_activity, session.last_frame_monotonic)
                > self.config.idle_session_timeout_s]
        for session_id in idle:
            log.warning("Session %s idle for %.0f s: closed.", _printable(session_id),
                        self.config.idle_session_timeout_s)
            self.counters["sessions_closed_idle"] += 1
            self._close_session(session_id, reason="idle")
        for session in self.sessions.values():
            if session.archive is not None:
                # Rows must not wait for the next frame, but once a flush interval is
                # enough: a job per loop turn would split the archive thread's batches.
                if now - session.flush_asked_at >= self.config.measurement_flush_s:
                    session.flush_asked_at = now
                    self._archive.write(session.archive, ArchiveWriter.flush_if_due)
                self._check_archive_progress(session, now)
            # Frames still waiting for analysis, or a stop: the source is not stalled,
            # the analysis is behind.
            if (not session.stalled and not session.backlog and session.stopping is None
                    and now - session.last_frame_monotonic > self.config.stall_timeout_s):
                session.stalled = True
                self._emit(session, Alert(
                    kind=EventKind.SOURCE_STALLED, t_s=self._last_t(session),
                    frame=session.last_index,
                    magnitude=now - session.last_frame_monotonic, confidence=1.0,
                    particle_ids=(), message=f"No frame for {self.config.stall_timeout_s:.0f} s "
                    "from the publisher; waiting (the archive stays open)."))

    # -- frames ----------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        self.counters["received"] += 1
        self._interval_received += 1
        session = self._frame_session(frame)
        if session is None or not self._frame_fits(session, frame):
            return
        session.accepted += 1
        session.last_frame_monotonic = session.last_activity = time.monotonic()
        session.last_t_s = frame.t_s
        session.last_index = frame.index
        session.stalled = False
        if session.last_seq is not None and frame.seq > session.last_seq + 1:
            gap = frame.seq - session.last_seq - 1
            session.dropped += gap
            self.counters["dropped"] += gap
            self._emit(session, Alert(
                kind=EventKind.FRAMES_DROPPED, t_s=frame.t_s, frame=frame.index,
                magnitude=float(gap), confidence=1.0, particle_ids=(),
                message=f"{gap} frame(s) lost before the worker (sequence gap)."))
        session.last_seq = frame.seq
        assert frame.image is not None
        # The image is a read-only view of the received message: the archive thread,
        # the analysis and the budget share it without a copy.
        self.budget.hold(frame.image)
        if self._stopping.is_set() and session.archive_failed:
            session.lost += 1  # the archive failed for good and the service is stopping
            self.counters["frames_lost"] += 1
        elif session.archive is not None:
            if not session.archive_queued:
                session.archive_progress_at = time.monotonic()
            session.archive_queued += 1
            self._archive.write_frame(session.archive, frame.image, {
                "seq": frame.seq, "index": frame.index, "t_s": frame.t_s,
                "acquired_at": frame.acquired_at, "exposure_s": frame.exposure_s,
                "metadata": _frame_metadata(frame)})
        if session.start.live:
            if session.pending is not None:
                self._skip(session, session.pending)
            session.pending = frame
        else:
            # Analysed from the loop, one frame at a time between receiving (see
            # _analyse_pending): the archive never waits for analysis.
            session.backlog.append(frame)

    def _heartbeat(self, now: float) -> None:
        elapsed = max(now - self._last_heartbeat, 1e-9)
        latencies = np.asarray(self._interval_latencies)
        # The newest open session: a stalled one left open by a dead publisher must not
        # hide the stream that replaced it.
        session_id = (self._last_session_id if self._last_session_id in self.sessions
                      else next(reversed(self.sessions), None))
        session = self.sessions[session_id] if session_id else None
        archive = session.archive if session else None
        if archive is not None and now - self._size_asked >= _SIZE_INTERVAL_S:
            self._size_asked = now
            self._archive.measure_size(archive)  # counted in the archive thread
        counters = dict(self.counters)
        counters["memory_held_bytes"] = self.budget.held_bytes
        counters["memory_peak_bytes"] = self.budget.peak_bytes
        counters["rejected"] = sum(self.decoder.rejected.values())
        counters.update({f"rejected_{k}": v for k, v in self.decoder.rejected.items()})
        self._send(Heartbeat(
            session_id=session_id, counters=counters,
            fps_in=self._interval_received / elapsed,
            fps_analysed=self._interval_analysed / elapsed,
            latency_p50_s=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p99_s=float(np.percentile(latencies, 99)) if latencies.size else None,
            archive_path=str(archive.path) if archive else None,
            archive_bytes=session.archive_bytes if session else None,
            source=session.start.source if session else None,
            live=session.start.live if session else None))
        self._interval_received = self._interval_analysed = 0
        self._interval_latencies.clear()
        self._last_heartbeat = now


def _frame_metadata(frame: Frame) -> dict[str, Any]:
    metadata = dict(frame.metadata)
    if frame.truth is not None:
        metadata["truth"] = frame.truth
    if frame.pixel_size_nm is not None:
        metadata.setdefault("pixel_size_nm", frame.pixel_size_nm)
    return metadata


class WorkerThread:
    """A worker running in a background thread, for replay, the demo and tests.

    ``start()`` returns once the sockets are bound (the ready signal: no sleeps);
    ``stop()`` closes the archives and re-raises anything the thread died of.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lithoscope-worker", daemon=True)

    def start(self) -> WorkerThread:
        self.worker.bind()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.worker.run(self._stop)
        except BaseException as exc:  # handed to the owner in maybe_raise()
            self._error = exc

    def maybe_raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LithoscopeError(f"The worker did not stop within {timeout:.0f} s.")
        self.worker.close()
        self.maybe_raise()

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
