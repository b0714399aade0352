"""The camera-frame publisher: one source's frames onto ZeroMQ, in order, none lost.

Frames go out on a PUSH socket connected to the worker's PULL. PUSH never drops:
when the worker's queue and ours are full (the high-water marks), sending waits, so a
replay at ``--speed max`` runs exactly as fast as the worker takes frames. The wait is
a poll with a short timeout so Ctrl-C and deadlines still work.

The end of a session is acknowledged: after ``session_stop`` the publisher waits on
the worker's results stream for ``session_closed`` naming its session, which the
worker sends only once the archive is flushed and closed. That, not socket linger, is
what tells replay that every frame is on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from .errors import LithoscopeError, SourceError
from .protocol import (
    Echem,
    Frame,
    Message,
    SessionClosed,
    SessionStart,
    SessionStop,
    decode,
    encode,
)
from .security import ClientCurve
from .sources.base import Source, SourceFrame

if TYPE_CHECKING:
    from .sources.echem import EchemSourceBase

__all__ = ["SESSION_TOKEN_ENV", "EchemPublisher", "EchemReport", "PublishReport", "Publisher",
           "new_session_id", "new_session_token"]

log = logging.getLogger(__name__)


SESSION_TOKEN_ENV = "LITHOSCOPE_SESSION_TOKEN"
"""Environment variable holding a session token to use instead of a fresh one: set it
for both ``lithoscope publish`` and ``lithoscope publish-echem`` so that the worker
files the echem stream into the camera's session."""


def new_session_token() -> str:
    """The secret a session belongs to (``session_token``): the caller's own, from
    ``LITHOSCOPE_SESSION_TOKEN``, else a fresh ``secrets.token_urlsafe(24)``."""
    return os.environ.get(SESSION_TOKEN_ENV) or secrets.token_urlsafe(24)


def new_session_id(kind: str) -> str:
    """Sortable, unique, readable in a folder listing: ``20261125-143012-sim-3fa9c1``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"


_STOP_REPEAT_S = 3.0
"""How often ``session_stop`` is repeated while its acknowledgement is awaited."""


@dataclass(frozen=True)
class PublishReport:
    """What happened to one published session."""

    session_id: str
    frames_sent: int
    wall_s: float
    late_frames: int
    """Frames sent more than one frame interval after their due time (pacing fell behind)."""
    interrupted: bool
    closed: SessionClosed | None
    """The worker's acknowledgement, when a results endpoint was given and it arrived."""


