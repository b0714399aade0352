"""Frames per second of ``lithoscope view`` following a service (issue 16).

    .venv/bin/python bench/viewer_fps.py [--speed 4] [--seconds 60] [--screenshot PATH]

Starts ``lithoscope serve`` (its own ports, a temporary sessions folder) and
``lithoscope publish sim --speed S`` into it, as a user would, and follows the service
with the viewer in this process (napari, the ``[view]`` extra; under an Xvfb started
here when there is no display). Counts, over the run:

* results the viewer received, and the redraws it made of them, per second (a redraw
  takes every result that arrived since the last one and draws the newest);
* previews it drew (the frame image), per second (the service sends at most 2 a second);
* the time the viewer's redraw of one result takes (median, 95th percentile);

and, as the reference measured in the same run, the frames per second the service
analysed (its heartbeats' ``fps_analysed``). On a shared machine the figures move with
the load: compare the viewer's rate with the service's, not across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _display() -> subprocess.Popen[bytes] | None:
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("No display and no Xvfb (apt-get install xvfb).")
    read, write = os.pipe()
    process = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0",
                                "1600x1000x24", "-nolisten", "tcp", "-terminate"],
                               pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as numbers:
        os.environ["DISPLAY"] = ":" + numbers.readline().strip()
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", default="4")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long to follow (the demo session lasts 120 s / speed)")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a screenshot of the viewer's window at the end")
    args = parser.parse_args()
    _display()
    from qtpy.QtWidgets import QApplication

    from lithoscope.clients.viewer import LiveView, follow_service
    from lithoscope.service.protocol import Heartbeat

    frames_ep = f"tcp://127.0.0.1:{_free_port()}"
    results_ep = f"tcp://127.0.0.1:{_free_port()}"
    sessions = tempfile.mkdtemp(prefix="lithoscope-viewer-bench-")
    serve = subprocess.Popen([*LITHOSCOPE, "serve", "--frames", frames_ep, "--results",
                              results_ep, "--sessions", sessions],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    publish: subprocess.Popen[bytes] | None = None
    try:
        views: list[LiveView] = []
        view = follow_service(results_ep, show=True, run=False, on_view=views.append)
        view.viewer.window._qt_window.resize(1500, 950)
        redraws: list[float] = []
        apply = view.apply

        def timed(changed: set[str]) -> None:
            start = time.perf_counter()
            apply(changed)
            if "outlines" in changed:
                redraws.append(time.perf_counter() - start)

        view.apply = timed  # type: ignore[method-assign]
        service_fps: list[float] = []
        take = view.state.update

        def noting(msg: Any) -> set[str]:
            if isinstance(msg, Heartbeat) and msg.fps_analysed:
                service_fps.append(msg.fps_analysed)
            return take(msg)

        view.state.update = noting  # type: ignore[method-assign]
        while not view.state.connected:
            QApplication.processEvents()
            time.sleep(0.01)
        publish = subprocess.Popen([*LITHOSCOPE, "publish", "sim", "--connect", frames_ep,
                                    "--results", results_ep, "--speed", args.speed],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while view.state.results == 0:  # the session's first result
            QApplication.processEvents()
            time.sleep(0.005)
        results0, previews0 = view.state.results, view.frames_shown
        redraws.clear()
        start = time.monotonic()
        while time.monotonic() - start < args.seconds and publish.poll() is None:
            QApplication.processEvents()
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        results, previews = view.state.results - results0, view.frames_shown - previews0
        if args.screenshot is not None:
            image = view.viewer.screenshot(canvas_only=False, flash=False)
            import cv2

            cv2.imwrite(str(args.screenshot), cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR))
        ms = np.asarray(redraws) * 1000
        print(f"followed {elapsed:.1f} s of `publish sim --speed {args.speed}`")
        print(f"service analysed (heartbeats, median): "
              f"{np.median(service_fps) if service_fps else float('nan'):.2f} frames/s")
        print(f"viewer received results: {results / elapsed:.2f} /s ({results} in all)")
        print(f"viewer redrew outlines:  {len(redraws) / elapsed:.2f} /s ({len(redraws)} in all)")
        print(f"viewer drew previews:    {previews / elapsed:.2f} /s ({previews} in all)")
        if ms.size:
            print(f"redraw of one result: median {np.median(ms):.1f} ms, "
                  f"p95 {np.percentile(ms, 95):.1f} ms")
        view.timer.stop()  # type: ignore[attr-defined]
        view.subscriber.close()  # type: ignore[attr-defined]
        view.viewer.close()
    finally:
        for process in (publish, serve):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(sessions, ignore_errors=True)


if __name__ == "__main__":
    main()
