"""What the CLI prints, as pure functions of plain data (tested like ``monitor.render``).

No I/O here: the commands read archives and messages, these functions turn what was
read into something a person reads (rich renderables or one line of text).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

__all__ = ["event_line", "how_it_ended", "session_summary"]


def how_it_ended(stop_reason: Any) -> str:
    """One line on why an interrupted session stopped (``stop_reason`` in the archive)."""
    return {
        "worker_died": "the worker was killed or crashed mid-session; every frame written "
                       "before that is kept",
        "shutdown": "the service was stopped (Ctrl-C or SIGTERM) mid-session; archive "
                    "flushed and closed",
        "interrupted": "the publisher was stopped mid-session",
        "error": "the source failed mid-session (e.g. a truncated file)",
    }.get(str(stop_reason), f"stopped early ({stop_reason})")


def event_line(t_s: float, frame: int, kind: str, message: str) -> str:
    """An alert as one line of the demo's plain output (rich markup)."""
    return f"  t = {t_s:7.2f} s  frame {frame:5d}  [bold yellow]{kind:<20}[/] {message}"


def _operando_rows(table: Table, operando: Mapping[str, Sequence[float]] | None,
                   book: Mapping[str, float] | None) -> None:
    if operando is not None and len(operando.get("dose_e_per_a2", ())):
        dose = operando["dose_e_per_a2"]
        if dose[-1] > 0:
            rates = [r for r in operando["dose_rate_e_per_a2_s"] if math.isfinite(r)]
            peak = f", {max(rates):.1f} e/Å²/s at most" if rates else ""
            table.add_row("electron dose", f"{dose[-1]:.0f} e/Å² in total{peak}")
    if book is None:
        return
    passed = book["lithium_from_charge"]
    if not (math.isfinite(passed) and passed > 0):  # no bias, or no current (no needle)
        table.add_row("charge passed", "none: no lithium to count")
        return
    table.add_row("charge passed", f"{book['charge_c']:.3g} C = {passed:.3g} Li")
    if not math.isfinite(book["peak_visible"]):
        table.add_row("Li in view", "not measured (no pixel size or no particles)")
        return
    share = book["uptake_fraction"]
    share_text = (f" ({100 * share:.0f} % of the {book['peak_from_charge']:.3g} passed by then)"
                  if math.isfinite(share) else "")
    table.add_row("Li in view, peak", f"{book['peak_visible']:.3g} ± {book['peak_sigma']:.2g} "
                  f"at t = {book['peak_t_s']:.1f} s{share_text}")
    table.add_row("Li in view, end", f"{book['end_visible']:.3g} ± {book['end_sigma']:.2g}; "
                  f"out of view {book['out_of_view_end']:.3g}")


def session_summary(
    summary: Mapping[str, Any], *, operando: Mapping[str, Sequence[float]] | None = None,
    bookkeeping: Mapping[str, float] | None = None, wall_s: float | None = None,
    frames_sent: int | None = None,
) -> RenderableType:
    """A session at a glance: the archive, how it ended, frames, cluster area, dose,
    lithium, and its events.

    Parameters
    ----------
    summary : Mapping
        ``ArchiveReader.summary()``.
    operando : Mapping, optional
        The archive's ``operando`` table (dose columns), when it has one.
    bookkeeping : Mapping, optional
        ``operando.bookkeeping_summary`` of that table, when there was charge to count.
    wall_s, frames_sent : optional
        Wall-clock time and frames sent, for a session just run (demo).
    """
    s = summary
    table = Table(title=f"Session {s['session_id']}", show_header=False, title_justify="left")
    table.add_row("archive", f"{s['path']} ({s['size_bytes'] / 1e6:.1f} MB, {s['status']})")
    if s.get("status") == "interrupted":
        table.add_row("how it ended", how_it_ended(s.get("stop_reason")))
    if s.get("archive_error"):
        table.add_row("archive error", str(s["archive_error"]))
    if s.get("continues"):
        table.add_row("continues", f"{s['continues']} (same session, before a worker restart)")
    if s.get("continued_in"):
        table.add_row("continued in", f"{s['continued_in']} (same session, after a worker "
                                      "restart)")
    table.add_row("source", str(s["source"]))
    if frames_sent is not None:
        table.add_row("frames sent", str(frames_sent))
    table.add_row("frames archived", f"{s['frames']} of {s['shape']} {s['dtype']}")
    table.add_row("frames analysed", str(s["frames_analysed"]))
    table.add_row("duration", f"{s['duration_s']:.1f} s of experiment time")
    if wall_s is not None:
        table.add_row("wall time", f"{wall_s:.1f} s")
    table.add_row("pixel size", f"{s['pixel_size_nm']} nm" if s["pixel_size_nm"] else "unknown")
    cluster = s["cluster"]
    if cluster:
        areas = [c["area_px"] for c in cluster]
        table.add_row("cluster area", f"{areas[0]} px at start, {max(areas)} px at most, "
                                      f"{areas[-1]} px at end")
        diameters = [c.get("particle_diameter_px") or 0.0 for c in cluster]
        found = [d for d in diameters if d > 0]
        if found:  # the scale read from the frames (the one used without a pixel size)
            typical = statistics.median(found)
            nm = f" = {typical * s['pixel_size_nm']:.1f} nm" if s["pixel_size_nm"] else ""
            table.add_row("particle size", f"{typical:.1f} px across{nm} (median over "
                                           "frames, measured on the images)")
    _operando_rows(table, operando, bookkeeping)
    if not s["events"]:
        return Group(table, "No events.")
    events = Table(title="Events", title_justify="left")
    for column in ("t_s", "frame", "kind", "message"):
        events.add_column(column)
    for e in s["events"]:
        events.add_row(f"{e['t_s']:.2f}", str(e["frame"]), e["kind"], e["message"])
    return Group(table, events)