class Publisher:
    """Publishes sources to a worker.

    Parameters
    ----------
    endpoint
        The worker's frames endpoint (we connect; the worker binds).
    results_endpoint
        The worker's results endpoint, to receive the end-of-session acknowledgement.
        Without it, closing waits for ZeroMQ to deliver (``linger``) instead.
    sndhwm
        Frames we queue locally before a send waits.
    ack_timeout_s
        How long to wait for the worker to acknowledge the end of a session.
    on_message
        Called with every results-stream message (events, results, heartbeats) that
        arrives while publishing; subscribes to the whole stream when given.
    curve
        This client's keys and the service's public key, for a service that requires
        CURVE (see :mod:`lithoscope.service.security`).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        results_endpoint: str | None = None,
        context: zmq.Context[Any] | None = None,
        sndhwm: int = 16,
        ack_timeout_s: float = 120.0,
        on_message: Callable[[Message], None] | None = None,
        curve: ClientCurve | None = None,
    ) -> None:
        self._own_context = context is None
        self.context: zmq.Context[Any] = context or zmq.Context()
        self.endpoint = endpoint
        self.results_endpoint = results_endpoint
        self.ack_timeout_s = ack_timeout_s
        self.on_message = on_message
        self._seq = 0
        self._push = self.context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, sndhwm)
        if curve is not None:
            curve.apply(self._push)
        self._push.connect(endpoint)
        self._sub: zmq.Socket[Any] | None = None
        if results_endpoint is not None:
            self._sub = self.context.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"" if on_message else b"session_closed")
            if curve is not None:
                curve.apply(self._sub)
            self._sub.connect(results_endpoint)

    def close(self, *, linger_s: float | None = None) -> None:
        """Close the sockets, waiting up to ``linger_s`` (default ``ack_timeout_s``) for
        queued frames to leave."""
        if self._push.closed:
            return
        linger_ms = int(1000 * (self.ack_timeout_s if linger_s is None else linger_s))
        self._push.close(linger=linger_ms)
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------
    def _send(self, msg: Message, stop: threading.Event | None,
              deadline: float | None = None) -> bool:
        """Send, waiting as long as the worker needs; False if ``stop`` was set or the
        ``deadline`` (monotonic) passed first."""
        self._seq += 1
        stamped = dataclasses.replace(msg, seq=self._seq, sent_at=time.time())
        parts = encode(stamped)
        waited = 0.0
        while not self._push.poll(200, zmq.POLLOUT):
            if (stop is not None and stop.is_set()) or (
                    deadline is not None and time.monotonic() > deadline):
                self._seq -= 1
                return False
            waited += 0.2
            if waited in (5.0, 30.0) or (waited > 30 and waited % 60 < 0.2):
                log.warning("Waiting for the worker at %s to take frames (%.0f s).",
                            self.endpoint, waited)
        self._push.send_multipart(parts, copy=False)
        return True

    def publish(
        self,
        source: Source,
        *,
        speed: float | None = 1.0,
        live: bool | None = None,
        session_id: str | None = None,
        archive_name: str | None = None,
        fps: float | None = None,
        pixel_size_nm: float | None = None,
        max_frames: int | None = None,
        stop: threading.Event | None = None,
        on_frame: Callable[[SourceFrame], None] | None = None,
        session_token: str | None = None,
    ) -> PublishReport:
        """Send ``session_start``, every frame of ``source``, then ``session_stop``.

        Parameters
        ----------
        speed
            Pace at this multiple of the source's own clock (``t_s``); ``None`` sends
            as fast as the worker takes frames.
        live
            Tell the worker it may skip analysis to keep up (default: the source's own
            ``info.live``; replay passes False).
        fps, pixel_size_nm
            Override or fill in what the source does not know. Without
            ``pixel_size_nm``, a frame whose metadata carries its own ``pixel_size_nm``
            (a frame file's calibration, in a folder or a watched folder) is sent with
            it; with it, every frame is sent with the value given.
        session_token
            The session's secret (default :func:`new_session_token`); every message of
            the session carries it, and the worker takes none without it.
        """
        info = source.info
        if speed is not None and not speed > 0:
            raise LithoscopeError(f"Expected a speed > 0 or None (max). Got {speed!r}.")
        session_id = session_id or new_session_id(info.kind)
        token = session_token or new_session_token()
        pixel_size = pixel_size_nm if pixel_size_nm is not None else info.pixel_size_nm
        frame_rate = fps if fps is not None else info.fps
        t0_unix = time.time()
        start = SessionStart(
            session_id=session_id, source=info.name, source_kind=info.kind, t0_unix=t0_unix,
            live=info.live if live is None else live, pixel_size_nm=pixel_size, fps=frame_rate,
            shape=list(info.shape) if info.shape else None, dtype=info.dtype,
            frame_count=info.frame_count, archive_name=archive_name,
            metadata=dict(info.metadata), session_token=token)
        sent = late = 0
        interrupted = not self._send(start, stop)
        wall0 = time.monotonic()
        t_first: float | None = None
        interval = 1.0 / frame_rate if frame_rate else 0.0
        try:
            for item in ([] if interrupted else source):
                if stop is not None and stop.is_set():
                    interrupted = True
                    break
                # With --fps, time comes from the rate, whatever the file says.
                t_s = item.index / fps if fps else item.t_s
                if t_first is None:
                    t_first = t_s
                if speed is not None:
                    due = wall0 + (t_s - t_first) / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        if stop is not None:
                            stop.wait(delay)
                        else:
                            time.sleep(delay)
                    elif -delay > max(interval / speed, 0.05):
                        late += 1
                image = item.image
                msg = Frame(session_id=session_id, index=item.index, t_s=t_s,
                            acquired_at=time.time(), shape=list(image.shape),
                            dtype=image.dtype.name,
                            # A frame file's own calibration (folders, watch), unless
                            # the caller gave one for every frame.
                            pixel_size_nm=pixel_size if pixel_size_nm is not None
                            else item.metadata.get("pixel_size_nm", pixel_size),
                            exposure_s=item.metadata.get("exposure_s"),
                            metadata={k: v for k, v in item.metadata.items()
                                      if k not in ("exposure_s", "pixel_size_nm")},
                            truth=dict(item.truth) if item.truth is not None else None,
                            session_token=token, image=image)
                if not self._send(msg, stop):
                    interrupted = True
                    break
                sent += 1
                self._poll_results(session_id, 0)
                if on_frame is not None:
                    on_frame(item)
                if max_frames is not None and sent >= max_frames:
                    break
        except SourceError:
            # Every frame before the bad one is already sent: close the session
            # properly so the archive is complete up to there, then report the error.
            self._finish(session_id, token, sent, "error", None)
            raise
        reason = "interrupted" if interrupted else "end_of_source"
        closed = self._finish(session_id, token, sent, reason, None)
        return PublishReport(session_id=session_id, frames_sent=sent,
                             wall_s=time.monotonic() - wall0, late_frames=late,
                             interrupted=interrupted, closed=closed)

    def _poll_results(self, session_id: str, timeout_ms: int) -> SessionClosed | None:
        """Hand waiting results messages to ``on_message``; return our session's ack."""
        if self._sub is None:
            return None
        while self._sub.poll(timeout_ms):
            timeout_ms = 0
            try:
                msg = decode(self._sub.recv_multipart(copy=False))
            except ValueError:
                continue
            if self.on_message is not None:
                self.on_message(msg)
            if isinstance(msg, SessionClosed) and msg.session_id == session_id:
                return msg
        return None

    def _finish(self, session_id: str, token: str, sent: int, reason: str,
                stop: threading.Event | None) -> SessionClosed | None:
        # Not interruptible by ``stop``: after Ctrl-C the worker must still hear that the
        # session ended, so it closes the archive as interrupted rather than waiting.
        if not self._send(SessionStop(session_id=session_id, frames_sent=sent, reason=reason,
                                      session_token=token),
                          None, deadline=time.monotonic() + self.ack_timeout_s):
            log.warning("Could not tell the worker at %s that session %s ended.",
                        self.endpoint, session_id)
            return None
        if self._sub is None:
            return None
        deadline = time.monotonic() + self.ack_timeout_s
        repeat_at = time.monotonic() + _STOP_REPEAT_S
        while (remaining := deadline - time.monotonic()) > 0:
            closed = self._poll_results(session_id, int(min(remaining, 0.5) * 1000))
            if closed is not None:
                return closed
            if time.monotonic() >= repeat_at:
                # PUB/SUB drops what is published while a subscriber reconnects (a
                # restarted worker): ask again; the worker repeats its acknowledgement.
                repeat_at = time.monotonic() + _STOP_REPEAT_S
                self._send(SessionStop(session_id=session_id, frames_sent=sent, reason=reason,
                                      session_token=token),
                           None, deadline=deadline)
        log.warning("The worker did not confirm the end of session %s within %.0f s.",
                    session_id, self.ack_timeout_s)
        return None


@dataclass(frozen=True)
class EchemReport:
    """What one ``publish-echem`` run sent."""

    source: str
    batches: int
    samples: int
    interrupted: bool


class EchemPublisher(Publisher):
    """Publishes an electrochemistry side stream (bias, current) to a worker.

    Same socket as the camera's publisher (PUSH to the frames endpoint, never dropping),
    its own stream and ``seq``. The worker files the samples under ``session_id``, or
    under whichever session it has open: the potentiostat knows nothing of camera
    sessions, and usually starts before the first one (the worker keeps a backlog).
    """

    def __enter__(self) -> EchemPublisher:
        return self

    def publish_echem(
        self,
        source: EchemSourceBase,
        *,
        speed: float | None = 1.0,
        clock_offset_s: float = 0.0,
        session_id: str | None = None,
        session_token: str | None = None,
        stop: threading.Event | None = None,
    ) -> EchemReport:
        """Send every batch ``source`` yields until it ends or ``stop`` is set.

        ``speed`` paces a simulated source (``source.paced``) at that multiple of its
        own clock; tailers of real logs are paced by the instrument writing them.
        ``session_token`` (default: ``LITHOSCOPE_SESSION_TOKEN``) is the token of the
        camera session the samples belong to; the worker files no batch without one.
        """
        token = session_token or os.environ.get(SESSION_TOKEN_ENV)
        if token is None:
            log.warning("No session token (%s): the worker will file these echem "
                        "samples under no session.", SESSION_TOKEN_ENV)
        batches = samples = 0
        interrupted = False
        wall0 = time.monotonic()
        t_first: float | None = None
        for batch in source:
            if stop is not None and stop.is_set():
                interrupted = True
                break
            if not len(batch):
                continue
            if source.paced and speed is not None:
                t_last = float(batch.t_unix[-1])
                t_first = float(batch.t_unix[0]) if t_first is None else t_first
                delay = wall0 + (t_last - t_first) / speed - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        if stop.wait(delay):
                            interrupted = True
                            break
                    else:
                        time.sleep(delay)
            msg = Echem(source=source.name, t_unix=batch.t_unix.tolist(),
                        bias_v=_nullable(batch.bias_v), current_a=_nullable(batch.current_a),
                        clock_offset_s=clock_offset_s, session_id=session_id,
                        session_token=token)
            if not self._send(msg, stop):
                interrupted = True
                break
            batches += 1
            samples += len(batch)
        return EchemReport(source=source.name, batches=batches, samples=samples,
                           interrupted=interrupted)


def _nullable(values: Any) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]
