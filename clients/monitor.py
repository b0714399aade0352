"""The live terminal monitor: what a microscopist glances at while driving the needle.

Two halves, kept apart so the picture can be tested without a terminal:

* :class:`MonitorState` folds results-stream messages into what is shown (no I/O);
* :func:`render` turns a state into a rich renderable (a pure function of the state
  and the clock).

:func:`run_monitor` joins them: a subscriber fed into the state in this thread, and a
``rich.live.Live`` that calls ``render`` on its own refresh thread, a few times a
second. The service publishes on PUB and never waits for us, so a slow or paused
monitor loses display updates, never frames.

Fields that another part of the analysis may or may not provide (tracking ids, Li
content, rates, bias) are shown when present and replaced by a dash when absent.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lithoscope.service.protocol import (
    Event,
    EventKind,
    Heartbeat,
    Message,
    Result,
    SessionClosed,
    SessionStart,
)

from .subscriber import ConnectionState, Subscriber

if TYPE_CHECKING:
    from lithoscope.service.security import ClientCurve

__all__ = ["MonitorState", "live_monitor", "render", "run_monitor", "sparkline"]

_BLOCKS = "▁▂▃▄▅▆▇█"
PHYSICAL_EVENTS = frozenset({
    EventKind.CONTACT_MADE, EventKind.CONTACT_LOST, EventKind.EXPANSION_ONSET,
    EventKind.EXPANSION_SLOWING, EventKind.CONTRACTION_ONSET, EventKind.CONTRACTION_SETTLED,
})
"""Events about the sample (the rest are about the pipeline): these ring the bell."""
_LITHIATION_STARTS = {EventKind.CONTACT_MADE.value, EventKind.EXPANSION_ONSET.value}
HIGHLIGHT_S = 5.0
"""How long a newly arrived alert stays highlighted."""
RATE_WINDOW_S = 5.0
"""Experiment time over which the current area rate is fitted."""


@dataclass
class EventLine:
    event: Event
    received_at: float
    """Monotonic clock at arrival (for the highlight), not experiment time."""


@dataclass
class MonitorState:
    """Everything the monitor shows, folded from results-stream messages.

    Mutated by :meth:`update` from one thread; :func:`render` reads it from another,
    so callers hold :attr:`lock` around both (``run_monitor`` and ``live_monitor`` do).
    """

    endpoint: str = ""
    connection: ConnectionState = ConnectionState.WAITING
    connection_since: float = field(default_factory=time.monotonic)
    restarts: int = 0
    missed: int = 0
    session_id: str | None = None
    source: str | None = None
    live: bool | None = None
    counters: dict[str, int] = field(default_factory=dict)
    fps_in: float | None = None
    fps_analysed: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    archive_path: str | None = None
    archive_bytes: int | None = None
    t_s: float | None = None
    frame: int | None = None
    cluster: dict[str, Any] = field(default_factory=dict)
    particles: dict[str, list[Any]] = field(default_factory=dict)
    needle_contact: bool | None = None
    contact_changed_t_s: float | None = None
    bias_v: float | None = None
    area_history: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=2000))
    area_unit: str = "px"
    lithiation_t_s: float | None = None
    particle_baselines: dict[int, float] = field(default_factory=dict)
    events: deque[EventLine] = field(default_factory=lambda: deque(maxlen=100))
    closed: SessionClosed | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, msg: Message, *, now: float | None = None) -> bool:
        """Fold one message in; True when it is an alert worth a bell."""
        now = time.monotonic() if now is None else now
        if isinstance(msg, SessionStart):
            self._new_session(msg.session_id)
            self.source, self.live = msg.source, msg.live
            self.bias_v = _number(msg.metadata.get("bias_v"))
        elif isinstance(msg, Heartbeat):
            if msg.session_id is not None and msg.session_id != self.session_id:
                self._new_session(msg.session_id)
            self.counters = dict(msg.counters)
            self.fps_in, self.fps_analysed = msg.fps_in, msg.fps_analysed
            self.latency_p50_s, self.latency_p99_s = msg.latency_p50_s, msg.latency_p99_s
            if msg.archive_path is not None:
                self.archive_path, self.archive_bytes = msg.archive_path, msg.archive_bytes
            if msg.source is not None and self.source is None:  # joined mid-session
                self.source, self.live = msg.source, msg.live
        elif isinstance(msg, Result):
            self._on_result(msg)
        elif isinstance(msg, Event):
            if msg.session_id != self.session_id:
                self._new_session(msg.session_id)
            self.events.appendleft(EventLine(msg, now))
            if msg.kind in _LITHIATION_STARTS and self.lithiation_t_s is None:
                self.lithiation_t_s = msg.t_s
            return msg.kind in PHYSICAL_EVENTS
        elif isinstance(msg, SessionClosed):
            self.closed = msg
            self.archive_path = msg.archive_path or self.archive_path
        return False

    def note_frame_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Per-frame values seen beside the results stream (the demo sees the frames):
        the bias, until the service's results carry it themselves."""
        bias = _number(metadata.get("bias_v"))
        if bias is not None:
            self.bias_v = bias

    def _new_session(self, session_id: str) -> None:
        if session_id == self.session_id:
            return
        fresh = MonitorState(endpoint=self.endpoint, connection=self.connection,
                             connection_since=self.connection_since, restarts=self.restarts,
                             missed=self.missed)
        for name in self.__dataclass_fields__:
            if name != "lock":
                setattr(self, name, getattr(fresh, name))
        self.session_id = session_id

    def _on_result(self, msg: Result) -> None:
        if msg.session_id != self.session_id:
            self._new_session(msg.session_id)
        self.t_s, self.frame = msg.t_s, msg.index
        self.cluster, self.particles = dict(msg.cluster), dict(msg.particles)
        contact = self.cluster.get("needle_contact")
        if isinstance(contact, bool) and contact != self.needle_contact:
            self.needle_contact, self.contact_changed_t_s = contact, msg.t_s
        bias = _number(self.cluster.get("bias_v"))
        if bias is not None:
            self.bias_v = bias
        area_nm2 = _number(self.cluster.get("area_nm2"))
        area = area_nm2 if area_nm2 is not None else _number(self.cluster.get("area_px"))
        self.area_unit = "nm²" if area_nm2 is not None else "px"
        if area is not None:
            self.area_history.append((msg.t_s, area))
        if self.lithiation_t_s is not None:
            for pid, particle_area in zip(_ids(self.particles)[0], self._particle_areas(),
                                          strict=False):
                if pid is not None and particle_area is not None:
                    self.particle_baselines.setdefault(pid, particle_area)

    def _particle_areas(self) -> list[float | None]:
        column = self.particles.get("area_nm2") if self.area_unit == "nm²" else None
        column = column or self.particles.get("area_px") or []
        return [_number(v) for v in column]

    def area_rate(self) -> float | None:
        """Cluster area per second now: the service's value if it sends one, else a
        least-squares slope over the last :data:`RATE_WINDOW_S` of experiment time."""
        given = _number(self.cluster.get("area_rate_nm2_per_s"))
        if given is not None and self.area_unit == "nm²":
            return given
        if len(self.area_history) < 3:
            return None
        t_end = self.area_history[-1][0]
        recent = [(t, a) for t, a in self.area_history if t >= t_end - RATE_WINDOW_S]
        if len(recent) < 3:
            return None
        n = len(recent)
        mean_t = sum(t for t, _ in recent) / n
        mean_a = sum(a for _, a in recent) / n
        var = sum((t - mean_t) ** 2 for t, _ in recent)
        if var == 0:
            return None
        return sum((t - mean_t) * (a - mean_a) for t, a in recent) / var


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ids(particles: Mapping[str, Sequence[Any]]) -> tuple[list[int | None], bool]:
    """Particle ids to show and whether they are tracking ids (stable across frames)."""
    tracks = particles.get("track_id")
    if tracks:
        return [int(v) if _number(v) is not None else None for v in tracks], True
    labels = particles.get("label") or []
    return [int(v) for v in labels], False


