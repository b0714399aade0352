"""The worker: receive frames, archive every one, analyse, publish results and alerts.

Sockets:

* frames: PULL, bound; publishers connect with PUSH. PUSH/PULL never drops: when the
  worker's queue is full the publisher's send waits. That is what makes replay and
  archiving lossless (an unthrottled PUB/SUB stream was measured losing 94 % of
  2048² frames).
* results: PUB, bound; results, events and heartbeats for any number of subscribers.
  A slow subscriber loses updates at its high-water mark; the worker never waits for it.

The worker binds, receives, dispatches, publishes and hands off. Each session's
analysis and row shaping is a :class:`~.pipeline.SessionPipeline`; each archive's whole
life (open, writes, size, close) belongs to the archive thread
(:class:`~.archiving.ArchiveThread`), behind a bounded queue of frames
(``archive_queue_frames``). When that queue is full the worker stops reading frames: the
frames socket fills to its high-water mark and the publisher waits. A session's
``session_closed`` is sent once the archive thread has closed its archive.

Every frame is handed to the archive thread as it is received, before any analysis.
Live policy: a camera does not wait, so in a live session the worker analyses only the
newest frame that has arrived; the frames it did not analyse are counted as
``skipped`` (heartbeat) and announced with an ``analysis_skipped`` event. A replay
session (``live = false``) analyses every frame: its frames wait in a backlog
(``analysis_backlog_bytes``). The pipelines run in one analysis thread, one frame at a
time, while the loop goes on receiving and archiving; the loop publishes and archives
what the analysis thread hands back.

A session belongs to the sender whose ``session_token`` opened it; what arrives
without it is refused and counted (docs/protocol.md, docs/security.md).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
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

from .. import __version__
from ..alerts import Alert
from ..analysis import FrameMeasurement
from ..archive import ArchiveWriter, recover_abandoned, safe_archive_name, update_archive_meta
from ..archive.thread import ArchiveThread, SessionArchive
from ..config import ServiceConfig
from ..errors import ArchiveError, LithoscopeError
from ..operando.echem import EchemBacklog
from ..pipeline import EchemOutput, FrameOutput, SessionPipeline, event_message, event_row
from ..protocol import (
    Decoder,
    Echem,
    Event,
    EventKind,
    Frame,
    Heartbeat,
    Message,
    MessageType,
    SessionClosed,
    SessionStart,
    SessionStop,
    encode,
)
from ..security import ServerCurve
from ..sockets import harden_socket
from .fanout import AnalysisPool, Outcome

__all__ = ["SkipRate", "Worker", "WorkerThread", "default_archive_path"]

log = logging.getLogger(__name__)

_MAX_BATCH = 256
_PUBLISHED_TOPICS = tuple(kind.value.encode() for kind in MessageType)
"""Topics a subscription may name (or a prefix of): every message type."""
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
"""At shutdown, how long frames waiting for analysis or out for measuring are given
(they are archived already; only their measurements are lost past it)."""
_DRAIN_TIMEOUT_S = 120.0
"""Longest wait for the queued archive writes at a session's end or at shutdown; past
it (a hung disk) the archive is left to the next start's recovery, never closed under
the writer thread's feet."""
_ARCHIVE_STALL_S = 10.0
"""A frame waiting this long for room in the archive queue raises ``archive_stalled``."""
_STOP_WAIT_S = 2.0
"""Stopped while a frame waits for room in the archive queue: how long the disk still
has to take it before it is given up (and said so)."""
_CLOSED_KEPT = 1024
"""Closed sessions remembered (to repeat their acknowledgement, to count late frames)."""
_TOKEN_MIN_CHARS = 16
_TOKEN_MAX_CHARS = 256
"""Bounds of a ``session_token``: long enough not to be guessed, short enough to hash."""


