"""The archive thread: every session archive's whole life, off the worker's socket loop.

The worker receives, dispatches and publishes; creating an archive (~0.3 s of zarr
metadata), writing frames and rows, counting an archive's size and closing it all
happen here, in one background thread, in the order the worker asked for them. So a
slow or hung disk never stops the worker's heartbeats, and a sender that opens
sessions costs the socket loop nothing but a queue entry.

At most ``max_frames`` frames wait: beyond that :meth:`ArchiveThread.write` blocks
(the worker then stops reading its socket, and ZeroMQ makes the publisher wait). What
happened is handed back through :attr:`ArchiveThread.outcomes` for the worker's
thread, which owns the sockets, to count and announce:

* ``("opened", archive, path)``: the archive exists;
* ``("frame", archive, None)``: a frame is on disk;
* ``("fallback", archive, ArchiveError)``: the archive failed and the session goes on
  in a fallback archive (``archive.path`` now names it; the call that failed is
  retried there);
* ``("error", archive, ArchiveError)``: the archive failed (and its fallback, or there
  is none); later writes to it are skipped;
* ``("lost", archive, None)``: an accepted frame that could not be written (after
  ``error``): counted, never silent;
* ``("size", archive, bytes)``: its size on disk, as asked for by :meth:`measure_size`;
* ``("closed", archive, ArchiveError | None)``: closed (or why not).

``max_frames = 0`` runs every call inline, in the caller's thread (no overlap; for
comparison and for debugging).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ArchiveError, LithoscopeError
from .layout import directory_size
from .writer import ArchiveWriter

__all__ = ["ArchiveThread", "Outcome", "SessionArchive"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class SessionArchive:
    """One session's archive. ``writer`` and ``failed`` belong to the archive thread."""

    session_id: str
    path: Path
    """Where the archive is written."""
    writer: ArchiveWriter | None = None
    failed: bool = False
    """Set at the first failed write: the thread skips the rest of this archive's calls."""
    first_path: Path | None = None
    """Where the session's archive began, once it has moved to a fallback archive."""
    frames_before: int = 0
    """Frames in the archive this one took over from (0 unless a fallback)."""


Outcome = tuple[str, SessionArchive, Any]
_Call = Callable[[ArchiveWriter], object]
_Job = tuple[SessionArchive | None, str, Callable[..., object], bool]