def sparkline(values: Sequence[float], width: int) -> str:
    """Values squeezed into ``width`` block characters, scaled between their min and max."""
    if not values or width <= 0:
        return ""
    if len(values) > width:  # bucket means, so a spike does not vanish between samples
        step = len(values) / width
        values = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := values[int(i * step): max(int((i + 1) * step), int(i * step) + 1)])
        ]
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return _BLOCKS[0] * len(values)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - low) / span * top)] for v in values)


def _fmt(value: float | None, spec: str, unit: str = "", missing: str = "—") -> str:
    return missing if value is None else f"{value:{spec}}{unit}"


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def _connection_line(state: MonitorState, now: float) -> Text:
    since = _ago(now - state.connection_since)
    if state.connection is ConnectionState.CONNECTED:
        text = Text.assemble(("● connected", "bold green"), f" to {state.endpoint}")
    elif state.connection is ConnectionState.WAITING:
        text = Text.assemble(("○ waiting", "bold yellow"),
                             f" for a service at {state.endpoint} ({since})")
    else:
        text = Text.assemble(("✕ connection lost", "bold red"),
                             f" to {state.endpoint} {since} ago; reconnecting")
    extras = []
    if state.restarts:
        extras.append(f"service restarted {state.restarts}×")
    if state.missed:
        extras.append(f"{state.missed} display updates skipped")
    if extras:
        text.append("  (" + ", ".join(extras) + ")", style="dim")
    return text


