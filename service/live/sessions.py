"""The session table: who owns a session, opening and closing it, its archive's fate.

A session belongs to the sender whose ``session_token`` opened it; frames, the stop and
echem batches must carry that token, and what arrives without it is refused and counted
(docs/protocol.md, docs/security.md). A session is opened by ``session_start`` only, or
by a frame that continues an archive the last run left recording (the archive keeps the
token's SHA-256). Its archive is created, moved to the fallback archive after a failure,
and closed by the archive thread; ``session_closed`` is sent once that is done.

Which frame the analysis thread gets next is a matter of the session table too: a live
session's newest (the frames it replaced are skipped), else a replay's oldest (replay
frames wait in a backlog, bounded in bytes); a stopped session closes once its
waiting frames are analysed.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..alerts import Alert
from ..archive import ArchiveWriter, safe_archive_name, update_archive_meta
from ..archive.thread import SessionArchive
from ..errors import ArchiveError
from ..pipeline import SessionPipeline
from ..protocol import Echem, EventKind, Frame, SessionClosed, SessionStart, SessionStop
from .analysing import _Analysing
from .state import _printable, _Session, _token_ok, token_digest

__all__ = ["default_archive_path"]

log = logging.getLogger(__name__)

_ARCHIVE_STALL_S = 10.0
"""Frames waiting this long for the archive thread with none written raise
``archive_stalled``."""
_CLOSED_KEPT = 1024
"""Closed sessions remembered (to repeat their acknowledgement, to count late frames)."""
_THREAD_DEPTH = 2
"""Replay frames handed to the analysis thread at once (one running, one waiting)."""
_TOKEN_MIN_CHARS = 16
_TOKEN_MAX_CHARS = 256
"""Bounds of a ``session_token``: long enough not to be guessed, short enough to hash."""


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


class _Sessions(_Analysing):
    """The worker's session table (see the module docstring)."""

    archive_path_for: Callable[[SessionStart], Path]
    closed_sessions: dict[str, SessionClosed]
    _last_session_id: str | None
    _abandoned: dict[str, tuple[Path, dict[str, Any]]]
    """Archives the last run left recording, by session id (:meth:`recover_abandoned`)."""
    _unclosed: list[_Session]
    """Sessions whose archive could not be closed yet (disk full): retried."""
    _by_archive: dict[SessionArchive, _Session]
    _closing: dict[str, _Session]
    """Sessions stopped whose archive the archive thread is closing."""

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
            compression=self.config.archive.compression.value,
            compression_level=self.config.archive.compression_level)
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
        # Shutdown or idle: archived, never to be analysed (their memory is given back
        # to the budget once the archive thread has written them).
        session.backlog.clear()
        session.pending = None
        session.close_reason = reason
        if frames_sent is not None and frames_sent != _accounted(session):
            self._frames_sent_differ(session, frames_sent)
        if session.archive is None:
            self._acknowledge(session)
            return
        self._closing[session_id] = session
        self._queue_close(session, reason=reason, frames_sent=frames_sent)

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

    # -- the archive's fate -------------------------------------------------------------
    def _collect(self) -> None:
        """Count what the archive thread did; announce its failures and closings."""
        outcomes = self._archive.outcomes
        while outcomes:
            kind, archive, value = outcomes.popleft()
            session = self._by_archive.get(archive)
            if session is None:
                continue
            if kind in ("frames", "lost"):
                session.archive_queued -= value
                session.archive_progress_at = time.monotonic()
            if kind == "frames":
                session.archived += value
                self.counters["archived"] += value
            elif kind == "lost":
                session.lost += value
                self.counters["frames_lost"] += value
            elif kind == "error":
                self._archive_failed(session, value)
            elif kind == "fallback":
                self._archive_moved(session, value)
            elif kind == "size":
                session.archive_bytes = value if value is not None else session.archive_bytes
            elif kind == "closed":
                self._archive_closed(session, value)
        self._archive.maybe_raise()

    def _check_archive_progress(self, session: _Session, now: float) -> None:
        """Say so once when a session's frames wait for a disk that takes nothing (full,
        hung, a stalled network drive): a monitor must tell a slow disk from a dead
        worker, and the heartbeats go on meanwhile."""
        waited = now - session.archive_progress_at
        if not session.archive_queued or waited < _ARCHIVE_STALL_S:
            session.archive_stall_alerted = False
            return
        if session.archive_stall_alerted:
            return
        session.archive_stall_alerted = True
        assert session.archive is not None
        held = self.budget.held_bytes / 2**20
        self._emit(session, Alert(
            kind=EventKind.ARCHIVE_STALLED, t_s=session.last_t_s, frame=session.last_index,
            magnitude=waited, confidence=1.0, particle_ids=(),
            message=f"Archive writes blocked for {waited:.0f} s: the disk "
            f"{session.archive.path} is not taking data (full, hung or a stalled network "
            f"drive?). {session.archive_queued} frame(s) wait in memory ({held:.0f} MiB of "
            f"memory_budget_bytes); when it is full the publisher is held back. Nothing is "
            "lost yet."))

    # -- which frame is analysed next -------------------------------------------------
    def _analysis_ready(self) -> bool:
        if self._pool is not None and not self._pool.has_room():
            return False
        live_room, replay_room = self._live_room(), self._replay_room()
        idle = self._pool is not None or not self._frames_in_analysis
        return any((session.backlog and replay_room) or (
            live_room if session.pending is not None else
            session.stopping is not None and idle)
            for session in self.sessions.values())

    def _live_room(self) -> bool:
        """Whether a live session's newest frame can start being measured now: in this
        process when the analysis thread is free, by measuring processes when one of
        them is (a frame queued behind another would wait, while a newer one
        arrives)."""
        if self._pool is not None:
            return self._pool.has_idle()
        return self._analysis.in_thread == 0

    def _replay_room(self) -> bool:
        """Whether a replay's next frame can be handed over now: with measuring
        processes, while they have room; to the analysis thread, while at most one
        other frame waits or runs there, so that it starts the next frame as it ends
        one instead of waiting for the socket loop to publish that one's results and
        hand the next over (a quarter of its time at 1024²). While a live session
        waits, one at a time, so that its newest frame is not held behind replays."""
        if self._pool is not None:
            return self._pool.has_room()
        in_thread = self._analysis.in_thread
        return in_thread == 0 or (in_thread < _THREAD_DEPTH and not any(
            session.pending is not None for session in self.sessions.values()))

    def _analyse_pending(self) -> None:
        """Hand the analysis the next waiting frames it has room for (a live session's
        newest, see :meth:`_live_room`; a replay's oldest, see :meth:`_replay_room`);
        close sessions stopped and fully analysed."""
        for session in list(self.sessions.values()):
            if self._pool is not None and not self._pool.has_room():
                return
            if session.pending is not None:
                if not self._live_room():
                    continue  # a live session's newest is chosen when due
                frame, session.pending = session.pending, None
                self._analyse(session, frame)
            elif session.backlog:
                if not self._replay_room():
                    continue
                frame = session.backlog.popleft()
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


def _accounted(session: _Session) -> int:
    """Frames of the session the worker can account for: archived here or in the part
    it continues, or counted lost (sequence gaps)."""
    return session.sent_before + session.dropped + session.accepted
