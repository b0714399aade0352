"""The worker: receive frames, archive every one, analyse, publish results and alerts.

Sockets:

* frames: PULL, bound; publishers connect with PUSH. PUSH/PULL never drops: when the
  worker's queue is full the publisher's send waits. That is what makes replay and
  archiving lossless (an unthrottled PUB/SUB stream was measured losing 94 % of
  2048² frames).
* results: PUB, bound; results, events and heartbeats for any number of subscribers.
  A slow subscriber loses updates at its high-water mark; the worker never waits for it.

Archive writes run in a writer thread behind a bounded queue (``archive_queue_frames``),
so writing frame *n* overlaps analysing frame *n + 1*. When the queue is full the worker
stops reading frames: the frames socket fills to its high-water mark and the publisher
waits, as it did when writing was inline. A session's ``session_closed`` is sent only
once the queue has drained and the archive is closed.

Live policy: a camera does not wait, so in a live session the worker drains every
frame that has arrived, archives all of them, and analyses only the newest; the
frames it did not analyse are counted as ``skipped`` (heartbeat) and announced with an
``analysis_skipped`` event. A replay session (``live = false``) analyses every frame.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import queue
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

from . import __version__
from .alerts import Alert
from .analysis import CLUSTER_COLUMNS, SessionAnalyzer
from .archive import (
    ArchiveWriter,
    directory_size,
    recover_abandoned,
    safe_archive_name,
    update_archive_meta,
)
from .config import ServiceConfig
from .echem import EchemBacklog
from .errors import ArchiveError, LithoscopeError
from .fanout import AnalysisPool, Outcome
from .operando import OperandoContext
from .protocol import (
    Decoder,
    Echem,
    Event,
    EventKind,
    Frame,
    Heartbeat,
    Message,
    Result,
    SessionClosed,
    SessionStart,
    SessionStop,
    encode,
)
from .security import ServerCurve
from .sockets import harden_socket

__all__ = ["SkipRate", "Worker", "WorkerThread", "default_archive_path"]

log = logging.getLogger(__name__)

_MAX_BATCH = 256
_SKIP_WINDOW_S = 10.0
_SKIP_ALERT_FRACTION = 0.25
_SKIP_EVENT_INTERVAL_S = 60.0
"""``analysis_skipped`` is raised when at least a quarter of the frames of the last
10 s went unanalysed, and then at most once a minute: a single frame skipped while
the archive opened is in the heartbeat's counters, not worth an alert at 2 a.m."""
_CLOSE_RETRY_S = 5.0
_ECHEM_PREROLL_S = 60.0
"""Of those, samples up to this long before a session's t0 go into its archive."""
"""How often an archive that could not be closed (disk full) is tried again."""
_SIZE_INTERVAL_S = 30.0
"""How often the heartbeat's ``archive_bytes`` is recounted (see ``_archive_bytes``)."""
_SHUTDOWN_MEASURE_S = 5.0
"""At shutdown, how long frames out for measuring are waited for (they are archived
already; only their measurements are lost past it)."""
_DRAIN_TIMEOUT_S = 120.0
"""Longest wait for the queued archive writes at a session's end or at shutdown; past
it (a hung disk) the archive is left to the next start's recovery, never closed under
the writer thread's feet."""
_ARCHIVE_STALL_S = 10.0
"""A frame waiting this long for room in the archive queue raises ``archive_stalled``."""


def default_archive_path(sessions_dir: str | Path, start: SessionStart) -> Path:
    """``<sessions_dir>/<name>.zarr``, never an existing path, never outside the folder.

    The name comes from the publisher (``archive_name`` or the session id), so it is
    reduced to safe characters: a remote publisher must not choose where we write.
    """
    name = safe_archive_name(start.archive_name or start.session_id)
    root = Path(sessions_dir)
    path = root / f"{name}.zarr"
    n = 2
    while path.exists():
        path = root / f"{name}-{n}.zarr"
        n += 1
    return path