def _header(state: MonitorState, now: float) -> RenderableType:
    c = state.counters
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    # One line per row whatever the width: the layout budget in render() counts on it.
    grid.add_column(no_wrap=True, overflow="ellipsis")
    kind = "" if state.live is None else (" (live)" if state.live else " (replay)")
    grid.add_row("session", state.session_id or "—")
    grid.add_row("source", f"{state.source or '—'}{kind}")
    counts = "   ".join(f"{name} {c[name]}" if name in c else f"{name} —"
                       for name in ("received", "analysed", "archived", "dropped", "skipped"))
    grid.add_row("frames", counts)

    def ms(value: float | None) -> str:
        return _fmt(None if value is None else value * 1000, ".0f", " ms")

    grid.add_row("rate", f"in {_fmt(state.fps_in, '.1f', ' fps')}   "
                         f"analysed {_fmt(state.fps_analysed, '.1f', ' fps')}   "
                         f"latency p50 {ms(state.latency_p50_s)}  p99 {ms(state.latency_p99_s)}")
    size = "" if state.archive_bytes is None else f" ({state.archive_bytes / 1e6:.1f} MB)"
    grid.add_row("archive", f"{state.archive_path or '—'}{size}")
    if state.closed is not None:
        grid.add_row("closed", Text(f"session closed ({state.closed.reason}): "
                                    f"{state.closed.frames_archived} frames archived, "
                                    f"{state.closed.frames_analysed} analysed",
                                    style="bold"))
    grid.add_row("link", _connection_line(state, now))
    return Panel(grid, title="lithoscope monitor", title_align="left")


def _experiment(state: MonitorState, width: int) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    t_now = state.t_s
    if state.needle_contact is None:
        contact = Text("no frame analysed yet", style="dim")
    else:
        since = state.contact_changed_t_s or 0.0
        held = "" if t_now is None else f" (for {_ago(t_now - since)})"
        contact = (Text.assemble(("MADE", "bold green"), f" since t = {since:.1f} s{held}")
                   if state.needle_contact else
                   Text.assemble(("none", "bold"), f" since t = {since:.1f} s{held}"))
    grid.add_row("needle contact", contact)
    grid.add_row("bias", _fmt(state.bias_v, ".2f", " V", missing="not reported"))
    for label, text in _operando_rows(state.cluster):
        grid.add_row(label, text)
    history = [a for _, a in state.area_history]
    unit = state.area_unit
    if history:
        current = history[-1]
        relative = _number(state.cluster.get("relative_area"))
        change = _fmt(None if relative is None else (relative - 1) * 100, "+.1f",
                      " % since the first frame")
        grid.add_row("cluster area", f"{current:,.0f} {unit}   {change}")
        grid.add_row("", Text(sparkline(history, max(width - 24, 10)), style="cyan"))
        rate = state.area_rate()
        grid.add_row("rate now", _fmt(rate, "+,.1f", f" {unit}/s"))
    else:
        grid.add_row("cluster area", Text("—", style="dim"))
    title = ("experiment" if t_now is None
             else f"experiment   t = {t_now:.1f} s, frame {state.frame}")
    return Panel(grid, title=title, title_align="left")


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value / 1e-15:.3g} f{unit}"


