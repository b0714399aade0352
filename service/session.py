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

from .config import ServiceConfig
from .protocol import Message
from .publisher import Publisher, PublishReport
from .sources.base import Source, SourceFrame
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
) -> PublishReport:
    """Start a worker, publish ``source`` to it, wait until its archive is closed.

    ``archive_path`` fixes where the session is archived (replay's ``--archive``);
    otherwise it goes under ``config.sessions_dir``.
    """
    config = (config or ServiceConfig()).replace(
        frames_endpoint="tcp://127.0.0.1:*", results_endpoint="tcp://127.0.0.1:*")
    path = Path(archive_path) if archive_path is not None else None
    worker = Worker(config, archive_path_for=(lambda _start: path) if path else None)
    with WorkerThread(worker) as thread:
        assert worker.frames_endpoint
        assert worker.results_endpoint
        with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                       on_message=on_message, ack_timeout_s=ack_timeout_s) as publisher:
            report = publisher.publish(source, speed=speed, live=live, fps=fps,
                                       pixel_size_nm=pixel_size_nm, stop=stop,
                                       on_frame=on_frame)
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
