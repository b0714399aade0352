"""The archive thread: every session archive's whole life, off the worker's socket loop.

The worker receives, dispatches and publishes; creating an archive (~0.3 s of zarr
metadata), writing frames and rows, counting an archive's size and closing it all
happen here, in one background thread, in the order the worker asked for them. So a
slow or hung disk never stops the worker's heartbeats, and a sender that opens
sessions costs the socket loop nothing but a queue entry.

Frames are written in batches: the frames of one archive that are waiting in the queue
when the thread gets to them (at most ``batch_frames``) go to
:meth:`ArchiveWriter.append_frames` in one call, whose pixel writes zarr encodes and
stores in parallel. The thread never waits for a batch to fill: a frame that arrives
while the disk is idle is written alone, at once. Row writes queued among the frames
run right after their batch. A batch that fails is written again one frame at a time,
so a failure costs the same frames as without batches. How many frames may wait is
not this thread's business: the worker holds every frame it has taken within its
memory budget (``memory_budget_bytes``) and stops reading its socket when the budget
is full.

What happened is handed back through :attr:`ArchiveThread.outcomes` for the worker's
thread, which owns the sockets, to count and announce:

* ``("opened", archive, path)``: the archive exists;
* ``("frames", archive, n)``: n more frames are on disk;
* ``("fallback", archive, ArchiveError)``: the archive failed and the session goes on
  in a fallback archive (``archive.path`` now names it; the call that failed is
  retried there);
* ``("error", archive, ArchiveError)``: the archive failed (and its fallback, or there
  is none); later writes to it are skipped;
* ``("lost", archive, n)``: n accepted frames that could not be written (after
  ``error``): counted, never silent;
* ``("size", archive, bytes)``: its size on disk, as asked for by :meth:`measure_size`;
* ``("closed", archive, ArchiveError | None)``: closed (or why not).

``inline = True`` runs every call in the caller's thread (no overlap, no batches; for
comparison and for debugging).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError, LithoscopeError
from .layout import directory_size
from .writer import ArchiveWriter

__all__ = ["ArchiveThread", "FrameRow", "Outcome", "SessionArchive"]

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
FrameRow = tuple[np.ndarray, dict[str, Any]]
"""A frame's pixels and its frame_table row, as :meth:`ArchiveWriter.append_frames` takes them."""


@dataclasses.dataclass(eq=False)
class _Job:
    archive: SessionArchive | None
    """None for a control call (run as ``call()``, e.g. :meth:`ArchiveThread.drain`)."""
    kind: str
    call: Callable[..., object]
    frames: list[FrameRow] = dataclasses.field(default_factory=list)
    """For a ``frames`` job: what ``call`` writes (jobs of one archive are merged)."""