class SkipRate:
    """Fraction of live frames archived but not analysed, over a sliding time window.

    ``update`` returns None until the window has been filled once: the first frames of
    a session arrive while its archive is being created, and a rate over them would
    alarm about setup, not about the analysis falling behind.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._frames: collections.deque[tuple[float, bool]] = collections.deque()
        self._first: float | None = None

    def update(self, now: float, *, skipped: bool) -> float | None:
        if self._first is None:
            self._first = now
        self._frames.append((now, skipped))
        while self._frames[0][0] <= now - self.window_s:
            self._frames.popleft()
        if now - self._first < self.window_s:
            return None
        return sum(s for _, s in self._frames) / len(self._frames)


@dataclasses.dataclass
class _Session:
    start: SessionStart
    writer: ArchiveWriter | None
    last_seq: int | None = None
    last_frame_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    archived: int = 0
    analysed: int = 0
    skipped: int = 0
    dropped: int = 0
    analyzer: SessionAnalyzer | None = None
    """Created on the first analysed frame; holds tracks, references and the alerts."""
    pending: Frame | None = None
    last_skip_event: float = -float("inf")
    skip_rate: SkipRate = dataclasses.field(default_factory=lambda: SkipRate(_SKIP_WINDOW_S))
    archive_failed: bool = False
    archive_error: str | None = None
    write_failed: bool = False
    """Set by the archive thread at its first failed write; it skips the rest of this
    session's queued writes (the worker learns of it, and alerts, a moment later)."""
    stalled: bool = False
    last_t_s: float = 0.0
    last_index: int = 0
    """Index of the newest frame; events not caused by a frame are filed under it, since
    the archive's events table reads a frame of -1 as an unwritten row."""
    operando: OperandoContext | None = None
    """Echem samples, dose and lithium bookkeeping (created with the session)."""
    echem_samples: int = 0


_Job = tuple[_Session | None, Callable[[], object], bool]