def _operando_rows(cluster: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Current, charge, dose and the lithium bookkeeping, when the results carry them
    (a session with an echem side stream, a dose rate): absent rows are not shown."""
    rows = []
    current, charge = _number(cluster.get("current_a")), _number(cluster.get("charge_c"))
    if current is not None or charge is not None:
        age = _number(cluster.get("echem_age_s"))
        stale = f"  (echem {age:.0f} s old)" if age is not None and age >= 2 else ""
        rows.append(("current, charge",
                     f"{_si(current, 'A') if current is not None else '—'}, "
                     f"{_si(charge, 'C') if charge is not None else '—'} passed{stale}"))
    rate, dose = _number(cluster.get("dose_rate_e_per_a2_s")), _number(
        cluster.get("dose_e_per_a2"))
    if rate is not None:
        rows.append(("electron dose", f"{rate:.1f} e/Å²/s, {dose or 0:.0f} e/Å² so far"))
    from_charge = _number(cluster.get("lithium_from_charge"))
    visible = _number(cluster.get("lithium_visible"))
    if from_charge is not None and visible is not None:
        sigma = _number(cluster.get("lithium_visible_sigma")) or 0.0
        rows.append(("lithium", f"{from_charge:.3g} Li passed, {visible:.3g} ± {sigma:.2g} in "
                                f"view, {from_charge - visible:.3g} out of view"))
    return rows


def _particles(state: MonitorState, max_rows: int) -> RenderableType:
    p = state.particles
    ids, tracked = _ids(p)
    table = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    table.add_column("id" if tracked else "label", justify="right")
    table.add_column(f"area ({state.area_unit})", justify="right")
    table.add_column("change", justify="right")
    table.add_column(f"rate ({state.area_unit}/s)", justify="right")
    table.add_column("Li x (LiₓSi)", justify="right")
    table.add_column("touches needle", justify="center")
    areas = state._particle_areas()
    # The service's rates are in nm²/s: shown only when areas are too (pixel size known).
    rates = (p.get("area_rate_nm2_per_s") or []) if state.area_unit == "nm²" else []
    li = p.get("lithium_x") or []
    touches = p.get("touches_needle") or []
    rows = sorted(range(len(ids)), key=lambda i: -(areas[i] or 0) if i < len(areas) else 0)
    def by_id(i: int) -> int:
        pid = ids[i]
        return pid if pid is not None else -1

    for i in sorted(rows[:max_rows], key=by_id):
        pid = ids[i]
        area = areas[i] if i < len(areas) else None
        base = state.particle_baselines.get(pid) if (tracked and pid is not None) else None
        change = None if (base is None or area is None or base == 0) else (area / base - 1) * 100
        table.add_row(
            "—" if pid is None else str(pid),
            _fmt(area, ",.0f"),
            _fmt(change, "+.1f", " %"),
            _fmt(_number(rates[i]) if i < len(rates) else None, "+,.1f"),
            _fmt(_number(li[i]) if i < len(li) else None, ".2f"),
            ("yes" if touches[i] else "") if i < len(touches) else "—",
        )
    hidden = len(ids) - min(len(ids), max_rows)
    notes = []
    if hidden:
        notes.append(f"{hidden} smaller particles not shown")
    if not tracked and ids:
        notes.append("labels are per frame: no tracking ids from the service")
    elif state.lithiation_t_s is None and ids:
        notes.append("change counts from contact; no contact yet")
    body: RenderableType = table if ids else Text("no particles in the last result", style="dim")
    if notes and ids:
        body = Group(table, *(Text(note, style="dim") for note in notes))
    return Panel(body, title=f"particles ({len(ids)})", title_align="left")


def _alerts(state: MonitorState, now: float, max_rows: int) -> RenderableType:
    table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
    table.add_column("t (s)", justify="right", no_wrap=True, min_width=7)
    table.add_column("frame", justify="right", no_wrap=True, min_width=5)
    table.add_column("event", no_wrap=True, min_width=19)
    # One line per alert, so the log keeps its height and the newest stay in view.
    table.add_column("message", no_wrap=True, overflow="ellipsis", ratio=1)
    for line in list(state.events)[:max_rows]:
        e = line.event
        fresh = now - line.received_at < HIGHLIGHT_S
        style = "bold yellow" if e.kind in PHYSICAL_EVENTS else "bold red"
        if fresh:
            style += " reverse"
        table.add_row(f"{e.t_s:.2f}", "—" if e.frame < 0 else str(e.frame),
                      Text(e.kind, style=style), e.message)
    body: RenderableType = table if state.events else Text("no alerts yet", style="dim")
    more = len(state.events) - min(len(state.events), max_rows)
    title = "alerts, newest first" + (f" ({more} older)" if more > 0 else "")
    return Panel(body, title=title, title_align="left")


def render(state: MonitorState, *, now: float | None = None, width: int = 100,
           height: int = 40) -> RenderableType:
    """The whole monitor screen for one state: header, experiment, particles, alerts.

    Pure: the same state and clock give the same picture. ``height`` bounds how many
    particle and alert rows are shown, so the screen does not scroll.
    """
    now = time.monotonic() if now is None else now
    # Panels with their borders, headings and fixed rows take 24 lines (19 without the
    # particle table); the rest is shared by particles and alerts, so the screen never
    # scrolls. A short terminal drops the particle table before the alerts.
    if height >= 32:
        spare = height - 24
        return Group(
            _header(state, now),
            _experiment(state, width),
            _particles(state, max_rows=spare // 2),
            _alerts(state, now, max_rows=spare - spare // 2),
        )
    return Group(_header(state, now), _experiment(state, width),
                 _alerts(state, now, max_rows=max(height - 19, 2)))


@contextmanager
def live_monitor(state: MonitorState, *, console: Console | None = None, bell: bool = False,
                 refresh_per_second: float = 4) -> Iterator[Callable[[Message], None]]:
    """Show ``state`` live; yields the function that feeds it messages (thread-safe).

    Used by ``lithoscope demo``, which already receives the results in-process, and by
    :func:`run_monitor`.
    """
    console = console or Console()

    def draw() -> RenderableType:
        with state.lock:
            return render(state, width=console.width, height=console.height)

    def feed(msg: Message) -> None:
        with state.lock:
            ring = state.update(msg)
        if ring and bell:
            console.bell()

    with Live(get_renderable=draw, console=console, refresh_per_second=refresh_per_second,
              redirect_stdout=False, redirect_stderr=False):
        yield feed


def run_monitor(endpoint: str, *, console: Console | None = None, bell: bool = False,
                stop: threading.Event | None = None, exit_on_close: bool = False,
                refresh_per_second: float = 4, curve: ClientCurve | None = None
                ) -> MonitorState:
    """Follow the service at ``endpoint`` until ``stop`` is set (or its session closes).

    Waits for a service that is not up yet and rides out restarts; the screen says which.
    """
    stop = stop or threading.Event()
    state = MonitorState(endpoint=endpoint)
    # A small queue: a paused terminal should show fresh numbers when it resumes, not
    # work through a backlog of stale ones.
    with Subscriber(endpoint, rcvhwm=200, curve=curve) as sub, \
            live_monitor(state, console=console, bell=bell,
                         refresh_per_second=refresh_per_second) as feed:
        while not stop.is_set():
            msg = sub.recv(timeout_s=0.1)
            with state.lock:
                connection = sub.state
                if connection is not state.connection:
                    state.connection, state.connection_since = connection, sub.state_since
                state.restarts, state.missed = sub.restarts, sub.missed
            if msg is None:
                continue
            feed(msg)
            if exit_on_close and state.closed is not None:
                break
    return state
