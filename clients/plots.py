"""Figures of a session (matplotlib, headless), shared by the report and the live plot.

Uses ``matplotlib.figure.Figure`` directly, never pyplot: no global figure state and
no GUI backend, so it is safe in a background tool and in tests.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lithoscope.service.protocol import Event, Message, Result, SessionStart

from ._linking import CentroidLinker

__all__ = ["LivePlot", "draw_cluster", "draw_particles", "running_median", "save_figure"]

_EVENT_STYLE = {
    "contact_made": ("tab:green", "contact"),
    "contact_lost": ("tab:red", "withdrawal"),
    "expansion_onset": ("tab:orange", "expansion"),
    "expansion_slowing": ("tab:olive", "slowing"),
    "contraction_onset": ("tab:purple", "contraction"),
    "contraction_settled": ("tab:gray", "settled"),
}
"""Events worth a line on a physical plot; operational ones would only clutter it."""


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Write a PNG atomically: a viewer refreshing the file never sees half an image."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)
    return path


def _contact_spans(t: np.ndarray, contact: np.ndarray) -> list[tuple[float, float]]:
    if t.size == 0:
        return []
    flags = np.asarray(contact, bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flags, [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(float(t[a]), float(t[b])) for a, b in zip(starts, stops, strict=True)]


def mark_events(ax: Axes, events: Sequence[Mapping[str, Any]]) -> None:
    """Dashed vertical lines at physical events, labelled once per kind."""
    seen: set[str] = set()
    for e in events:
        style = _EVENT_STYLE.get(str(e["kind"]))
        if style is None:
            continue
        color, label = style
        ax.axvline(float(e["t_s"]), color=color, linestyle="--", linewidth=1,
                   label=None if label in seen else label)
        seen.add(label)


def draw_cluster(ax: Axes, t: np.ndarray, area: np.ndarray, *, unit: str,
                 contact: np.ndarray | None = None,
                 events: Sequence[Mapping[str, Any]] = ()) -> None:
    """Cluster area against time, needle contact shaded, events marked."""
    ax.plot(t, area, color="black", linewidth=1.2, label="cluster")
    if contact is not None:
        for i, (a, b) in enumerate(_contact_spans(t, contact)):
            ax.axvspan(a, b, color="tab:green", alpha=0.12,
                       label="needle contact" if i == 0 else None)
    mark_events(ax, events)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"cluster area ({unit})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median (shorter windows at the ends); input unchanged."""
    if values.size < 3 or window < 2:
        return values.copy()
    half = window // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    median: np.ndarray = np.median(windows, axis=1)
    return median


def draw_particles(ax: Axes, tracks: Mapping[int, tuple[np.ndarray, np.ndarray]], *,
                   unit: str, events: Sequence[Mapping[str, Any]] = (),
                   label: str = "particle") -> None:
    """Area of each particle against time (one line per id), events marked."""
    for pid, (t, area) in sorted(tracks.items()):
        # Raw values faint, a running median bold: segmentation flicker (a particle
        # merged with its neighbour for a frame) should not hide the trend.
        (line,) = ax.plot(t, area, linewidth=0.6, alpha=0.35)
        ax.plot(t, running_median(np.asarray(area, float), 9), linewidth=1.6,
                color=line.get_color(), label=f"{label} {pid}")
    mark_events(ax, events)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"particle area ({unit})")
    ax.grid(alpha=0.3)
    if tracks:
        ax.legend(loc="best", fontsize="small", ncol=2)


@dataclass
class LivePlot:
    """Keeps a PNG of the cluster and particle area curves up to date from a stream.

    Redraws at most every ``every_s`` seconds (a figure costs tens of milliseconds;
    results arrive at frame rate). Particles are followed by the service's
    ``track_id`` when it sends one, else linked by centroid here.
    """

    path: Path
    every_s: float = 2.0
    max_particles: int = 8
    session_id: str | None = None
    t: list[float] = field(default_factory=list)
    area: list[float] = field(default_factory=list)
    contact: list[bool] = field(default_factory=list)
    tracks: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "px"
    tracked_by_service: bool = False
    _linker: CentroidLinker = field(default_factory=CentroidLinker)
    _last_draw: float = -float("inf")
    _dirty: bool = False

    def update(self, msg: Message) -> bool:
        """Fold in one message; True when the PNG was rewritten."""
        if isinstance(msg, SessionStart) or (
                isinstance(msg, Result) and msg.session_id != self.session_id):
            self._reset(msg.session_id)
        if isinstance(msg, Result):
            self._on_result(msg)
        elif isinstance(msg, Event) and msg.kind in _EVENT_STYLE:
            self.events.append({"kind": msg.kind, "t_s": msg.t_s})
            self._dirty = True
        if self._dirty and time.monotonic() - self._last_draw >= self.every_s:
            self.draw()
            return True
        return False

    def _reset(self, session_id: str) -> None:
        if session_id == self.session_id:
            return
        fresh = LivePlot(self.path, every_s=self.every_s, max_particles=self.max_particles,
                         session_id=session_id)
        self.__dict__.update(fresh.__dict__)

    def _on_result(self, msg: Result) -> None:
        c, p = msg.cluster, msg.particles
        use_nm = isinstance(c.get("area_nm2"), (int, float))
        self.unit = "nm²" if use_nm else "px"
        self.t.append(msg.t_s)
        area = c.get("area_nm2") if use_nm else c.get("area_px") or 0
        self.area.append(float(area) if area is not None else math.nan)
        self.contact.append(bool(c.get("needle_contact")))
        areas = p.get("area_nm2") if use_nm else p.get("area_px")
        if not areas:
            self._dirty = True
            return
        if p.get("track_id"):
            self.tracked_by_service = True
            ids = [int(v) for v in p["track_id"]]
        else:
            ids = self._linker.update(np.asarray(p.get("centroid_row", []), float),
                                      np.asarray(p.get("centroid_col", []), float)).tolist()
        for pid, value in zip(ids, areas, strict=False):
            if value is None:
                continue
            ts, values = self.tracks.setdefault(pid, ([], []))
            ts.append(msg.t_s)
            values.append(float(value))
        self._dirty = True

    def draw(self) -> Path:
        fig = Figure(figsize=(9, 7), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True)
        t = np.asarray(self.t)
        draw_cluster(top, t, np.asarray(self.area), unit=self.unit,
                     contact=np.asarray(self.contact), events=self.events)
        # The largest particles: the ones whose swelling a person can see.
        biggest = sorted(self.tracks.items(), key=lambda kv: -max(kv[1][1]))
        shown = {pid: (np.asarray(ts), np.asarray(vs))
                 for pid, (ts, vs) in biggest[: self.max_particles] if len(ts) > 1}
        draw_particles(bottom, shown, unit=self.unit, events=self.events,
                       label="track" if self.tracked_by_service else "particle")
        fig.suptitle(f"session {self.session_id}, t = {self.t[-1]:.1f} s" if self.t
                     else f"session {self.session_id}")
        save_figure(fig, self.path)
        self._last_draw = time.monotonic()
        self._dirty = False
        return self.path
