"""Archive tools: inspect, report, export and reanalyze sessions already recorded."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError
from ._common import (
    Verbose,
    app,
    console,
    err_console,
    friendly_errors,
    progress_bar,
    progress_rows,
    setup_logging,
)
from .render import session_summary

__all__ = ["show_session"]


def show_session(path: Path, *, summary: dict[str, Any] | None = None,
                 wall_s: float | None = None, frames_sent: int | None = None) -> None:
    """Print :func:`.render.session_summary` of the archive at ``path``."""
    from ..archive import ArchiveReader
    from ..errors import ArchiveError
    from ..operando.context import bookkeeping_summary

    reader = ArchiveReader(path)
    try:
        operando = reader.table("operando") or None
    except ArchiveError:
        operando = None
    book = bookkeeping_summary(operando) if operando and len(operando.get("frame", [])) \
        else None
    console.print(session_summary(
        summary or reader.summary(),
        operando={k: [float(x) for x in operando[k]]
                  for k in ("dose_e_per_a2", "dose_rate_e_per_a2_s")} if operando else None,
        bookkeeping=book, wall_s=wall_s, frames_sent=frames_sent))


@app.command(rich_help_panel="Archive tools")
def inspect(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Summarise an archived session: frames, duration, pixel size, events, cluster area."""
    from ..archive import ArchiveReader

    with friendly_errors():
        summary = ArchiveReader(archive).summary()
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
            return
        show_session(archive, summary=summary)


@app.command(rich_help_panel="Archive tools")
def report(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    out: Annotated[Path, typer.Option(help="Folder for the figures and summary.md.")],
    particles: Annotated[int, typer.Option(
        min=1, max=20, help="How many particles to plot.")] = 6,
) -> None:
    """Figures, an event montage and a Markdown summary of an archived session."""
    from rich.progress import Progress

    from lithoscope.clients.report import make_report

    from ..archive import ArchiveReader

    with friendly_errors():
        ArchiveReader(archive)  # a wrong path fails in one line before any work starts
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"Cannot create {out}: {exc.strerror or exc}.") from None

        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("report", total=None)

            def on_progress(done: int, total: int, what: str) -> None:
                progress.update(task, completed=done, total=total, description=what)

            files = make_report(archive, out, on_progress=on_progress, highlight=particles)
        console.print(f"Wrote {files.summary} and "
                      f"{', '.join(p.name for p in files.figures.values())}.", highlight=False)


class ExportTarget(StrEnum):
    csv = "csv"
    parquet = "parquet"
    tiff = "tiff"
    ome_tiff = "ome-tiff"
    hspy = "hspy"
    zspy = "zspy"
    mp4 = "mp4"
    avi = "avi"


@app.command(rich_help_panel="Archive tools")
def export(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    to: Annotated[ExportTarget, typer.Option(
        "--to", help="csv / parquet: one file per table, and trackpy's trajectories; tiff: "
        "the frames (ImageJ, at scale); ome-tiff: the frames for Fiji / Bio-Formats (OME-XML "
        "calibration and plane times); hspy / zspy: the frames for HyperSpy, as HDF5 "
        "or as a zarr folder (needs lithoscope[formats]); mp4 / avi: a movie with "
        "outlines, needle, clock and alerts burned in.")],
    output: Annotated[Path | None, typer.Option(
        help="Folder (tables) or file (frames); default beside the archive.")] = None,
    reanalysis: Annotated[str | None, typer.Option(
        help="Tables of this re-analysis run ('latest' for the newest) instead of the "
        "live ones.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object listing what was written.")] = False,
) -> None:
    """Export an archive for other tools: tables, a TIFF / OME-TIFF stack, an .hspy file
    or .zspy folder, or a movie for talks."""
    from ..archive import ArchiveReader
    from ..offline.export import export_archive
    from ..schema import TABLES

    with friendly_errors():
        started = time.monotonic()
        if to in (ExportTarget.csv, ExportTarget.parquet):
            total: int | None = len(TABLES) + 1
        else:
            total = ArchiveReader(archive).frame_count
        with progress_bar(f"export {to.value}", total) as advance:
            written = export_archive(archive, to.value, output, reanalysis=reanalysis,
                                     progress=advance)
    if as_json:
        sys.stdout.write(json.dumps({"archive": str(archive), "to": to.value,
                                     "written": [str(path) for path in written],
                                     "wall_s": round(time.monotonic() - started, 3)}) + "\n")
        return
    for path in written:
        console.print(f"Wrote {path}", highlight=False)


@app.command(rich_help_panel="Archive tools")
def reanalyze(
    archives: Annotated[list[Path], typer.Argument(help="Session archives (.zarr folders).")],
    config: Annotated[Path | None, typer.Option(
        help="TOML file with the new [analysis] and [alerts] settings (as for serve); "
        "default: this version's defaults.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="A Dask scheduler, e.g. tcp://host:8786 (its workers must see the archives "
        "at the same paths); default: a local cluster for this run.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Workers of the local cluster (default 1, with 2 threads).")] = None,
    run: Annotated[str | None, typer.Option(
        help="Name of the new reanalysis/ group (default: UTC time stamp).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per archive (a list) and nothing else.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Re-run the analysis with new settings over archives on a Dask cluster.

    One task per archive (the analysis follows each session frame by frame, as live).
    The new measurement tables go into reanalysis/RUN/ inside each archive, beside the
    live ones; frames and live tables are not touched. Read them back with
    open_archive(path, reanalysis="latest") or export --reanalysis latest.
    """
    from ..archive import ArchiveReader
    from ..config import load_config
    from ..offline.reanalyze import reanalyze as run_reanalysis

    setup_logging(verbose)
    with friendly_errors():
        settings = load_config(config)
        started = time.monotonic()
        rows = {archive: row for row, archive in enumerate(archives)}
        with progress_rows([(f"reanalyze {archive.name}", ArchiveReader(archive).frame_count)
                            for archive in archives]) as set_row:
            results = run_reanalysis(
                archives, analysis=settings.analysis, alerts=settings.alerts,
                scheduler=scheduler, run=run, local_workers=workers,
                frame_progress=lambda archive, done, total: set_row(rows[archive], done))
    if as_json:
        sys.stdout.write(json.dumps([
            {"archive": str(result.path), "run": result.run,
             "frames_analysed": result.frames_analysed,
             "events": [{"kind": e["kind"], "frame": e["frame"]} for e in result.events]}
            for result in results]) + "\n")
        return
    for result in results:
        kinds = ", ".join(f"{e['kind']} (frame {e['frame']})" for e in result.events)
        console.print(f"{result.path}: {result.frames_analysed} frames re-analysed into "
                      f"reanalysis/{result.run}; events: {kinds or 'none'}", highlight=False)
    console.print(f"Done in {time.monotonic() - started:.1f} s.")
