"""lithoscope view: the state it keeps (no display needed), and napari for real under a
virtual display (Xvfb), checked on screenshots of the canvas."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lithoscope.clients.viewer import ViewState
from lithoscope.service.protocol import Event, Preview, Result, SessionStart
from lithoscope.service.schema import label_colour

# napari's own imports and Qt's start-up warn about their dependencies' deprecations
# (pydantic v1-style models, ...): not ours to fix, and not a failure of the viewer.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
"""Where the tests leave their screenshots (README's images are taken from here)."""


def _result(index: int, tracks: dict[int, list[list[int]]], area: float) -> Result:
    return Result(session_id="s", index=index, t_s=index * 0.5, latency_s=0.1,
                  cluster={"area_px": area, "area_nm2": None},
                  particles={"track_id": list(tracks)},
                  outlines=[{"track_id": t, "points": p} for t, p in tracks.items()],
                  regions=[{"region": "needle", "points": [[0, 0], [0, 9], [9, 9]]}])


def test_the_state_follows_results_previews_and_events() -> None:
    state = ViewState()
    assert state.update(SessionStart(session_id="s", source="sim", source_kind="sim",
                                     t0_unix=0.0, live=True)) >= {"session"}
    square = [[10, 10], [10, 20], [20, 20], [20, 10]]
    assert "outlines" in state.update(_result(3, {7: square, 9: [[1, 1], [2, 2]]}, 120.0))
    shapes, ids = state.polygons()
    assert ids == [7]  # a two-point "polygon" is not drawn
    assert shapes[0].tolist() == square
    assert len(state.region_polygons("needle")) == 1
    assert state.region_polygons("grid") == []
    assert list(state.area) == [120.0]
    assert state.area_unit == "px"
    image = np.zeros((4, 5), np.uint8)
    assert state.update(Preview(session_id="s", index=3, t_s=1.5, shape=[4, 5],
                                frame_shape=[16, 20], scale=4.0, display_range=[0, 1],
                                image=image)) == {"frame"}
    assert state.scale == 4.0
    assert state.frame_shape == (16, 20)
    state.update(Event(session_id="s", kind="contact_made", t_s=1.5, frame=3))
    assert [e.kind for e in state.events] == ["contact_made"]
    # A new session starts the plot and the list afresh.
    state.update(Result(session_id="t", index=0, t_s=0.0, latency_s=0.0,
                        cluster={"area_px": 5.0}, particles={}))
    assert state.session_id == "t"
    assert list(state.area) == [5.0]
    assert not state.events


# -- under a virtual display ---------------------------------------------------------

_XVFB: list[subprocess.Popen[bytes]] = []
"""The Xvfb started for this run, kept until the process ends (see :func:`display`)."""


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """A display for Qt: the one there is, else an Xvfb started here.

    Qt ends the process when its display goes away, and its application lives as long as
    the process: so Xvfb runs with ``-terminate`` (it exits once its last client, this
    process, has gone) and is only stopped here if Qt never connected to it.
    """
    pytest.importorskip("napari", reason="napari is the [view] extra")
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no display and no Xvfb to make one (.ci/run installs it with apt-get)")
    read, write = os.pipe()
    process = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0",
                                "1280x1024x24", "-nolisten", "tcp", "-terminate"],
                               pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    _XVFB.append(process)
    with os.fdopen(read) as numbers:
        number = numbers.readline().strip()
    if not number:
        process.kill()
        pytest.skip("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is None:
            process.terminate()
            process.wait(10)


def _process_events(until: Callable[[], bool], timeout_s: float = 60.0,
                    state: Callable[[], object] = lambda: "") -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while not until():
        QApplication.processEvents()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the viewer {state()}")
        time.sleep(0.01)


def _near(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _assert_outlines_drawn(overlay: np.ndarray, f: float, shapes: list[np.ndarray],
                           ids: list[int]) -> None:
    """The overlay holds each outline in its track's colour, where the result put it:
    the pixels of that colour lie on the polygon (touching particles share borders, so
    a neighbour drawn later may cover part of it, never all)."""
    import cv2

    opaque = overlay[..., 3] == 255
    for shape, track in zip(shapes, ids, strict=True):
        colour = np.array(label_colour(track)[:3])
        mine = opaque & (np.abs(overlay[..., :3].astype(int) - colour).max(axis=2) < 30)
        line = np.zeros(overlay.shape[:2], np.uint8)
        points = np.rint(((shape[:, ::-1] + 0.5) / f) - 0.5).astype(np.int32)
        cv2.polylines(line, [points], True, 1, 1)
        assert mine.sum() >= 0.3 * line.sum(), track  # drawn, not all covered
        assert (mine & _near(line > 0, 3)).sum() >= 0.9 * mine.sum(), track  # on its polygon


def _save(name: str, image: np.ndarray) -> Path:
    import cv2

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    cv2.imwrite(str(path), cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.archives import record_sim_archive

    return record_sim_archive(tmp_path_factory.mktemp("view") / "sim.zarr")


def test_an_archive_shows_the_outlines_where_the_labels_are(display: str,
                                                            archive: Path) -> None:
    from lithoscope.clients.viewer import open_archive

    viewer = open_archive(archive, show=True, run=False)
    try:
        viewer.window._qt_window.resize(900, 700)
        frame = 20
        viewer.dims.set_current_step(0, frame)
        particles = viewer.layers["particles"]
        hidden = ("frames", "needle", "grid", "track ids")
        for name in hidden:
            viewer.layers[name].visible = False
        viewer.scale_bar.visible = False
        _process_events(lambda: True)
        # napari draws a label's contour inside it, one label pixel wide on screen.
        label_px = viewer.camera.zoom * particles.scale[-1]
        outlines = viewer.screenshot(canvas_only=True, flash=False)
        particles.contour = 0  # the same labels filled: where they are on the canvas
        filled = viewer.screenshot(canvas_only=True, flash=False)
        particles.contour = 1
        for name in hidden:
            viewer.layers[name].visible = True
        viewer.scale_bar.visible = True
        shown = viewer.screenshot(canvas_only=True, flash=False)
        path = _save("view-archive.png", shown)
        assert path.stat().st_size > 0
    finally:
        viewer.close()
    _save("view-archive-outlines.png", outlines)
    _save("view-archive-filled.png", filled)
    drawn = outlines[..., :3].max(axis=2) > 40
    inside = filled[..., :3].max(axis=2) > 40
    assert inside.sum() > 1000  # the cluster, at the canvas' scale
    # Edges: where the filled labels change colour (between particles too); an outline
    # pixel lies within a label pixel (plus antialiasing) of one.
    colours = filled[..., :3].astype(int)
    change = np.zeros(inside.shape, bool)
    change[:-1] |= np.any(colours[:-1] != colours[1:], axis=2)
    change[:, :-1] |= np.any(colours[:, :-1] != colours[:, 1:], axis=2)
    border = _near(change, int(np.ceil(label_px)) + 2)
    assert drawn.sum() > 200
    assert (drawn & border).sum() >= 0.9 * drawn.sum()  # outlines lie on label edges
    # In each track's own colour: the outline pixels have the colours of its tracks.
    import zarr

    from lithoscope.service.archive import read_labels

    labels = read_labels(zarr.open_group(archive, mode="r"), frame)
    assert labels is not None
    tracks = [int(t) for t in np.unique(labels["particles"]) if t]
    colours = np.array([label_colour(t)[:3] for t in tracks])
    pixels = outlines[..., :3][drawn].astype(int)
    distance = np.abs(pixels[:, None, :] - colours[None, :, :]).max(axis=2).min(axis=1)
    assert (distance < 40).mean() > 0.6


def test_following_a_service_shows_its_previews_and_outlines(display: str,
                                                             tmp_path: Path) -> None:
    """The simulator's lithiation session (512², needle contact at 8 s) streamed through
    a real worker: the overlay holds each outline where the result put it, the canvas
    shows them, and the whole window is saved as ``view-live.png`` (README's image)."""
    from lithoscope.clients.viewer import follow_service
    from lithoscope.service.config import ServiceConfig
    from lithoscope.service.live.worker import Worker, WorkerThread
    from lithoscope.service.sources.sim import SimConfig, SimulatedSource

    from support import publishing

    config = ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                           results_endpoint=f"ipc://{tmp_path}/results",
                           sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1)
    sim = SimConfig(fps=1.0, duration_s=36.0, contact_s=8.0, bias_on_s=10.0,
                    withdraw_s=60.0)
    frames = int(sim.duration_s * sim.fps)
    with Worker(config) as worker, WorkerThread(worker):
        view = follow_service(worker.results_endpoint or "", show=True, run=False)
        try:
            view.viewer.window._qt_window.resize(1500, 950)
            _process_events(lambda: worker._preview.subscribers >= 1)
            # A preview of every frame (not 2/s): the last frame shown is the one the
            # last outlines were drawn on, whatever the machine's speed.
            worker._preview.interval_s = 0.0
            thread, out = publishing.publish_in_thread(
                worker.frames_endpoint or "", worker.results_endpoint or "",
                SimulatedSource(sim), ack_timeout_s=60.0, speed=None, live=False)
            _process_events(lambda: view.frames_shown >= 1 and view.state.results >= frames
                            and not thread.is_alive(),
                            state=lambda: (view.frames_shown, view.state.results,
                                           thread.is_alive(), out, worker.counters))
            publishing.joined(thread, out, 60.0)
            _process_events(lambda: view.state.preview_index == frames - 1,
                            state=lambda: view.state.preview_index)
            view.plot.show(view.state.area_t, view.state.area, view.state.area_unit,
                           [(e.t_s, e.kind) for e in view.state.events])
            _process_events(lambda: True)
            shapes, ids = view.state.polygons()
            assert len(shapes) >= 4  # the cluster's particles
            assert view.state.region_polygons("needle")  # in contact, shaded
            assert "contact_made" in [e.kind for e in view.state.events]
            assert view.event_list.count() == len(view.state.events)
            overlay = view.analysis.data
            f = view.analysis.scale[-1]
            view.frame.visible = False
            outlines = view.viewer.screenshot(canvas_only=True, flash=False)
            view.frame.visible = True
            window = view.viewer.screenshot(canvas_only=False, flash=False)
            _save("view-live.png", window)
        finally:
            view.timer.stop()
            view.subscriber.close()
            view.viewer.close()
    _assert_outlines_drawn(overlay, f, shapes, ids)
    coloured = outlines[..., :3].astype(int)
    drawn = (coloured.max(axis=2) - coloured.min(axis=2)) > 60
    assert drawn.sum() > 50  # and the canvas shows them
    # No notification over the window (napari shows its warnings as toasts).
    from napari.utils.notifications import notification_manager

    assert not [n for n in notification_manager.records
                if n.severity >= "warning"], notification_manager.records


def test_view_names_what_is_wrong_in_one_line(tmp_path: Path, display: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lithoscope.service.cli import app

    result = CliRunner().invoke(app, ["view", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1
    assert "not a lithoscope archive" in result.output
    assert "Traceback" not in result.output
    # Without a display Qt would abort the process: refused first, in one line.
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["view"])
    assert result.exit_code == 1
    assert "needs a display" in result.output


def test_following_survives_the_service_stopping_and_a_new_one_starting(
        display: str, tmp_path: Path) -> None:
    """A real ``lithoscope serve`` is stopped and another started on the same endpoints:
    the viewer says it is waiting meanwhile and then shows the new session's frames and
    outlines (a frame of another size, so nothing of the first session can pass for it)."""
    from lithoscope.clients.viewer import follow_service

    from support import publishing
    from support.arrays import noisy_frames
    from support.serving import DEADLINE_S, Serve

    def publish(serve: Serve, frames: np.ndarray) -> None:
        thread, out = publishing.publish_in_thread(
            serve.frames, serve.results, frames, fps=4.0, ack_timeout_s=DEADLINE_S,
            speed=None, live=False)
        _process_events(lambda: not thread.is_alive() and view.state.results >= shown + 8,
                        state=lambda: (view.state.results, thread.is_alive(), out))
        publishing.joined(thread, out, DEADLINE_S)

    def settled() -> None:  # the newest result and preview taken in and drawn
        _process_events(lambda: view.state.index == 7 and view.state.preview is not None,
                        state=lambda: (view.state.preview_index, view.state.index))

    first = Serve(tmp_path)
    second: Serve | None = None
    view = follow_service(first.results, show=True, run=False)
    try:
        view.viewer.window._qt_window.resize(900, 700)
        _process_events(lambda: view.state.connected, state=lambda: view.viewer.title)
        assert "waiting" not in view.viewer.title
        shown = 0
        publish(first, noisy_frames(8, (600, 640)))
        settled()
        old_session = view.state.session_id
        assert view.state.frame_shape == (600, 640)
        shown = view.state.results

        out, err = first.stop()
        assert first.proc.returncode == 0, err
        _process_events(lambda: "waiting" in view.viewer.title,
                        state=lambda: view.viewer.title)
        assert view.viewer.text_overlay.text == "waiting for the service"

        second = Serve(tmp_path)
        _process_events(lambda: "waiting" not in view.viewer.title,
                        state=lambda: view.viewer.title)
        frames_before = view.frames_shown
        # Particles elsewhere than in the first session: moved by (150, 200).
        moved = np.roll(noisy_frames(8, (480, 520), seed=1), (150, 200), axis=(1, 2))
        publish(second, moved)
        settled()
        assert view.state.session_id not in (None, old_session)
        assert view.subscriber.restarts >= 1
        assert view.frames_shown > frames_before
        assert view.state.frame_shape == (480, 520)
        assert view.frame.data.shape == view.state.preview.shape  # type: ignore[union-attr]
        shapes, ids = view.state.polygons()
        assert shapes
        centres = np.array([s.mean(axis=0) for s in shapes])
        assert (centres.min(axis=0) > (150, 200)).all()  # the new session's particles
        _process_events(lambda: True)
        view.frame.visible = False
        outlines = view.viewer.screenshot(canvas_only=True, flash=False)
        view.frame.visible = True
        _save("view-restarted.png", view.viewer.screenshot(canvas_only=True, flash=False))
        overlay, f = view.analysis.data, view.analysis.scale[-1]
        assert overlay.shape[:2] == tuple(-(-np.array((480, 520)) // int(f)))
    finally:
        view.timer.stop()
        view.subscriber.close()
        view.viewer.close()
        for serve in (first, second):
            if serve is not None and serve.proc.poll() is None:
                serve.stop()
    _assert_outlines_drawn(overlay, f, shapes, ids)
    coloured = outlines[..., :3].astype(int)
    assert ((coloured.max(axis=2) - coloured.min(axis=2)) > 60).sum() > 50