class ArchiveThread:
    """Runs archive calls in order, in one background thread (see the module docstring)."""

    def __init__(self, max_frames: int, *, fallback: Callable[
            [SessionArchive, ArchiveError], ArchiveWriter] | None = None) -> None:
        self._fallback = fallback
        """Opens a session's fallback archive after its archive failed (once)."""
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(max(max_frames, 1))
        self.outcomes: collections.deque[Outcome] = collections.deque()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if max_frames > 0:
            self._thread = threading.Thread(target=self._run, name="lithoscope-archive",
                                            daemon=True)
            self._thread.start()

    # -- the worker's side ---------------------------------------------------------------
    def open(self, archive: SessionArchive, create: Callable[[], ArchiveWriter]) -> None:
        """Create the archive (``create`` makes the ArchiveWriter) before its writes."""
        self._put((archive, "open", create, False))

    def write(self, archive: SessionArchive, call: _Call, *, frame: bool = False,
              timeout_s: float | None = None) -> bool:
        """Queue ``call(writer)``. A frame needs room in the queue: wait for it up to
        ``timeout_s`` (None: as long as it takes); False if there was none by then."""
        if frame and self._thread is not None and not self._slots.acquire(blocking=False):
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not self._slots.acquire(timeout=1.0 if deadline is None else
                                          max(0.0, min(1.0, deadline - time.monotonic()))):
                if not self._thread.is_alive():
                    raise LithoscopeError("The archive writer thread has stopped.")
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        self._put((archive, "frame" if frame else "rows", call, frame))
        return True

    def measure_size(self, archive: SessionArchive) -> None:
        """Count the archive's bytes on disk (walks every chunk file: seconds for a long
        session on a loaded machine); the count comes back as a ``size`` outcome."""
        self._put((archive, "size", lambda writer: directory_size(writer.path), False))

    def close(self, archive: SessionArchive, summary: Callable[[ArchiveWriter], dict[str, Any]],
              ) -> None:
        """Close the archive with ``summary(writer)`` (computed once every earlier write
        has run, so it sees the final frame count)."""
        self._put((archive, "close", lambda writer: writer.close(**summary(writer)), False))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every call queued so far has run; False past the deadline."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._jobs.put((None, "control", done.set, False))
        return done.wait(timeout_s)

    def maybe_raise(self) -> None:
        """Re-raise, in the caller's thread, a bug that happened in the archive thread."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def stop(self, timeout_s: float) -> bool:
        """Let the queued calls run and end the thread; False if it is still busy past
        ``timeout_s`` (a hung disk: the daemon thread is left behind)."""
        if self._thread is None or not self._thread.is_alive():
            return True
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the thread's side ---------------------------------------------------------------
    def _put(self, job: _Job) -> None:
        if self._thread is None:
            self._execute(job)
        else:
            self._jobs.put(job)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._execute(job)
            finally:
                if job[3]:
                    self._slots.release()

    def _execute(self, job: _Job) -> None:
        archive, kind, call, frame = job
        if archive is None:
            try:
                call()
            except BaseException as exc:  # a bug: handed to the worker in maybe_raise()
                self._error = exc
            return
        if kind == "open":
            try:
                archive.writer = call()  # type: ignore[assignment]
            except Exception as exc:
                self._failed(archive, exc, None)
            else:
                self.outcomes.append(("opened", archive, archive.path))
            return
        writer = archive.writer
        # A failed archive takes no more data, but is still closed: its metadata then
        # says how the session ended and why writing stopped.
        if writer is None or (archive.failed and kind != "close"):
            if frame:
                self.outcomes.append(("lost", archive, None))
            elif kind == "close":
                self.outcomes.append(("closed", archive, None))
            elif kind == "size":
                self.outcomes.append(("size", archive, None))
            return
        try:
            result = call(writer)
        except Exception as exc:
            if kind == "size":
                self.outcomes.append(("size", archive, None))
            elif kind == "close":
                self.outcomes.append(("closed", archive, _as_archive_error(archive, exc)))
            elif self._failed(archive, exc, (kind, call, frame)):
                return  # retried in the fallback archive
            elif frame:
                self.outcomes.append(("lost", archive, None))
            return
        self._done(archive, kind, frame, result)

    def _done(self, archive: SessionArchive, kind: str, frame: bool, result: object) -> None:
        if frame:
            self.outcomes.append(("frame", archive, None))
        elif kind == "size":
            self.outcomes.append(("size", archive, result))
        elif kind == "close":
            self.outcomes.append(("closed", archive, None))

    def _failed(self, archive: SessionArchive, exc: Exception,
                retry: tuple[str, Callable[..., object], bool] | None) -> bool:
        """An archive failed: move the session to its fallback archive and retry the
        call there (True), or, with no fallback or a second failure, give up (False)."""
        error = _as_archive_error(archive, exc)
        if self._fallback is not None and archive.first_path is None:
            old = archive.writer
            try:
                writer = self._fallback(archive, error)
            except Exception as fallback_exc:  # the fallback disk fails too: give up
                log.warning("Fallback archive for %s failed too: %s", archive.path,
                            _as_archive_error(archive, fallback_exc))
            else:
                archive.first_path, archive.path = archive.path, writer.path
                archive.writer = writer
                archive.frames_before = old.frame_count if old is not None else 0
                self.outcomes.append(("fallback", archive, error))
                if old is not None:
                    try:  # best effort: a full disk may refuse this too (recovery will do)
                        old.close(status="interrupted", stop_reason="archive_error",
                                  archive_error=str(error), continued_in=str(writer.path))
                    except Exception:  # noqa: BLE001 - already reported as the failure
                        log.debug("Could not close the failed archive %s.", archive.first_path)
                if retry is None:
                    self.outcomes.append(("opened", archive, archive.path))
                    return True
                kind, call, frame = retry
                try:
                    result = call(writer)
                except Exception as again:
                    self._failed(archive, again, None)
                    return False
                self._done(archive, kind, frame, result)
                return True
        archive.failed = True
        self.outcomes.append(("error", archive, error))
        return False


def _as_archive_error(archive: SessionArchive, exc: Exception) -> ArchiveError:
    """An ArchiveError as it is; anything else (whatever one session's data did to its
    writer) logged with its traceback and made one: it costs that archive, never the
    service."""
    if isinstance(exc, ArchiveError):
        return exc
    log.error("Unexpected %s writing %s: %s", type(exc).__name__, archive.path, exc,
              exc_info=exc)
    return ArchiveError(f"unexpected {type(exc).__name__} while writing {archive.path}: {exc}")
