"""What the worker's parts share: the session record, and how they publish.

:class:`_WorkerState` is the base of :class:`~.worker.Worker`: it declares the state
that the session table (:mod:`.sessions`), the analysis hand-off (:mod:`.analysing`)
and the socket loop (:mod:`.worker`) all use (counters, the open sessions, the results
socket, the archive thread) and the few ways every part reports: publish a message,
announce an event, count a refused message, say that an archive failed. Only the
worker's thread (which owns the sockets) calls them.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import logging
import math
import threading
import time
from typing import Any

import zmq

from ..alerts import Alert
from ..archive import ArchiveWriter
from ..archive.thread import ArchiveThread, SessionArchive
from ..config import ServiceConfig
from ..errors import ArchiveError
from ..pipeline import SessionPipeline, event_message, event_row
from ..protocol import Decoder, Event, EventKind, Frame, Message, SessionStart, SessionStop, encode
from .budget import MemoryBudget

__all__ = ["SkipRate", "token_digest"]

log = logging.getLogger(__name__)

_SKIP_WINDOW_S = 10.0
"""The window of :class:`SkipRate` for a live session's ``analysis_skipped`` alert."""


def token_digest(token: str) -> str:
    """SHA-256 of a session token, hex: what the archive keeps, so that after a restart
    the worker recognises the sender of an interrupted session without storing its
    secret where subscribers and archive readers see it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _token_ok(token: str | None, expected: str) -> bool:
    return token is not None and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


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
    archive_queued: int = 0
    """Frames handed to the archive thread and not yet written (or counted lost)."""
    archive_progress_at: float = dataclasses.field(default_factory=time.monotonic)
    """When the archive thread last wrote (or gave up) a frame of this session, or
    when a frame was queued for it while none was."""
    archive_stall_alerted: bool = False
    flush_asked_at: float = -math.inf
    """When the archive thread was last asked to flush this session's rows."""
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


class _WorkerState:
    """The state shared by the worker's parts, and their output (see the module
    docstring); :class:`~.worker.Worker` sets every attribute in its ``__init__``."""

    config: ServiceConfig
    decoder: Decoder
    sessions: dict[str, _Session]
    counters: dict[str, int]
    _results: zmq.Socket[Any] | None
    _results_seq: int
    _archive: ArchiveThread
    budget: MemoryBudget
    _stopping: threading.Event

    def _reject(self, reason: str, detail: str) -> None:
        """Count a message refused after decoding (``rejected_<reason>``), log once."""
        rejected = self.decoder.rejected
        if not rejected[reason]:
            log.warning("Rejected a message (%s): %s Further ones are only counted.",
                        reason, _printable(detail))
        rejected[reason] += 1

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


def _append_rows(table: str, rows: dict[str, Any], writer: ArchiveWriter) -> None:
    writer.append_rows(table, rows)


def _printable(text: str) -> str:
    """Text from the wire as one log line: no line breaks or control characters to
    forge other lines with, and not longer than a line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 300 else text[:300] + "..."
