"""The demo's display: the live monitor on a terminal, alert lines otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._common import console

__all__ = ["demo_display"]


@contextlib.contextmanager
def demo_display(monitor: bool, fallback: Any) -> Iterator[tuple[Any, Any]]:
    """The live monitor on a terminal; line-by-line alerts when piped or asked to.

    Yields the results-stream callback and the per-frame one: the demo sees the
    camera's frames too, so the monitor can show the bias they carry.
    """
    if not (monitor and console.is_terminal):
        yield fallback, None
        return
    from lithoscope.clients.monitor import MonitorState, live_monitor
    from lithoscope.clients.subscriber import ConnectionState

    state = MonitorState(endpoint="the demo's own worker", connection=ConnectionState.CONNECTED)

    def on_frame(frame: Any) -> None:
        with state.lock:
            state.note_frame_metadata(frame.metadata)

    with live_monitor(state, console=console) as feed:
        yield feed, on_frame