class ArchiveThread:
    """Runs archive calls in order, in one background thread (see the module docstring)."""

    def __init__(self, *, inline: bool = False, batch_frames: int = 8, fallback: Callable[
            [SessionArchive, ArchiveError], ArchiveWriter] | None = None) -> None:
        self._fallback = fallback
        """Opens a session's fallback archive after its archive failed (once)."""
        self.batch_frames = max(batch_frames, 1)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._next: _Job | None = None
        """A job taken from the queue while gathering a batch, run next."""
        self._stop_next = False
        """stop()'s end mark was taken while gathering a batch."""
        self.outcomes: collections.deque[Outcome] = collections.deque()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name="lithoscope-archive",
                                            daemon=True)
            self._thread.start()

    # -- the worker's side ---------------------------------------------------------------
    def open(self, archive: SessionArchive, create: Callable[[], ArchiveWriter]) -> None:
        """Create the archive (``create`` makes the ArchiveWriter) before its writes."""
        self._put(_Job(archive, "open", create))

    def write(self, archive: SessionArchive, call: _Call) -> None:
        """Queue ``call(writer)`` (rows, a flush)."""
        self._put(_Job(archive, "rows", call))

    def write_frame(self, archive: SessionArchive, image: np.ndarray, row: dict[str, Any]
                    ) -> None:
        """Queue a frame and its frame_table row (see :meth:`ArchiveWriter.append_frames`).

        Never waits: the caller bounds what it hands over (the worker's memory budget);
        the image must not change until it is written (the worker's are read-only views
        of received messages).
        """
        if self._thread is not None and not self._thread.is_alive():
            raise LithoscopeError("The archive writer thread has stopped.")
        self._put(_Job(archive, "frames", _append_frames, [(image, row)]))

    def measure_size(self, archive: SessionArchive) -> None:
        """Count the archive's bytes on disk (walks every chunk file: seconds for a long
        session on a loaded machine); the count comes back as a ``size`` outcome."""
        self._put(_Job(archive, "size", lambda writer: directory_size(writer.path)))

    def close(self, archive: SessionArchive, summary: Callable[[ArchiveWriter], dict[str, Any]],
              ) -> None:
        """Close the archive with ``summary(writer)`` (computed once every earlier write
        has run, so it sees the final frame count)."""
        self._put(_Job(archive, "close", lambda writer: writer.close(**summary(writer))))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every call queued so far has run; False past the deadline."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._jobs.put(_Job(None, "control", done.set))
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
        while True:
            job: _Job | None
            if self._next is not None:
                job, self._next = self._next, None
            elif self._stop_next:
                return
            else:
                job = self._jobs.get()
            if job is None:
                return
            rows: list[_Job] = []
            if job.kind == "frames":
                self._gather(job, rows)
            self._execute(job)
            for later in rows:
                self._execute(later)
            # Let the frames go now, not when the next job comes: the worker's memory
            # budget waits for their bytes, and an idle thread must not hold them.
            job = None
            rows.clear()

    def _gather(self, job: _Job, rows: list[_Job]) -> None:
        """Merge into ``job`` the frames of the same archive queued behind it (up to
        ``batch_frames``). Row writes queued among them go to ``rows``, run right after
        the batch: measurement rows do not depend on the frames' order on disk, and
        the analysis of a live session hands rows over between most frames. The first
        other job taken is kept for next."""
        while len(job.frames) < self.batch_frames:
            try:
                following = self._jobs.get_nowait()
            except queue.Empty:
                return
            if following is None:  # stop() asked: after this batch
                self._stop_next = True
                return
            if following.kind == "rows":
                rows.append(following)
                continue
            if following.kind != "frames" or following.archive is not job.archive:
                self._next = following
                return
            job.frames.extend(following.frames)

    def _execute(self, job: _Job) -> None:
        archive, kind, frames = job.archive, job.kind, len(job.frames)
        call: Callable[..., object] = (functools.partial(job.call, job.frames)
                                       if kind == "frames" else job.call)
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
            if frames:
                self.outcomes.append(("lost", archive, frames))
            elif kind == "close":
                self.outcomes.append(("closed", archive, None))
            elif kind == "size":
                self.outcomes.append(("size", archive, None))
            return
        try:
            result = call(writer)
        except Exception as exc:
            if frames > 1:
                # Which frame did the disk refuse? One at a time, as unbatched: those
                # before it stay in this archive, it and the rest go where a single
                # frame's failure sends them (the fallback archive, or counted lost).
                for item in job.frames:
                    self._execute(_Job(archive, "frames", job.call, [item]))
                return
            if kind == "size":
                self.outcomes.append(("size", archive, None))
            elif kind == "close":
                self.outcomes.append(("closed", archive, _as_archive_error(archive, exc)))
            elif self._failed(archive, exc, (kind, call, frames)):
                return  # retried in the fallback archive
            elif frames:
                self.outcomes.append(("lost", archive, frames))
            return
        self._done(archive, kind, frames, result)

    def _done(self, archive: SessionArchive, kind: str, frames: int, result: object) -> None:
        if frames:
            self.outcomes.append(("frames", archive, frames))
        elif kind == "size":
            self.outcomes.append(("size", archive, result))
        elif kind == "close":
            self.outcomes.append(("closed", archive, None))

    def _failed(self, archive: SessionArchive, exc: Exception,
                retry: tuple[str, Callable[..., object], int] | None) -> bool:
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
                kind, call, frames = retry
                try:
                    result = call(writer)
                except Exception as again:
                    self._failed(archive, again, None)
                    return False
                self._done(archive, kind, frames, result)
                return True
        archive.failed = True
        self.outcomes.append(("error", archive, error))
        return False


def _append_frames(frames: list[FrameRow], writer: ArchiveWriter) -> int:
    return writer.append_frames(frames)


def _as_archive_error(archive: SessionArchive, exc: Exception) -> ArchiveError:
    """An ArchiveError as it is; anything else (whatever one session's data did to its
    writer) logged with its traceback and made one: it costs that archive, never the
    service."""
    if isinstance(exc, ArchiveError):
        # Kept in outcomes, logs and the session: without its traceback and context,
        # whose frames would keep the failed batch's images (and the worker's memory
        # budget) alive as long as the error is.
        exc.__traceback__ = None
        exc.__context__ = None
        return exc
    log.error("Unexpected %s writing %s: %s", type(exc).__name__, archive.path, exc,
              exc_info=exc)
    error = ArchiveError(f"unexpected {type(exc).__name__} while writing {archive.path}: "
                         f"{exc}")
    error.__context__ = None
    return error