def token_digest(token: str) -> str:
    """SHA-256 of a session token, hex: what the archive keeps, so that after a restart
    the worker recognises the sender of an interrupted session without storing its
    secret where subscribers and archive readers see it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _token_ok(token: str | None, expected: str) -> bool:
    return token is not None and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


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
    """As published and archived: without its token."""
    archive: SessionArchive | None
    """None when no archive could be even planned (it is created by the archive thread)."""
    token: str = ""
    """The sender's ``session_token``: frames, stop and echem must carry it."""
    frame_shape: tuple[tuple[int, ...], str] | None = None
    """Shape and dtype of the first accepted frame; frames of another are rejected."""
    accepted: int = 0
    """Frames accepted for archiving (checked against ``frames_sent`` at the stop)."""
    sent_before: int = 0
    """Frames in the archive this one continues (a restart mid-session)."""
    last_activity: float = dataclasses.field(default_factory=time.monotonic)
    last_seq: int | None = None
    last_frame_monotonic: float = dataclasses.field(default_factory=time.monotonic)
    archived: int = 0
    analysed: int = 0
    skipped: int = 0
    dropped: int = 0
    pipeline: SessionPipeline | None = None
    """Analysis, operando bookkeeping and row shaping (created with the session)."""
    pending: Frame | None = None
    last_skip_event: float = -float("inf")
    skip_rate: SkipRate = dataclasses.field(default_factory=lambda: SkipRate(_SKIP_WINDOW_S))
    archive_failed: bool = False
    archive_error: str | None = None
    lost: int = 0
    """Accepted frames the archive could not take (after an archive failure)."""
    close_reason: str = ""
    archive_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The session metadata its archive was created with (a fallback archive's too)."""
    archive_bytes: int | None = None
    backlog: collections.deque[Frame] = dataclasses.field(default_factory=collections.deque)
    """Replay frames archived and waiting for analysis, oldest first."""
    stopping: SessionStop | None = None
    """The session_stop, once received: the session closes when its backlog is analysed."""
    acknowledged: bool = False
    stalled: bool = False
    last_t_s: float = 0.0
    last_index: int = 0
    """Index of the newest frame; events not caused by a frame are filed under it, since
    the archive's events table reads a frame of -1 as an unwritten row."""


class _AnalysisThread:
    """Runs the sessions' pipelines (analysis, echem filing) in one background thread,
    in the order asked, so that receiving and archiving never wait for analysis.

    A job runs in the thread and returns a completion, run later in the worker's
    thread (which owns the sockets) by :meth:`complete`: publishing and archiving the
    rows stay with the worker.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None]] | None] = (
            queue.SimpleQueue())
        self._done: collections.deque[Callable[[], None]] = collections.deque()
        self.pending = 0
        """Jobs submitted whose completion has not run yet (worker's thread only)."""
        self._thread = threading.Thread(target=self._run, name="lithoscope-analysis",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Callable[[], None]]) -> None:
        self.pending += 1
        self._jobs.put(job)

    def complete(self) -> None:
        """Run the completions of the jobs done so far, in order."""
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

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._done.append(job())


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
             "analysis_errors", "late", "archive_queue_full", "message_errors",
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
        self._archive = ArchiveThread(self.config.archive_queue_frames,
                                      fallback=self._open_fallback)
        self._by_archive: dict[SessionArchive, _Session] = {}
        self._closing: dict[str, _Session] = {}
        """Sessions stopped whose archive the archive thread is closing."""
        self._backlog_bytes = 0
        self._size_asked = -math.inf
        self._pool: AnalysisPool | None = None
        """Measuring processes (``workers`` > 0 or measuring endpoints set), else None:
        frames are measured in this thread."""
        self._pool_dir: str | None = None
        self._echem_unattached = EchemBacklog(self.config.limits.echem_backlog_bytes)
        self._stopping = threading.Event()
        """The stop event of :meth:`run`."""
        self._closed = False

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
        assert self._results is not None
        poller.register(self._results, zmq.POLLIN)
        while not stop.is_set():
            # Frames are taken (and archived at once) while the replay frames waiting
            # for analysis fit in analysis_backlog_bytes; past it ZeroMQ holds the
            # publisher back. Live sessions keep only their newest frame.
            if self._backlog_bytes < self.config.analysis_backlog_bytes:
                poller.register(self._frames, zmq.POLLIN)
            elif self._frames in dict(poller.sockets):
                poller.unregister(self._frames)
            timeout_ms = (0 if self._analysis_ready() else 5 if self._analysis.pending
                          else 100)
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

    def _analysis_ready(self) -> bool:
        if self._pool is not None and not self._pool.has_room():
            return False
        if self._pool is None and self._frames_in_analysis:
            return False
        return any(session.pending is not None or session.backlog
                   or session.stopping is not None for session in self.sessions.values())

    def _analyse_pending(self) -> None:
        """Hand the analysis thread the next waiting frame when it is free (a live
        session's newest, else a replay's oldest); close sessions stopped and fully
        analysed."""
        for session in list(self.sessions.values()):
            if self._pool is not None and not self._pool.has_room():
                return
            if self._pool is None and self._frames_in_analysis:
                return  # one frame at a time: a live session's newest is chosen when due
            if session.pending is not None:
                frame, session.pending = session.pending, None
                self._analyse(session, frame)
            elif session.backlog:
                frame = session.backlog.popleft()
                assert frame.image is not None
                self._backlog_bytes -= frame.image.nbytes
                self._analyse(session, frame)
                if not session.backlog:  # caught up: the stall clock starts now
                    session.last_frame_monotonic = max(session.last_frame_monotonic,
                                                       time.monotonic())
            if (session.stopping is not None and session.pending is None
                    and not session.backlog):
                stop = session.stopping
                self._finish_measuring()
                if self._analysis.pending:
                    continue  # closed once every frame's rows have been handed over
                self._close_session(stop.session_id, reason=stop.reason,
                                    frames_sent=stop.frames_sent)

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

    def _reject(self, reason: str, detail: str) -> None:
        """Count a message refused after decoding (``rejected_<reason>``), log once."""
        rejected = self.decoder.rejected
        if not rejected[reason]:
            log.warning("Rejected a message (%s): %s Further ones are only counted.",
                        reason, _printable(detail))
        rejected[reason] += 1

    def _owned(self, session_id: str | None, token: str | None
               ) -> _Session | None:
        """The open session ``session_id`` if ``token`` is its token; else counted."""
        session = self.sessions.get(session_id) if session_id is not None else None
        if session is None:
            return None
        if not _token_ok(token, session.token):
            self._reject("session_token_mismatch",
                         f"a message for session {session_id!r} without its session_token.")
            return None
        return session

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

    def _on_session_stop(self, msg: SessionStop) -> None:
        if msg.session_id in self._closing:
            return  # repeated while its archive is being closed: acknowledged when done
        if msg.session_id not in self.sessions:
            # A repeated stop: the publisher missed our acknowledgement (its results
            # socket was reconnecting, e.g. after this worker restarted). Say it again.
            closed = self.closed_sessions.get(msg.session_id)
            if closed is None and self._continues(msg.session_id, msg.session_token):
                closed = self._close_abandoned(msg)
            if closed is not None:
                self._send(closed)
            else:
                self._reject("unknown_session", f"session_stop for {msg.session_id!r}, "
                             "which is not open.")
            return
        session = self._owned(msg.session_id, msg.session_token)
        if session is not None and session.stopping is None:
            session.stopping = msg  # closed once its waiting frames are analysed
            session.last_activity = time.monotonic()

    def _collect(self) -> None:
        """Count what the archive thread did; announce its failures and closings."""
        outcomes = self._archive.outcomes
        while outcomes:
            kind, archive, value = outcomes.popleft()
            session = self._by_archive.get(archive)
            if session is None:
                continue
            if kind == "frame":
                session.archived += 1
                self.counters["archived"] += 1
            elif kind == "lost":
                session.lost += 1
                self.counters["frames_lost"] += 1
            elif kind == "error":
                self._archive_failed(session, value)
            elif kind == "fallback":
                self._archive_moved(session, value)
            elif kind == "size":
                session.archive_bytes = value if value is not None else session.archive_bytes
            elif kind == "closed":
                self._archive_closed(session, value)
        self._archive.maybe_raise()

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
                self._archive.write(session.archive, ArchiveWriter.flush_if_due)
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

    # -- sessions --------------------------------------------------------------------
    def _on_session_start(self, start: SessionStart) -> None:
        token = start.session_token
        if token is None or not _TOKEN_MIN_CHARS <= len(token) <= _TOKEN_MAX_CHARS:
            self._reject(
                "session_token_missing" if token is None else "session_token_invalid",
                f"session_start for {start.session_id!r} needs a session_token of "
                f"{_TOKEN_MIN_CHARS} to {_TOKEN_MAX_CHARS} characters "
                "(secrets.token_urlsafe(16)).")
            return
        existing = self.sessions.get(start.session_id)
        if existing is not None:
            if not _token_ok(token, existing.token):
                self._reject("session_token_mismatch", f"session_start for the open "
                             f"session {start.session_id!r} with another session_token.")
            return  # its owner repeating itself
        if len(self.sessions) >= self.config.max_sessions:
            self._reject("too_many_sessions", f"session_start for {start.session_id!r} "
                         f"while {len(self.sessions)} sessions are open (max_sessions).")
            return
        self._open_session(start, token)

    def _continues(self, session_id: str, token: str | None) -> bool:
        """Is ``session_id`` an archive the last run left recording, opened with ``token``?"""
        _, before = self._abandoned.get(session_id, (None, {}))
        digest = before.get("session_token_sha256")
        return (token is not None and isinstance(digest, str)
                and hmac.compare_digest(digest, token_digest(token)))

    def _open_session(self, start: SessionStart, token: str) -> _Session:
        if start.session_id in self.sessions:
            return self.sessions[start.session_id]
        start = dataclasses.replace(start, session_token=None)
        previous, before = (self._abandoned.pop(start.session_id)
                            if self._continues(start.session_id, token) else (None, {}))
        last_seq = before.get("last_seq")
        if previous is not None and start.source_kind == "unknown":
            # Joined mid-stream after a restart: the session is the one the killed
            # worker was recording, so it keeps that session's name, source and policy.
            known = {f.name for f in dataclasses.fields(SessionStart)} - {
                "seq", "sent_at", "session_token"}
            start = dataclasses.replace(start, **{k: before[k] for k in known if k in before})
        if previous is not None and start.archive_name is None:
            start = dataclasses.replace(start, archive_name=previous.name)
        path = self.archive_path_for(start)
        archive = SessionArchive(session_id=start.session_id, path=path)
        session = _Session(start=start, archive=archive, token=token,
                           pipeline=SessionPipeline(
                               start, analysis=self.config.analysis, alerts=self.config.alerts,
                               operando=self.config.operando, clock=time.time))
        self._by_archive[archive] = session
        links = {"continues": previous.name} if previous is not None else {}
        meta = {k: v for k, v in dataclasses.asdict(start).items() if k != "session_token"}
        meta = {**meta, "session_token_sha256": token_digest(token), **links}
        session.archive_meta = meta
        self._archive.open(archive, functools.partial(self._create_archive, path, meta,
                                                      previous))
        session.last_seq = last_seq  # frames lost across a restart show as a sequence gap
        if previous is not None:
            frames_before = before.get("frame_count")
            session.sent_before = frames_before if isinstance(frames_before, int) else 0
        self.sessions[start.session_id] = session
        self._last_session_id = start.session_id
        log.info("Session %s from %s -> %s", _printable(start.session_id),
                 _printable(start.source), path)
        self._send(start)
        self._attach_unattached_echem(session)
        return session

    def _create_archive(self, path: Path, meta: dict[str, Any], previous: Path | None
                        ) -> ArchiveWriter:
        """Run in the archive thread: create a session's archive, link the one it
        continues."""
        writer = ArchiveWriter(
            path, session=meta, config=self.config.to_dict(), software_version=__version__,
            flush_interval_s=self.config.measurement_flush_s,
            compression_level=self.config.compression_level)
        if previous is not None:
            try:
                update_archive_meta(previous, continued_in=path.name)
            except ArchiveError as exc:
                log.warning("Could not link %s to %s: %s", previous, path, exc)
        return writer

    def _open_fallback(self, archive: SessionArchive, error: ArchiveError) -> ArchiveWriter:
        """Run in the archive thread when a session's archive failed: the archive the
        session goes on in (``fallback_dir``), linked to the failed one."""
        session = self._by_archive[archive]
        root = Path(self.config.fallback_dir or Path(tempfile.gettempdir()) /
                    "lithoscope-fallback")
        name = dataclasses.replace(session.start, archive_name=archive.path.name)
        path = default_archive_path(root, name)
        meta = {**session.archive_meta, "continues": str(archive.path),
                "fallback_after": str(error)}
        return self._create_archive(path, meta, None)

    def _retry_closing(self) -> None:
        """Closing needs a little room (last rows, metadata): an archive that could not
        be closed (disk full) is tried again, so once space is freed it still records
        how the session ended rather than looking like a killed worker's."""
        for session in self._unclosed:
            self._queue_close(session, reason=session.close_reason, frames_sent=None)

    def _summary(self, session: _Session, reason: str, frames_sent: int | None,
                 writer: ArchiveWriter) -> dict[str, Any]:
        """Run in the archive thread once every earlier write has run: how the session
        ended, for the archive's metadata.

        "complete": the publisher ended normally, every frame accepted is in the
        archive, and every frame the publisher says it sent is accounted for.
        """
        archive = session.archive
        assert archive is not None
        failed = archive.failed or session.archive_failed
        complete = (reason == "end_of_source" and not failed
                    and archive.frames_before + writer.frame_count == session.accepted
                    and (frames_sent is None or frames_sent == _accounted(session)))
        extra: dict[str, Any] = (
            {"archive_error": session.archive_error} if session.archive_error else {})
        if frames_sent is not None:
            extra["frames_sent"] = frames_sent
        if failed and "archive_error" not in extra:
            extra["archive_error"] = "archive writes failed (see the service log)"
        return dict(status="complete" if complete else "interrupted", **extra,
                    stop_reason=reason, frames_analysed=session.analysed,
                    frames_skipped=session.skipped, frames_dropped=session.dropped)

    def _queue_close(self, session: _Session, *, reason: str, frames_sent: int | None
                     ) -> None:
        assert session.archive is not None
        self._archive.close(session.archive, functools.partial(
            self._summary, session, reason, frames_sent))

    def _close_session(self, session_id: str, *, reason: str,
                       frames_sent: int | None = None) -> None:
        """End a session: its archive is closed by the archive thread after every write
        queued before, and ``session_closed`` (which promises the frames are on disk)
        is sent once that is done (see :meth:`_archive_closed`)."""
        session = self.sessions.pop(session_id)
        for frame in session.backlog:  # shutdown: archived, never to be analysed
            assert frame.image is not None
            self._backlog_bytes -= frame.image.nbytes
        session.backlog.clear()
        session.close_reason = reason
        if frames_sent is not None and frames_sent != _accounted(session):
            self._frames_sent_differ(session, frames_sent)
        if session.archive is None:
            self._acknowledge(session)
            return
        self._closing[session_id] = session
        self._queue_close(session, reason=reason, frames_sent=frames_sent)

    def _archive_closed(self, session: _Session, error: ArchiveError | None) -> None:
        if error is not None:
            self._archive_failed(session, error)
            if session not in self._unclosed:
                self._unclosed.append(session)
        elif session in self._unclosed:
            self._unclosed.remove(session)
            log.warning("Archive %s closed after all.", session.archive.path
                        if session.archive else "")
        if not session.acknowledged:
            self._acknowledge(session)
        if session not in self._unclosed:
            self._by_archive.pop(session.archive, None)  # type: ignore[arg-type]

    def _acknowledge(self, session: _Session) -> None:
        session_id = session.start.session_id
        session.acknowledged = True
        self._closing.pop(session_id, None)
        closed = SessionClosed(
            session_id=session_id,
            archive_path=str(session.archive.first_path or session.archive.path)
            if session.archive else "",
            frames_archived=session.archived, frames_analysed=session.analysed,
            frames_dropped=session.dropped, reason=session.close_reason)
        self.closed_sessions[session_id] = closed
        while len(self.closed_sessions) > _CLOSED_KEPT:
            del self.closed_sessions[next(iter(self.closed_sessions))]
        self._send(closed)

    def _close_abandoned(self, msg: SessionStop) -> SessionClosed:
        """The stop of a session the last run was recording when it was killed, with no
        frame since: its frames are all in that archive (recovery closed it). Say so."""
        path, before = self._abandoned.pop(msg.session_id)
        count = before.get("frame_count")
        archived = count if isinstance(count, int) else 0
        closed = SessionClosed(session_id=msg.session_id, archive_path=str(path),
                               frames_archived=archived, frames_analysed=0,
                               frames_dropped=max(msg.frames_sent - archived, 0),
                               reason="worker_died")
        self.closed_sessions[msg.session_id] = closed
        return closed

    def _frames_sent_differ(self, session: _Session, frames_sent: int) -> None:
        missing = frames_sent - session.sent_before - session.accepted
        log.warning("Session %s: the publisher sent %d frames; %d accepted, %d in the "
                    "archive it continues, %d lost on the way (sequence gaps).",
                    _printable(session.start.session_id), frames_sent, session.accepted,
                    session.sent_before, session.dropped)
        self._emit(session, Alert(
            kind=EventKind.FRAMES_DROPPED, t_s=self._last_t(session),
            frame=session.last_index, magnitude=float(missing), confidence=1.0,
            particle_ids=(), message=f"The publisher sent {frames_sent} frame(s); "
            f"{session.sent_before + session.accepted} are archived and {session.dropped} "
            "counted lost: the others were refused (see the heartbeat's "
            "rejected_<reason> counters)."))

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
        if self._stopping.is_set() and session.archive_failed:
            session.lost += 1  # after "frame N and later not archived" (_wait_for_archive)
            self.counters["frames_lost"] += 1
        elif session.archive is not None:
            # The image is a view of the received message, which the job keeps alive;
            # analysis only reads it, so both threads share it without a copy.
            write = functools.partial(
                _append_frame, frame.image, seq=frame.seq, index=frame.index,
                t_s=frame.t_s, acquired_at=frame.acquired_at, exposure_s=frame.exposure_s,
                metadata=_frame_metadata(frame))
            if not self._archive.write(session.archive, write, frame=True, timeout_s=0.0):
                self.counters["archive_queue_full"] += 1
                self._wait_for_archive(session, frame, write)
        if session.start.live:
            if session.pending is not None:
                self._skip(session, session.pending)
            session.pending = frame
        else:
            # Analysed from the loop, one frame at a time between receiving (see
            # _analyse_pending): the archive never waits for analysis.
            session.backlog.append(frame)
            self._backlog_bytes += frame.image.nbytes

    def _frame_session(self, frame: Frame) -> _Session | None:
        """The open session a frame belongs to, if it carries that session's token.

        A frame for a session that is not open opens nothing (sessions are opened by
        ``session_start`` only, so a sender cannot make sessions by sending frames),
        with one exception: the worker was restarted mid-session, the archive the last
        run left recording is that session's, and the frame carries its token (the
        archive keeps the token's SHA-256): the frames that follow go into a new archive
        linked to it.
        """
        if frame.session_id in self.sessions:
            session = self._owned(frame.session_id, frame.session_token)
            if session is None or session.stopping is None:
                return session
            self.counters["late"] += 1  # after its session_stop
            return None
        if frame.session_id in self.closed_sessions or frame.session_id in self._closing:
            self.counters["late"] += 1
            return None
        if frame.session_token is None or not self._continues(frame.session_id,
                                                              frame.session_token):
            self._reject("unknown_session", f"a frame for {frame.session_id!r}, which no "
                         "session_start opened.")
            return None
        if len(self.sessions) >= self.config.max_sessions:
            self._reject("too_many_sessions", f"a frame resuming {frame.session_id!r} while "
                         f"{len(self.sessions)} sessions are open (max_sessions).")
            return None
        return self._open_session(SessionStart(
            session_id=frame.session_id, source="unknown (joined mid-stream)",
            source_kind="unknown", t0_unix=frame.acquired_at - frame.t_s, live=True,
            pixel_size_nm=frame.pixel_size_nm), frame.session_token)

    def _frame_fits(self, session: _Session, frame: Frame) -> bool:
        """Sequence and shape checks: what is refused is counted and never stored, so
        the archive holds each frame once, in sequence order, all of one shape."""
        if frame.seq < 0:
            self._reject("bad_seq", f"frame {frame.index} of {frame.session_id!r} has "
                         f"seq {frame.seq} (expected >= 0).")
            return False
        if session.last_seq is not None and frame.seq <= session.last_seq:
            self._reject("seq_not_increasing", f"frame {frame.index} of "
                         f"{frame.session_id!r} has seq {frame.seq}, not above the last "
                         f"accepted {session.last_seq} (a duplicate or out of order).")
            return False
        assert frame.image is not None
        shape = (tuple(frame.image.shape), frame.image.dtype.str)
        if session.frame_shape is None:
            session.frame_shape = shape
        elif shape != session.frame_shape:
            self._reject("frame_shape_mismatch", f"frame {frame.index} of "
                         f"{frame.session_id!r} is {shape}; the session's frames are "
                         f"{session.frame_shape}.")
            return False
        return True

    def _wait_for_archive(self, session: _Session, frame: Frame,
                          write: Callable[[ArchiveWriter], object]) -> None:
        """The archive is the slowest stage right now: wait, and let ZeroMQ's high-water
        mark hold the publisher back. Meanwhile keep the heartbeat going (a monitor must
        tell a slow disk from a dead worker) and say so if the disk is stuck."""
        since = time.monotonic()
        alerted = False
        assert session.archive is not None
        stopped_at: float | None = None
        while not self._archive.write(session.archive, write, frame=True, timeout_s=0.25):
            if self._stopping.is_set() and stopped_at is None:
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at >= _STOP_WAIT_S:
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
                    f"{session.archive.path} is not taking data "
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
        pipeline = session.pipeline
        assert pipeline is not None
        if self._pool is not None:
            while not self._pool.has_room():  # replay: wait rather than skip
                self._join_measured(wait_s=1.0)
            self._pool.submit((session, frame), frame.image,
                              pixel_size_nm=pipeline.pixel_size_nm(frame.pixel_size_nm),
                              config=self.config.analysis)
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
        if session.archive is not None:
            for table, rows in output.rows:
                self._archive.write(session.archive, functools.partial(_append_rows, table,
                                                                       rows))
        for event in output.events:
            self._announce(event)

    # -- echem side stream ------------------------------------------------------------
    def _on_echem(self, msg: Echem) -> None:
        """File a batch of echem samples under the session whose token it carries.

        Without a token a batch is filed nowhere (it cannot say whose it is); with a
        token of no open session it waits in the backlog for that session's start.
        """
        if msg.session_token is None:
            self._reject("session_token_missing", "echem without a session_token is "
                         "filed under no session.")
            return
        if msg.session_id is not None and msg.session_id in self.sessions:
            session = self._owned(msg.session_id, msg.session_token)
            if session is None:
                return
        else:
            session = next((s for s in self.sessions.values()
                            if _token_ok(msg.session_token, s.token)
                            and msg.session_id in (None, s.start.session_id)), None)
        if session is None:
            self._echem_unattached.append(msg)
            return
        session.last_activity = time.monotonic()
        self._file_echem(session, msg)

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

    # -- output ----------------------------------------------------------------------
    def _emit(self, session: _Session, alert: Alert) -> None:
        """Archive and publish an operational alert (gaps, stalls, skips)."""
        event = event_message(session.start.session_id, alert)
        if session.archive is not None:
            self._archive.write(session.archive, functools.partial(_append_rows, "events",
                                                                   event_row(event)))
        self._announce(event)

    def _announce(self, event: Event) -> None:
        log.info("Event %s at t=%.2f s (frame %d): %s", event.kind, event.t_s, event.frame,
                 event.message)
        self._send(event)

    def _archive_moved(self, session: _Session, exc: ArchiveError) -> None:
        self.counters["archive_errors"] += 1
        assert session.archive is not None
        log.error("Archive failure for session %s: %s; going on in %s.",
                  _printable(session.start.session_id), exc, session.archive.path)
        self._send(Event(session_id=session.start.session_id, kind=EventKind.ARCHIVE_ERROR.value,
                         t_s=self._last_t(session), frame=session.last_index, magnitude=0.0,
                         confidence=1.0,
                         message=f"Archive failed ({exc}); the session goes on in the "
                         f"fallback archive {session.archive.path}."))

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
        session = self.sessions[session_id] if session_id else None
        archive = session.archive if session else None
        if archive is not None and now - self._size_asked >= _SIZE_INTERVAL_S:
            self._size_asked = now
            self._archive.measure_size(archive)  # counted in the archive thread
        counters = dict(self.counters)
        counters["rejected"] = sum(self.decoder.rejected.values())
        counters.update({f"rejected_{k}": v for k, v in self.decoder.rejected.items()})
        self._send(Heartbeat(
            session_id=session_id, counters=counters,
            fps_in=self._interval_received / elapsed,
            fps_analysed=self._interval_analysed / elapsed,
            latency_p50_s=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p99_s=float(np.percentile(latencies, 99)) if latencies.size else None,
            archive_path=str(archive.path) if archive else None,
            archive_bytes=session.archive_bytes if session else None))
        self._interval_received = self._interval_analysed = 0
        self._interval_latencies.clear()
        self._last_heartbeat = now


def _append_frame(image: np.ndarray, writer: ArchiveWriter, **row: Any) -> None:
    writer.append_frame(image, **row)


def _append_rows(table: str, rows: dict[str, Any], writer: ArchiveWriter) -> None:
    writer.append_rows(table, rows)


def _accounted(session: _Session) -> int:
    """Frames of the session the worker can account for: archived here or in the part
    it continues, or counted lost (sequence gaps)."""
    return session.sent_before + session.dropped + session.accepted


def _printable(text: str) -> str:
    """Text from the wire as one log line: no line breaks or control characters to
    forge other lines with, and not longer than a line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 300 else text[:300] + "..."


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
