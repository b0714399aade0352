"""``lithoscope view``: see what the analysis sees, in napari, live or from an archive.

Following a running service (:func:`follow_service`), the viewer shows the newest
``preview`` frame, each particle's outline from the newest ``result`` in its track's
colour with its id, the needle and grid shaded (the result's ``regions``), the events
in a list and as markers on a plot of the cluster area against time. Opening an archive
(:func:`open_archive`), it shows the frames with the archive's own label images
(``labels/``: particles by track id, drawn as outlines; needle and grid shaded), the
track ids as text, and the same list and plot; napari's time slider moves frames and
labels together.

napari and a Qt binding are the ``[view]`` extra, imported only here, inside the
functions. What the viewer holds from the results stream is :class:`ViewState`, plain
Python with no Qt, so its logic is tested without a display.

Reconnecting: the subscriber is a ZeroMQ SUB socket, which reconnects by itself, so a
service stopped and started again on the same endpoints is followed on. While none is
connected the window's title and the canvas' caption say the viewer is waiting (as the
monitor does); a new session clears the last one's frame, outlines, events and plot.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import (
    Event,
    Heartbeat,
    Message,
    Preview,
    Result,
    SessionStart,
)
from lithoscope.service.schema import label_colour

if TYPE_CHECKING:
    from lithoscope.service.security import ClientCurve

__all__ = ["LiveView", "ViewState", "draw_overlay", "follow_service", "open_archive",
           "require_napari"]

VIEW_TOPICS = ("session_start", "result", "event", "heartbeat", "session_closed", "preview")
_MAX_EVENTS = 500
_MAX_AREA_POINTS = 20_000
_NEEDLE_RGBA = (0.9, 0.55, 0.15, 0.35)
_GRID_RGBA = (0.27, 0.43, 0.9, 0.3)


def require_napari() -> Any:
    """napari, or a ConfigError that says how to install it (or that there is no display
    to open a window on: Qt would abort the process)."""
    if (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
            and not os.environ.get("WAYLAND_DISPLAY")
            and not os.environ.get("QT_QPA_PLATFORM")):
        raise ConfigError("lithoscope view needs a display: none is set (DISPLAY). Run it "
                          "on the desktop, over ssh -X, or under xvfb-run.")
    try:
        import napari
    except ImportError as exc:
        raise ConfigError("lithoscope view needs napari and a Qt binding: pip install "
                          f"'lithoscope[view]' ({exc}).") from None
    return napari


def _rgba(track_id: int) -> tuple[float, float, float, float]:
    r, g, b, a = label_colour(track_id)
    return r / 255, g / 255, b / 255, a / 255


@dataclass
class ViewState:
    """What the viewer shows, updated message by message (no Qt here)."""

    session_id: str | None = None
    index: int | None = None
    """Frame of the newest result."""
    t_s: float = math.nan
    preview: np.ndarray | None = None
    preview_index: int | None = None
    scale: float = 1.0
    """Frame pixels per preview pixel."""
    frame_shape: tuple[int, int] | None = None
    outlines: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    events: collections.deque[Event] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_EVENTS))
    area_t: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_AREA_POINTS))
    area: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_AREA_POINTS))
    area_unit: str = "px"
    results: int = 0
    """Results taken in (the viewer's frame counter)."""
    connected: bool = False

    def update(self, msg: Message) -> set[str]:
        """Take one message; returns what changed: ``frame``, ``outlines``, ``events``,
        ``area``, ``session``."""
        changed: set[str] = set()
        if isinstance(msg, SessionStart) or (
                isinstance(msg, Result | Preview) and msg.session_id != self.session_id):
            self.session_id = msg.session_id
            self.area_t.clear()
            self.area.clear()
            self.events.clear()
            self.outlines, self.regions = [], []
            # The last session's frame is not this one's (a restarted service may
            # stream another camera size): shown blank until this session's preview.
            self.preview = self.preview_index = self.frame_shape = None
            self.scale = 1.0
            changed |= {"session", "area", "events", "outlines", "frame"}
        if isinstance(msg, Preview) and msg.image is not None:
            self.preview, self.preview_index = msg.image, msg.index
            self.scale = float(msg.scale)
            self.frame_shape = (int(msg.frame_shape[0]), int(msg.frame_shape[1]))
            changed.add("frame")
        elif isinstance(msg, Result):
            self.index, self.t_s = msg.index, msg.t_s
            self.outlines, self.regions = list(msg.outlines), list(msg.regions)
            self.results += 1
            area = msg.cluster.get("area_nm2")
            unit = "nm²"
            if not isinstance(area, int | float) or not math.isfinite(area):
                area, unit = msg.cluster.get("area_px"), "px"
            if isinstance(area, int | float):
                self.area_t.append(msg.t_s)
                self.area.append(float(area))
                self.area_unit = unit
                changed.add("area")
            changed.add("outlines")
        elif isinstance(msg, Event):
            self.events.append(msg)
            changed.add("events")
        elif isinstance(msg, Heartbeat) and msg.session_id and self.session_id is None:
            self.session_id = msg.session_id
        return changed

    def polygons(self) -> tuple[list[np.ndarray], list[int]]:
        """The particles' outlines as (N, 2) arrays of (row, col), and their track ids."""
        shapes = [np.asarray(o["points"], float) for o in self.outlines if len(o["points"]) >= 3]
        ids = [int(o["track_id"]) for o in self.outlines if len(o["points"]) >= 3]
        return shapes, ids

    def region_polygons(self, region: str) -> list[np.ndarray]:
        return [np.asarray(r["points"], float) for r in self.regions
                if r["region"] == region and len(r["points"]) >= 3]


def _event_line(event: Event) -> str:
    return f"{event.t_s:8.1f} s  frame {event.frame:>5}  {event.kind.replace('_', ' ')}"


class _AreaPlot:
    """Cluster area against time with the events as vertical lines, in a Qt dock."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)  # type: ignore[no-untyped-call]
        self.axes = self.figure.add_subplot()
        (self.line,) = self.axes.plot([], [], color="tab:orange")
        self.axes.set_xlabel("t (s)")
        self.axes.set_ylabel("cluster area")
        self._markers: list[Any] = []

    def show(self, t: Any, area: Any, unit: str, events: list[tuple[float, str]]) -> None:
        self.line.set_data(np.asarray(t, float), np.asarray(area, float))
        self.axes.set_ylabel(f"cluster area ({unit})")
        for marker in self._markers:
            marker.remove()
        self._markers = [self.axes.axvline(t_s, color="tab:red", lw=0.8, alpha=0.7)
                         for t_s, _ in events]
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()  # type: ignore[no-untyped-call]


def _docks(viewer: Any) -> tuple[Any, _AreaPlot]:
    from qtpy.QtWidgets import QListWidget

    events = QListWidget()
    plot = _AreaPlot()
    viewer.window.add_dock_widget(events, name="events", area="right")
    viewer.window.add_dock_widget(plot.canvas, name="cluster area", area="bottom")
    return events, plot


_OVERLAY_MAX_SIDE = 1024
"""Longest side of the live overlay image: outlines drawn sharper than the preview they
lie on, without drawing a 2048² RGBA image per result."""
_PLOT_INTERVAL_S = 1.0


def draw_overlay(state: ViewState, *, max_side: int = _OVERLAY_MAX_SIDE,
                 ) -> tuple[np.ndarray, float]:
    """The newest result drawn as one RGBA image: each particle's outline in its track's
    colour with its id, the needle and grid shaded; and frame pixels per overlay pixel.

    One image per result rather than a napari shape per particle: napari's shapes layer
    takes seconds to replace a hundred polygons with their texts, an image a few ms.
    """
    import cv2

    if state.frame_shape is not None:
        rows, cols = state.frame_shape
    else:  # no preview yet: as far as the outlines reach
        reach = [np.asarray(o["points"]) for o in (*state.outlines, *state.regions)]
        top = np.max([p.max(axis=0) for p in reach if p.size], axis=0) if reach else (1, 1)
        rows, cols = int(top[0]) + 1, int(top[1]) + 1
    f = max(1.0, max(rows, cols) / max_side)
    overlay = np.zeros((max(1, math.ceil(rows / f)), max(1, math.ceil(cols / f)), 4), np.uint8)

    def xy(points: Any) -> np.ndarray:  # (row, col) frame pixels -> (x, y) overlay pixels
        array = np.asarray(points, float)
        return np.rint(((array[:, ::-1] + 0.5) / f) - 0.5).astype(np.int32)

    for name, rgba in (("needle", _NEEDLE_RGBA), ("grid", _GRID_RGBA)):
        polygons = [xy(p) for p in state.region_polygons(name)]
        if polygons:
            colour = tuple(round(255 * c) for c in rgba)
            cv2.fillPoly(overlay, polygons, colour)
    shapes, ids = state.polygons()
    labels: dict[int, tuple[int, int]] = {}
    for shape, track in zip(shapes, ids, strict=True):
        r, g, b, _ = label_colour(track)
        points = xy(shape)
        cv2.polylines(overlay, [points], True, (r, g, b, 255), 2, cv2.LINE_AA)
        if track not in labels or len(points) > 3:
            centre = points.mean(axis=0)
            labels[track] = (int(centre[0]), int(centre[1]))
    text = np.zeros(overlay.shape[:2], np.uint8)
    for track, (x, y) in labels.items():
        cv2.putText(text, str(track), (x - 6, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1,
                    cv2.LINE_AA)
    if labels:
        rim = cv2.dilate((text > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        overlay[rim] = (0, 0, 0, 255)
        ink = text > 0
        overlay[ink] = np.column_stack([text[ink]] * 3 + [np.full(ink.sum(), 255)])
    return overlay, f


class LiveView:
    """A napari viewer following a results stream (see :func:`follow_service`)."""

    def __init__(self, viewer: Any, state: ViewState | None = None) -> None:
        self.viewer = viewer
        self.state = state or ViewState()
        self.frame = viewer.add_image(np.zeros((2, 2), np.uint8), name="frame",
                                      colormap="gray", contrast_limits=(0, 255))
        self.analysis = viewer.add_image(np.zeros((2, 2, 4), np.uint8), name="analysis",
                                         rgb=True)
        self.event_list, self.plot = _docks(viewer)
        self.frames_shown = 0
        self._fitted = False
        self._plotted_at = -math.inf

    def show_status(self) -> None:
        """The canvas' caption: the newest result's frame, or that the service is gone."""
        state = self.state
        if not state.connected and state.session_id is not None:
            self.viewer.text_overlay.text = "waiting for the service"
        elif state.index is not None:
            self.viewer.text_overlay.text = (f"{state.session_id}  frame {state.index}  "
                                             f"t = {state.t_s:.1f} s")

    def take(self, msg: Message) -> None:
        self.apply(self.state.update(msg))

    def apply(self, changed: set[str]) -> None:
        state = self.state
        if "frame" in changed and state.preview is None:  # a new session, no frame yet
            self.frame.data = np.zeros((2, 2), np.uint8)
            self._fitted = False
        elif "frame" in changed and state.preview is not None:
            self.frame.data = state.preview
            self.frame.scale = (state.scale, state.scale)
            self.frames_shown += 1
            if not self._fitted:
                self.viewer.reset_view()
                self._fitted = True
        if "outlines" in changed or "frame" in changed:
            overlay, f = draw_overlay(state)
            self.analysis.data = overlay
            self.analysis.scale = (f, f)
            self.show_status()
        if "events" in changed or "session" in changed:
            self.event_list.clear()
            self.event_list.addItems([_event_line(e) for e in state.events])
            self.event_list.scrollToBottom()
        now = time.monotonic()
        if ("events" in changed or ("area" in changed
                                    and now - self._plotted_at >= _PLOT_INTERVAL_S)):
            self._plotted_at = now
            self.plot.show(state.area_t, state.area, state.area_unit,
                           [(e.t_s, e.kind) for e in state.events])


def follow_service(endpoint: str, *, curve: ClientCurve | None = None,
                   show: bool = True, run: bool = True,
                   on_view: Callable[[LiveView], None] | None = None) -> LiveView:
    """Open a napari window following the service whose results are at ``endpoint``.

    With ``run`` (the command), napari's event loop runs until the window is closed;
    otherwise the view is returned with its timer running (tests, scripts).
    ``on_view`` is called with the view once it exists.
    """
    napari = require_napari()
    from qtpy.QtCore import QTimer

    from lithoscope.clients.subscriber import ConnectionState, Subscriber

    viewer = napari.Viewer(title=f"lithoscope view: {endpoint}", show=show)
    viewer.text_overlay.visible = True
    viewer.text_overlay.color = "white"
    view = LiveView(viewer)
    subscriber = Subscriber(endpoint, topics=VIEW_TOPICS, curve=curve)

    def poll() -> None:
        deadline = time.monotonic() + 0.05
        changed: set[str] = set()
        while time.monotonic() < deadline:
            msg = subscriber.recv(timeout_s=0)
            if msg is None:
                break
            changed |= view.state.update(msg)
        if changed:
            view.apply(changed)
        connected = subscriber.state is ConnectionState.CONNECTED
        if connected != view.state.connected:
            view.state.connected = connected
            viewer.title = (f"lithoscope view: {endpoint}"
                            + ("" if connected else " (waiting for the service)"))
            view.show_status()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(20)
    view.timer = timer  # type: ignore[attr-defined]
    view.subscriber = subscriber  # type: ignore[attr-defined]
    viewer.window._qt_window.destroyed.connect(lambda *_: subscriber.close())
    if on_view is not None:
        on_view(view)
    if run:
        try:
            napari.run()
        finally:
            timer.stop()
            subscriber.close()
    return view


def open_archive(path: str | Path, *, show: bool = True, run: bool = True) -> Any:
    """Open a session archive in napari: frames, label images, ids, events, area plot.

    Returns the napari viewer (with ``run``, once its window is closed).
    """
    napari = require_napari()
    from lithoscope.service.archive import LABEL_NAMES, ArchiveReader

    reader = ArchiveReader(path)
    if reader.frame_count == 0:
        raise ConfigError(f"{path} holds no frames to show.")
    pixel = reader.pixel_size_nm or 1.0
    viewer = napari.Viewer(title=f"lithoscope view: {Path(path).name}", show=show)
    units = ("dimensionless", "nm", "nm") if reader.pixel_size_nm else None
    viewer.add_image(reader.frames[: reader.frame_count], name="frames",
                     scale=(1.0, pixel, pixel), colormap="gray", units=units)
    labels_group: Any = reader.group.get("labels")
    if labels_group is not None:
        for name in LABEL_NAMES:
            array = labels_group[f"{name}/0"]
            recorded = labels_group[name].attrs.get("lithoscope", {})
            binning = recorded.get("binning", 1) if isinstance(recorded, Mapping) else 1
            b = binning if isinstance(binning, int) and binning >= 1 else 1
            offset = pixel * (b - 1) / 2
            kwargs: dict[str, Any] = {
                "name": name, "scale": (1.0, pixel * b, pixel * b),
                "translate": (0.0, offset, offset), "units": units,
                "opacity": 0.9 if name == "particles" else 0.35}
            layer = viewer.add_labels(array[: reader.frame_count], **kwargs)
            if name == "particles":
                layer.contour = 1
                _colour_tracks(layer, reader)
            else:
                _one_colour(layer, _NEEDLE_RGBA if name == "needle" else _GRID_RGBA)
        _track_ids(viewer, reader, pixel, units)
    viewer.scale_bar.visible = True
    events, plot = _docks(viewer)
    archived = reader.events()
    events.addItems([f"{e['t_s']:8.1f} s  frame {e['frame']:>5}  "
                     f"{str(e['kind']).replace('_', ' ')}" for e in archived])
    positions = {int(i): p for p, i in enumerate(reader.table("frame_table")["index"]
                                                 [: reader.frame_count])}

    def jump(row: int) -> None:
        position = positions.get(int(archived[row]["frame"])) if 0 <= row < len(archived) \
            else None
        if position is not None:
            viewer.dims.set_current_step(0, position)

    events.currentRowChanged.connect(jump)
    cluster = reader.table("cluster")
    area = cluster.get("area_nm2") if reader.pixel_size_nm else cluster.get("area_px")
    if area is not None:
        plot.show(cluster["t_s"], area, "nm²" if reader.pixel_size_nm else "px",
                  [(float(e["t_s"]), str(e["kind"])) for e in archived])
    if run:
        napari.run()
    return viewer


def _colour_tracks(layer: Any, reader: Any) -> None:
    from napari.utils.colormaps import DirectLabelColormap

    ids = np.unique(reader.table("particles").get("track_id", np.zeros(0, int)))
    colours: dict[int | None, Any] = {int(i): _rgba(int(i)) for i in ids if i > 0}
    colours[0] = (0, 0, 0, 0)
    colours[None] = (1, 1, 1, 1)
    layer.colormap = DirectLabelColormap(color_dict=colours)


def _one_colour(layer: Any, rgba: tuple[float, float, float, float]) -> None:
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict={0: (0, 0, 0, 0), 1: rgba,
                                                     None: rgba})
    layer.opacity = 1.0


def _track_ids(viewer: Any, reader: Any, pixel: float, units: Any) -> None:
    """Each particle's track id as text at its centroid, frame by frame."""
    particles = reader.table("particles")
    if not particles or not len(particles.get("frame", [])):
        return
    positions = {int(i): p for p, i in enumerate(reader.table("frame_table")["index"]
                                                 [: reader.frame_count])}
    frames = np.array([positions.get(int(f), -1) for f in particles["frame"]])
    keep = frames >= 0
    coords = np.column_stack([frames[keep], particles["centroid_row"][keep] * pixel,
                              particles["centroid_col"][keep] * pixel])
    viewer.add_points(coords, name="track ids", size=0, units=units, features={
        "track_id": particles["track_id"][keep]},
        text={"string": "{track_id}", "color": "white", "size": 9})
