"""Run one session through the real path inside one process: worker thread + publisher.

Used by ``lithoscope demo`` and by ``lithoscope replay`` when no service is named.
The frames still cross real ZeroMQ sockets on loopback (ports picked by the OS), so
what is tested here is what runs beside the microscope.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import ServiceConfig
from ..protocol import Message
from ..publisher import EchemPublisher, Publisher, PublishReport, new_session_token
from ..sources.base import Source, SourceFrame
from ..sources.echem import EchemSourceBase
from .worker import Worker, WorkerThread

__all__ = ["run_local_session"]


def run_local_session(
    source: Source,
    *,
    config: ServiceConfig | None = None,
    archive_path: str | Path | None = None,
    speed: float | None = None,
    live: bool | None = None,
    fps: float | None = None,
    pixel_size_nm: float | None = None,
    on_message: Callable[[Message], None] | None = None,
    on_frame: Callable[[SourceFrame], None] | None = None,
    stop: threading.Event | None = None,
    ack_timeout_s: float = 120.0,
    echem: EchemSourceBase | None = None,
) -> PublishReport:
    """Start a worker, publish ``source`` to it, wait until its archive is closed.

    ``archive_path`` fixes where the session is archived (replay's ``--archive``);
    otherwise it goes under ``config.sessions_dir``. ``echem`` is published beside the
    frames at the same ``speed``, from a thread, as ``lithoscope publish-echem`` would.
    """
    config = (config or ServiceConfig()).replace(
        frames_endpoint="tcp://127.0.0.1:*", results_endpoint="tcp://127.0.0.1:*")
    path = Path(archive_path) if archive_path is not None else None
    worker = Worker(config, archive_path_for=(lambda _start: path) if path else None)
    token = new_session_token()  # shared by the frames and the echem side stream
    with WorkerThread(worker) as thread:
        assert worker.frames_endpoint
        assert worker.results_endpoint
        side = _EchemThread(worker.frames_endpoint, echem, speed, token) if echem else None
        try:
            with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                           on_message=on_message, ack_timeout_s=ack_timeout_s) as publisher:
                report = publisher.publish(source, speed=speed, live=live, fps=fps,
                                           pixel_size_nm=pixel_size_nm, stop=stop,
                                           on_frame=on_frame, session_token=token)
        finally:
            if side is not None:
                side.stop()
        if report.closed is None:
            # The acknowledgement travels over PUB/SUB and can in principle be missed;
            # in-process we can ask the worker directly.
            deadline = time.monotonic() + ack_timeout_s
            while report.session_id not in worker.closed_sessions:
                thread.maybe_raise()
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            closed = worker.closed_sessions.get(report.session_id)
            report = dataclasses.replace(report, closed=closed)
    return report


class _EchemThread:
    """An echem side stream published from a thread; ``stop()`` ends it with a deadline
    and re-raises what it died of."""

    def __init__(self, endpoint: str, source: EchemSourceBase, speed: float | None,
                 token: str) -> None:
        self.source = source
        self._token = token
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._publisher = EchemPublisher(endpoint, ack_timeout_s=2.0)
        self._thread = threading.Thread(target=self._run, args=(speed,),
                                        name="lithoscope-echem", daemon=True)
        self._thread.start()

    def _run(self, speed: float | None) -> None:
        try:
            self._publisher.publish_echem(self.source, speed=speed, stop=self._stop,
                                          session_token=self._token)
        except BaseException as exc:  # handed to the owner in stop()
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.source.close()
        self._thread.join(timeout)
        self._publisher.close(linger_s=1.0)
        if self._error is not None:
            raise self._error