class _ArchiveThread:
    """Runs the worker's ArchiveWriter calls in order, in one background thread.

    At most ``max_frames`` frames wait: beyond that :meth:`submit` blocks (the worker
    then stops reading its socket, and ZeroMQ makes the publisher wait). A failed write
    (:class:`ArchiveError`) stops that session's writes; the failure, and each frame
    written, is handed back through ``outcomes`` for the worker's thread, which owns
    the sockets, to count and announce. Any other exception is a bug, re-raised in the
    worker's thread by :meth:`maybe_raise`. ``max_frames = 0`` runs every call inline,
    in the caller's thread (no overlap; for comparison and for debugging).
    """

    def __init__(self, max_frames: int) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(max(max_frames, 1))
        self.outcomes: collections.deque[tuple[_Session, ArchiveError | None]] = (
            collections.deque())
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if max_frames > 0:
            self._thread = threading.Thread(target=self._run, name="lithoscope-archive",
                                            daemon=True)
            self._thread.start()

    def submit(self, session: _Session, call: Callable[[], object], *, frame: bool = False,
               timeout_s: float | None = None) -> bool:
        """Queue ``call`` (a method of ``session.writer``). A frame needs room in the
        queue: wait for it up to ``timeout_s`` (None: as long as it takes); False if
        there was none by then."""
        if self._thread is None:
            self._execute((session, call, frame))
            return True
        if frame and not self._slots.acquire(blocking=False):
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not self._slots.acquire(timeout=1.0 if deadline is None else
                                          max(0.0, min(1.0, deadline - time.monotonic()))):
                if not self._thread.is_alive():
                    raise LithoscopeError("The archive writer thread has stopped.")
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        self._jobs.put((session, call, frame))
        return True

    def drain(self, timeout_s: float) -> bool:
        """Wait until every call queued so far has run; False past the deadline."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._jobs.put((None, done.set, False))
        return done.wait(timeout_s)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._execute(job)
            finally:
                if job[2]:
                    self._slots.release()

    def _execute(self, job: _Job) -> None:
        session, call, frame = job
        try:
            if session is None or not session.write_failed:
                call()
                if session is not None and frame:
                    self.outcomes.append((session, None))
        except ArchiveError as exc:
            assert session is not None
            session.write_failed = True
            self.outcomes.append((session, exc))
        except BaseException as exc:  # a bug: handed to the worker in maybe_raise()
            if session is not None:
                session.write_failed = True
            self._error = exc

    def maybe_raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def stop(self, timeout_s: float) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        self._jobs.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise LithoscopeError(f"The archive writer did not finish within {timeout_s:.0f} s.")


class Worker:
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
             "analysis_errors", "late", "archive_queue_full"), 0)
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
        self._unclosed: list[tuple[ArchiveWriter, dict[str, Any]]] = []
        self._last_close_retry = time.monotonic()
        self._archive = _ArchiveThread(self.config.archive_queue_frames)
        self._pool: AnalysisPool | None = None
        """Measuring processes (``workers`` > 0 or measuring endpoints set), else None:
        frames are measured in this thread."""
        self._pool_dir: str | None = None
        self._echem_unattached = EchemBacklog(self.config.limits.echem_backlog_bytes)
        self._size_cache: tuple[Path | None, float, int] = (None, -math.inf, 0)
        self._stopping = threading.Event()
        """The stop event of :meth:`run`."""

    # -- sockets ---------------------------------------------------------------------
    def bind(self) -> tuple[str, str]:
        """Bind both sockets; returns the actual endpoints (ports picked by the OS for ``:*``)."""
        curve = None
        if self.config.server_key is not None and self.config.client_keys is not None:
            curve = ServerCurve.load(self.config.server_key, self.config.client_keys)
            self._auth = curve.start_authenticator(self.context)
        frames = self.context.socket(zmq.PULL)
        harden_socket(frames, max_part_bytes=self.config.limits.max_message_bytes,
                      receive_hwm=self.config.frame_hwm)
        results = self.context.socket(zmq.PUB)
        results.setsockopt(zmq.SNDHWM, self.config.results_hwm)
        # What arrives on the results socket is subscriptions: a few bytes each.
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
        self._finish_measuring(limit_s=_SHUTDOWN_MEASURE_S)
        for session_id in list(self.sessions):
            self._close_session(session_id, reason="shutdown")
        self._archive.stop(_DRAIN_TIMEOUT_S)  # idle: each close above drained it
        self._retry_closing()
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

    # -- main loop -------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set. Bad messages are counted, never fatal."""
        if self._frames is None:
            self.bind()
        assert self._frames is not None
        self._stopping = stop
        poller = zmq.Poller()
        if self._pool is not None:
            poller.register(self._pool.socket, zmq.POLLIN)
        while not stop.is_set():
            # With measuring processes, frames are taken only while there is room to
            # measure them (replay: backpressure) or the session is live (newest wins).
            taking = self._pool is None or self._pool.has_room() or self._any_live()
            if taking:
                poller.register(self._frames, zmq.POLLIN)
            elif self._frames in dict(poller.sockets):
                poller.unregister(self._frames)
            ready = dict(poller.poll(100))
            if self._pool is not None:
                self._join_measured()
            if self._frames in ready:
                self._drain()
            elif self._pool is not None:
                self._analyse_pending()
            self._tick()

    def _drain(self) -> None:
        assert self._frames is not None
        batch: list[list[zmq.Frame]] = []
        for _ in range(_MAX_BATCH):
            try:
                batch.append(self._frames.recv_multipart(flags=zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
        for parts in batch:
            msg = self.decoder(parts)
            if msg is not None:
                self._dispatch(msg)
        self._collect()
        self._analyse_pending()

    def _any_live(self) -> bool:
        return any(session.start.live for session in self.sessions.values())

    def _analyse_pending(self) -> None:
        for session in list(self.sessions.values()):
            if session.pending is not None and (self._pool is None or self._pool.has_room()):
                frame, session.pending = session.pending, None
                self._analyse(session, frame)

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, Frame):
            self._on_frame(msg)
        elif isinstance(msg, SessionStart):
            self._open_session(msg)
        elif isinstance(msg, Echem):
            self._on_echem(msg)
        elif isinstance(msg, SessionStop):
            session = self.sessions.get(msg.session_id)
            if session is None:
                # A repeated stop: the publisher missed our acknowledgement (its results
                # socket was reconnecting, e.g. after this worker restarted). Say it again.
                closed = self.closed_sessions.get(msg.session_id)
                if closed is not None:
                    self._send(closed)
                return
            if session.pending is not None:
                frame, session.pending = session.pending, None
                self._analyse(session, frame)
            self._finish_measuring()
            self._close_session(msg.session_id, reason=msg.reason)
        else:
            self.decoder.rejected["wrong_channel"] += 1

    def _collect(self) -> None:
        """Count the frames the archive thread wrote; announce its failures."""
        outcomes = self._archive.outcomes
        while outcomes:
            session, error = outcomes.popleft()
            if error is None:
                session.archived += 1
                self.counters["archived"] += 1
            else:
                self._archive_failed(session, error)
        self._archive.maybe_raise()

    def _settle(self, session: _Session) -> bool:
        """Wait for the archive thread to finish this session's writes."""
        if self._archive.drain(_DRAIN_TIMEOUT_S):
            self._collect()
            return True
        self._collect()
        self._archive_failed(session, ArchiveError(
            f"Archive writes did not finish within {_DRAIN_TIMEOUT_S:.0f} s (disk hung?)."))
        return False

    def _tick(self) -> None:
        self._collect()
        now = time.monotonic()
        if now - self._last_heartbeat >= self.config.heartbeat_s:
            self._heartbeat(now)
        if self._unclosed and now - self._last_close_retry >= _CLOSE_RETRY_S:
            self._last_close_retry = now
            self._retry_closing()
        for session in self.sessions.values():
            if session.writer is not None and not session.archive_failed:
                self._archive.submit(session, session.writer.flush_if_due)
            if (not session.stalled
                    and now - session.last_frame_monotonic > self.config.stall_timeout_s):
                session.stalled = True
                self._emit(session, Alert(
                    kind=EventKind.SOURCE_STALLED, t_s=self._last_t(session),
                    frame=session.last_index,
                    magnitude=now - session.last_frame_monotonic, confidence=1.0,
                    particle_ids=(), message=f"No frame for {self.config.stall_timeout_s:.0f} s "
                    "from the publisher; waiting (the archive stays open)."))

    # -- sessions --------------------------------------------------------------------
    def _open_session(self, start: SessionStart) -> _Session:
        if start.session_id in self.sessions:
            return self.sessions[start.session_id]
        previous, before = self._abandoned.pop(start.session_id, (None, {}))
        last_seq = before.get("last_seq")
        if previous is not None and start.source_kind == "unknown":
            # Joined mid-stream after a restart: the session is the one the killed
            # worker was recording, so it keeps that session's name, source and policy.
            known = {f.name for f in dataclasses.fields(SessionStart)} - {"seq", "sent_at"}
            start = dataclasses.replace(start, **{k: before[k] for k in known if k in before})
        if previous is not None and start.archive_name is None:
            start = dataclasses.replace(start, archive_name=previous.name)
        path = self.archive_path_for(start)
        writer: ArchiveWriter | None = None
        session = _Session(start=start, writer=None)
        try:
            links = {"continues": previous.name} if previous is not None else {}
            writer = ArchiveWriter(
                path, session={**dataclasses.asdict(start), **links},
                config=self.config.to_dict(),
                software_version=__version__, flush_interval_s=self.config.measurement_flush_s,
                compression_level=self.config.compression_level)
        except ArchiveError as exc:
            self._archive_failed(session, exc)
        if previous is not None and writer is not None:
            try:
                update_archive_meta(previous, continued_in=path.name)
            except ArchiveError as exc:
                log.warning("Could not link %s to %s: %s", previous, path, exc)
        session.writer = writer
        session.last_seq = last_seq  # frames lost across a restart show as a sequence gap
        self.sessions[start.session_id] = session
        self._last_session_id = start.session_id
        log.info("Session %s from %s -> %s", start.session_id, start.source, path)
        self._send(start)
        self._attach_unattached_echem(session)
        return session

    def _retry_closing(self) -> None:
        for writer, summary in list(self._unclosed):
            try:
                writer.close(**summary)
            except ArchiveError:
                continue
            self._unclosed.remove((writer, summary))
            log.warning("Archive %s closed after all (%s).", writer.path, summary["status"])

    def _close_archive(self, session: _Session, writer: ArchiveWriter, *, reason: str) -> None:
        complete = reason == "end_of_source" and not session.archive_failed
        extra = {"archive_error": session.archive_error} if session.archive_error else {}
        summary: dict[str, Any] = dict(
            status="complete" if complete else "interrupted", **extra,
            stop_reason=reason, frames_analysed=session.analysed,
            frames_skipped=session.skipped, frames_dropped=session.dropped)
        try:
            writer.close(**summary)
        except ArchiveError as exc:
            self._archive_failed(session, exc)
            # Closing needs a little room (last rows, metadata): retried from _tick
            # and at shutdown, so once space is freed the archive still records how
            # the session ended rather than looking like a killed worker's.
            summary.update(status="interrupted", archive_error=session.archive_error)
            self._unclosed.append((writer, summary))

    def _close_session(self, session_id: str, *, reason: str) -> None:
        session = self.sessions.pop(session_id)
        path = ""
        # Every queued write first: session_closed promises the frames are on disk. Past
        # the deadline the archive thread may still hold the writer: left recording.
        if session.writer is not None:
            path = str(session.writer.path)
            if self._settle(session):
                self._close_archive(session, session.writer, reason=reason)
        closed = SessionClosed(session_id=session_id, archive_path=path,
                               frames_archived=session.archived,
                               frames_analysed=session.analysed,
                               frames_dropped=session.dropped, reason=reason)
        self.closed_sessions[session_id] = closed
        self._send(closed)

    def _on_frame(self, frame: Frame) -> None:
        self.counters["received"] += 1
        self._interval_received += 1
        session = self.sessions.get(frame.session_id)
        if session is None:
            if frame.session_id in self.closed_sessions:
                self.counters["late"] += 1
                return
            # A worker restarted mid-stream, or a publisher that skipped session_start:
            # keep the frames rather than refuse them.
            session = self._open_session(SessionStart(
                session_id=frame.session_id, source="unknown (joined mid-stream)",
                source_kind="unknown", t0_unix=frame.acquired_at - frame.t_s, live=True,
                pixel_size_nm=frame.pixel_size_nm))
        session.last_frame_monotonic = time.monotonic()
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
        if session.writer is not None and not session.archive_failed:
            assert frame.image is not None
            # The image is a view of the received message, which the job keeps alive;
            # analysis only reads it, so both threads share it without a copy.
            write = functools.partial(
                session.writer.append_frame, frame.image, seq=frame.seq, index=frame.index,
                t_s=frame.t_s, acquired_at=frame.acquired_at, exposure_s=frame.exposure_s,
                metadata=_frame_metadata(frame))
            if not self._archive.submit(session, write, frame=True, timeout_s=0.0):
                self.counters["archive_queue_full"] += 1
                self._wait_for_archive(session, frame, write)
        if session.start.live:
            if session.pending is not None:
                self._skip(session, session.pending)
            session.pending = frame
        else:
            self._analyse(session, frame)

    def _wait_for_archive(self, session: _Session, frame: Frame,
                          write: Callable[[], object]) -> None:
        """The archive is the slowest stage right now: wait, and let ZeroMQ's high-water
        mark hold the publisher back. Meanwhile keep the heartbeat going (a monitor must
        tell a slow disk from a dead worker) and say so if the disk is stuck."""
        since = time.monotonic()
        alerted = False
        while not self._archive.submit(session, write, frame=True, timeout_s=0.25):
            if self._stopping.is_set():
                # Stopped (Ctrl-C, SIGTERM) while the disk takes nothing: this frame
                # cannot be kept; say so and let the shutdown close what it can.
                self._archive_failed(session, ArchiveError(
                    f"frame {frame.index} and later not archived: the service was stopped "
                    "while the disk was not taking data"))
                return
            self._collect()
            now = time.monotonic()
            if now - self._last_heartbeat >= self.config.heartbeat_s:
                self._heartbeat(now)
            if not alerted and now - since >= _ARCHIVE_STALL_S:
                alerted = True
                self._emit(session, Alert(
                    kind=EventKind.ARCHIVE_STALLED, t_s=frame.t_s, frame=frame.index,
                    magnitude=now - since, confidence=1.0, particle_ids=(),
                    message=f"Archive writes blocked for {now - since:.0f} s: the disk "
                    f"{session.writer.path if session.writer else ''} is not taking data "
                    "(full, hung or a stalled network drive?). Frames wait in the queue and "
                    "the publisher is held back; nothing is lost yet."))

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

    # -- analysis --------------------------------------------------------------------
    def _analyse(self, session: _Session, frame: Frame) -> None:
        assert frame.image is not None
        pixel_size = frame.pixel_size_nm or session.start.pixel_size_nm
        if session.analyzer is None:
            session.analyzer = SessionAnalyzer(self.config.analysis, self.config.alerts)
        if self._pool is not None:
            while not self._pool.has_room():  # replay: wait rather than skip
                self._join_measured(wait_s=1.0)
            self._pool.submit((session, frame), frame.image, pixel_size_nm=pixel_size,
                              config=self.config.analysis)
            return
        try:
            cluster, particles, alerts = session.analyzer.update(
                frame.image, t_s=frame.t_s, index=frame.index, pixel_size_nm=pixel_size)
        except Exception:  # a bug in analysis must not cost the archive
            self._analysis_failed(frame, None)
            return
        self._analysed(session, frame, cluster, particles, alerts)

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
            assert session.analyzer is not None
            pixel_size = frame.pixel_size_nm or session.start.pixel_size_nm
            try:
                cluster, particles, alerts = session.analyzer.update_measured(
                    outcome.measurement, t_s=frame.t_s, index=frame.index,
                    pixel_size_nm=pixel_size)
            except Exception:
                self._analysis_failed(frame, None)
                continue
            self._analysed(session, frame, cluster, particles, alerts)

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

    def _analysed(self, session: _Session, frame: Frame, cluster: dict[str, Any],
                  particles: dict[str, np.ndarray], alerts: list[Alert]) -> None:
        cluster, particles, alerts = self._operando(session, frame, cluster, particles, alerts)
        latency = time.time() - frame.acquired_at
        session.analysed += 1
        self.counters["analysed"] += 1
        if session.start.live:
            session.skip_rate.update(time.monotonic(), skipped=False)
        self._interval_analysed += 1
        self._interval_latencies.append(latency)
        self._send(Result(session_id=session.start.session_id, index=frame.index, t_s=frame.t_s,
                          latency_s=latency, cluster=cluster,
                          particles={k: v.tolist() for k, v in particles.items()}))
        if session.writer is not None and not session.archive_failed:
            n = len(particles["label"])
            self._archive.submit(session, functools.partial(
                session.writer.append_rows, "cluster", {
                    **{k: cluster[k] for k in CLUSTER_COLUMNS},
                    "frame": frame.index, "t_s": frame.t_s, "latency_s": latency}))
            self._archive.submit(session, functools.partial(
                session.writer.append_rows, "particles", {
                    **particles, "frame": np.full(n, frame.index),
                    "t_s": np.full(n, frame.t_s)}))
        for alert in alerts:
            self._emit(session, alert)

    # -- operando context (electrochemistry, dose, lithium) ---------------------------
    def _operando_for(self, session: _Session) -> OperandoContext:
        if session.operando is None:
            session.operando = OperandoContext(self.config.operando)
        return session.operando

    def _on_echem(self, msg: Echem) -> None:
        """File a batch of echem samples under its session (named, or the open one)."""
        session_id = msg.session_id
        if session_id is None:
            session_id = (self._last_session_id if self._last_session_id in self.sessions
                          else next(reversed(self.sessions), None))
        session = self.sessions.get(session_id) if session_id is not None else None
        if session is None:
            self._echem_unattached.append(msg)
            return
        self._file_echem(session, msg)

    def _attach_unattached_echem(self, session: _Session) -> None:
        for msg in self._echem_unattached.take(session.start.session_id):
            self._file_echem(session, msg, not_before_s=-_ECHEM_PREROLL_S)

    def _file_echem(self, session: _Session, msg: Echem, *,
                    not_before_s: float = -math.inf) -> None:
        offset = msg.clock_offset_s or self.config.operando.clock_offset_s
        t_unix = np.asarray(msg.t_unix, dtype=np.float64)
        t_s = t_unix + offset - session.start.t0_unix
        keep = t_s >= not_before_s
        if not keep.any():
            return
        bias = np.array([math.nan if v is None else v for v in msg.bias_v], dtype=np.float64)
        current = np.array([math.nan if v is None else v for v in msg.current_a],
                           dtype=np.float64)
        t_s, t_unix, bias, current = t_s[keep], t_unix[keep], bias[keep], current[keep]
        self._operando_for(session).add_echem(t_s, bias, current)
        n = int(t_s.size)
        if session.writer is not None and not session.archive_failed:
            self._archive.submit(session, functools.partial(
                session.writer.append_rows, "echem", {
                    "t_s": t_s, "t_unix": t_unix, "bias_v": bias, "current_a": current,
                    "clock_offset_s": np.full(n, offset),
                    # One string object shared by n rows, not n copies of it.
                    "source": np.full(n, msg.source, dtype=object),
                    "seq": np.arange(session.echem_samples, session.echem_samples + n)}))
        session.echem_samples += n
        self._send(dataclasses.replace(
            msg, session_id=session.start.session_id, clock_offset_s=offset,
            t_unix=t_unix.tolist(), bias_v=_nullable(bias), current_a=_nullable(current)))

    def _operando(self, session: _Session, frame: Frame, cluster: dict[str, Any],
                  particles: dict[str, np.ndarray], alerts: list[Alert],
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Alert]]:
        """Bias, current, charge, dose and lithium bookkeeping for an analysed frame;
        its rows go to the operando tables. Never costs the frame its results."""
        context = self._operando_for(session)
        exposure = frame.exposure_s or (1.0 / session.start.fps if session.start.fps else None)
        try:
            cluster, particles, alerts, rows = context.update(
                image=frame.image, t_s=frame.t_s, index=frame.index,
                pixel_size_nm=frame.pixel_size_nm or session.start.pixel_size_nm,
                exposure_s=exposure, metadata=frame.metadata, cluster=cluster,
                particles=particles, alerts=alerts)
        except Exception:
            if not self.counters["analysis_errors"]:
                log.exception("Operando context failed on frame %d.", frame.index)
            self.counters["analysis_errors"] += 1
            return cluster, particles, alerts
        if session.writer is not None and not session.archive_failed:
            n = len(rows.particle_rows["track_id"])
            m = len(rows.region_rows["region_row"])
            write = session.writer.append_rows
            self._archive.submit(session, functools.partial(write, "operando", rows.row))
            self._archive.submit(session, functools.partial(write, "particle_dose", {
                **rows.particle_rows, "frame": np.full(n, frame.index),
                "t_s": np.full(n, frame.t_s)}))
            self._archive.submit(session, functools.partial(write, "region_dose", {
                **rows.region_rows, "frame": np.full(m, frame.index),
                "t_s": np.full(m, frame.t_s)}))
        return cluster, particles, alerts

    # -- output ----------------------------------------------------------------------
    def _emit(self, session: _Session, alert: Alert) -> None:
        event = Event(session_id=session.start.session_id, kind=alert.kind.value,
                      t_s=alert.t_s, frame=alert.frame, magnitude=alert.magnitude,
                      confidence=alert.confidence, particle_ids=list(alert.particle_ids),
                      message=alert.message, context=dict(alert.context))
        log.info("Event %s at t=%.2f s (frame %d): %s", event.kind, event.t_s, event.frame,
                 event.message)
        if session.writer is not None and not session.archive_failed:
            self._archive.submit(session, functools.partial(
                session.writer.append_rows, "events", {
                    "frame": event.frame, "t_s": event.t_s, "kind": event.kind,
                    "magnitude": event.magnitude, "confidence": event.confidence,
                    "particle_ids": str(event.particle_ids), "message": event.message,
                    "context_json": json.dumps(_json_safe(event.context))}))
        self._send(event)

    def _archive_bytes(self, writer: ArchiveWriter, now: float) -> int:
        """The archive's size on disk, counted at most every ``_SIZE_INTERVAL_S``: the
        count walks every chunk file, and a 30-minute session's 7200 frames took 1-2 s
        a walk on a loaded machine, every heartbeat, in the thread that analyses."""
        path, counted, size = self._size_cache
        if path != writer.path or now - counted >= _SIZE_INTERVAL_S:
            size = directory_size(writer.path)
            self._size_cache = (writer.path, now, size)
        return size

    def _archive_failed(self, session: _Session, exc: ArchiveError) -> None:
        self.counters["archive_errors"] += 1
        if session.archive_failed:
            return
        session.archive_failed = True
        session.archive_error = str(exc)
        log.error("Archive failure for session %s: %s", session.start.session_id, exc)
        self._send(Event(session_id=session.start.session_id, kind=EventKind.ARCHIVE_ERROR.value,
                         t_s=self._last_t(session), frame=session.last_index, magnitude=0.0,
                         confidence=1.0,
                         message=f"Archive failed, frames are no longer being saved: {exc}"))

    @staticmethod
    def _last_t(session: _Session) -> float:
        return session.last_t_s

    def _send(self, msg: Message) -> None:
        if self._results is None:
            return
        self._results_seq += 1
        stamped = dataclasses.replace(msg, seq=self._results_seq, sent_at=time.time())
        try:
            self._results.send_multipart(encode(stamped), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB drops rather than blocks; this is belt and braces
            pass

    def _heartbeat(self, now: float) -> None:
        elapsed = max(now - self._last_heartbeat, 1e-9)
        latencies = np.asarray(self._interval_latencies)
        # The newest open session: a stalled one left open by a dead publisher must not
        # hide the stream that replaced it.
        session_id = (self._last_session_id if self._last_session_id in self.sessions
                      else next(reversed(self.sessions), None))
        writer = self.sessions[session_id].writer if session_id else None
        counters = dict(self.counters)
        counters["rejected"] = sum(self.decoder.rejected.values())
        counters.update({f"rejected_{k}": v for k, v in self.decoder.rejected.items()})
        self._send(Heartbeat(
            session_id=session_id, counters=counters,
            fps_in=self._interval_received / elapsed,
            fps_analysed=self._interval_analysed / elapsed,
            latency_p50_s=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p99_s=float(np.percentile(latencies, 99)) if latencies.size else None,
            archive_path=str(writer.path) if writer else None,
            archive_bytes=self._archive_bytes(writer, now) if writer else None))
        self._interval_received = self._interval_analysed = 0
        self._interval_latencies.clear()
        self._last_heartbeat = now


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
