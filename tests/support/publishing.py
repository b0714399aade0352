"""Publishing from a background thread, for tests that do something else meanwhile
(kill the worker, stall its disk) and then collect the publisher's report."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from lithoscope.service.publisher import Publisher, PublishReport
from lithoscope.service.sources import Source

from .arrays import ArraySource


def publish_in_thread(frames_endpoint: str, results_endpoint: str,
                      frames: np.ndarray | Source, *,
                      fps: float = 20.0, ack_timeout_s: float = 90.0,
                      publisher_options: dict[str, Any] | None = None,
                      **publish_options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Publish ``frames`` (an array at ``fps``, or a source such as the simulator) from a
    thread; ``out['report']`` (or ``out['error']``) once it returns. ``publish_options``
    go to :meth:`Publisher.publish`."""
    out: dict[str, Any] = {}
    source = ArraySource(frames, fps=fps) if isinstance(frames, np.ndarray) else frames

    def run() -> None:
        try:
            with Publisher(frames_endpoint, results_endpoint=results_endpoint,
                           ack_timeout_s=ack_timeout_s, **(publisher_options or {})) as pub:
                out["report"] = pub.publish(source, **publish_options)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: dict[str, Any], timeout_s: float) -> PublishReport:
    """The report of :func:`publish_in_thread`'s publisher, or the error it raised."""
    thread.join(timeout_s)
    assert not thread.is_alive(), "the publisher did not finish"
    if "error" in out:
        raise out["error"]
    report: PublishReport = out["report"]
    return report
