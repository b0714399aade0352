"""Client commands: follow a running service from any machine.

``monitor``, ``log``, ``forward``, ``plot`` and ``view``; each imports its client from
:mod:`lithoscope.clients` when run, and none loads the analysis (no OpenCV).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ..endpoints import DEFAULT_RESULTS_ENDPOINT, parse_endpoint
from ..errors import ConfigError
from ._common import app, client_curve, console, friendly_errors, stop_on_signals

__all__: list[str] = []

PANEL = "Clients (follow a running service)"

Connect = Annotated[str, typer.Option(
    help="The service's results endpoint.")]
ServerKey = Annotated[Path | None, typer.Option(
    help="The service's public key, for a service that requires CURVE.")]
ClientKey = Annotated[Path | None, typer.Option(
    "--key", help="This client's secret key, for a service that requires CURVE.")]
ExitOnClose = Annotated[bool, typer.Option(
    help="Stop when the session being followed closes (instead of waiting for the next).")]


@app.command(rich_help_panel=PANEL)
def monitor(
    connect: Connect = DEFAULT_RESULTS_ENDPOINT,
    bell: Annotated[bool, typer.Option(
        help="Ring the terminal bell on events about the sample (contact, expansion, ...).")
    ] = False,
    exit_on_close: ExitOnClose = False,
    server_key: ServerKey = None,
    key: ClientKey = None,
) -> None:
    """Watch a running service live: counters, needle contact, cluster area, particles,
    alerts.

    Waits for a service that is not up yet and reconnects if it restarts. A slow or
    paused monitor only misses screen updates; the service never waits for it.
    """
    from lithoscope.clients.monitor import run_monitor

    with friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        curve = client_curve(server_key, key)
        stop = stop_on_signals()
        run_monitor(connect, console=console, bell=bell, stop=stop,
                    exit_on_close=exit_on_close, curve=curve)


class LogFormatChoice(StrEnum):
    csv = "csv"
    parquet = "parquet"


@app.command("log", rich_help_panel=PANEL)
def log_measurements(
    out: Annotated[Path, typer.Option(help="Folder for the files (one set per session).")],
    connect: Connect = DEFAULT_RESULTS_ENDPOINT,
    fmt: Annotated[LogFormatChoice, typer.Option(
        "--format", help="csv, or parquet when pyarrow is installed.")] = LogFormatChoice.csv,

    exit_on_close: ExitOnClose = False,
    server_key: ServerKey = None,
    key: ClientKey = None,
) -> None:
    """Log every frame's measurements, the particles and the events of a running
    service to CSV (or Parquet) files, for spreadsheets and pandas."""
    from lithoscope.clients.logger import MeasurementLogger, summary_line
    from lithoscope.clients.subscriber import Subscriber

    with friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        curve = client_curve(server_key, key)
        stop = stop_on_signals()
        with MeasurementLogger(out, format=fmt.value) as logger, Subscriber(

                connect, topics=["result", "event", "session_closed"], curve=curve) as sub:
            console.print(f"Logging {connect} to {out}/ ... (Ctrl-C stops)", highlight=False)
            for msg in sub.follow(stop=stop, until_closed=exit_on_close):
                logger.write(msg)
        console.print(summary_line(logger), highlight=False)


@app.command(rich_help_panel=PANEL)
def forward(
    kinds: Annotated[str, typer.Option(
        help="Comma-separated event kinds to forward, or 'all'.")] = "contact_made,contact_lost",
    run: Annotated[str | None, typer.Option(
        help="Command to run per event (no shell); the event is in LITHOSCOPE_EVENT_* "
        "variables and as JSON on stdin.")] = None,
    url: Annotated[str | None, typer.Option(
        help="http(s) URL that receives each event as a JSON POST.")] = None,
    connect: Connect = DEFAULT_RESULTS_ENDPOINT,
    timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds a command or request may take.")] = 10.0,
    exit_on_close: ExitOnClose = False,
    server_key: ServerKey = None,
    key: ClientKey = None,
) -> None:
    """Run a command or post to a URL whenever chosen alerts arrive (notify a phone,
    start a camera recording, write to a lab journal)."""
    from lithoscope.clients.forward import Forwarder
    from lithoscope.clients.subscriber import Subscriber
    from lithoscope.service.protocol import Event

    with friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        forwarder = Forwarder(kinds.split(","), command=run, url=url, timeout_s=timeout)
        curve = client_curve(server_key, key)
        stop = stop_on_signals()
        with Subscriber(connect, topics=["event", "session_closed"], curve=curve) as sub:
            console.print(f"Forwarding {', '.join(sorted(forwarder.kinds))} from {connect} "
                          "... (Ctrl-C stops)", highlight=False)
            for msg in sub.follow(stop=stop, until_closed=exit_on_close):
                if not isinstance(msg, Event):
                    continue
                for outcome in forwarder.handle(msg):
                    status = "ok" if outcome.ok else f"[red]failed[/]: {outcome.detail}"
                    console.print(f"t = {msg.t_s:7.2f} s  {msg.kind:<20} -> {outcome.target}: "
                                  f"{status}", highlight=False)


@app.command(rich_help_panel=PANEL)
def plot(
    out: Annotated[Path, typer.Option(help="PNG file kept up to date.")] = Path("areas.png"),
    connect: Connect = DEFAULT_RESULTS_ENDPOINT,
    every: Annotated[float, typer.Option(
        min=0.1, help="Seconds between redraws.")] = 2.0,
    exit_on_close: ExitOnClose = False,
    server_key: ServerKey = None,
    key: ClientKey = None,
) -> None:
    """Keep a PNG of the cluster and particle area curves up to date (open it in an
    image viewer that reloads, or serve it to a web page)."""
    from lithoscope.clients.plots import LivePlot
    from lithoscope.clients.subscriber import Subscriber

    with friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        if out.suffix.lower() != ".png":
            raise ConfigError(f"Expected --out to name a .png file. Got {out}.")
        if not out.parent.is_dir():
            raise ConfigError(f"Folder {out.parent} does not exist.")
        curve = client_curve(server_key, key)
        stop = stop_on_signals()
        live_plot = LivePlot(out, every_s=every)
        with Subscriber(connect, topics=["session_start", "result", "event", "session_closed"],
                        curve=curve) as sub:
            console.print(f"Plotting {connect} into {out} every {every:g} s ... "
                          "(Ctrl-C stops)", highlight=False)
            for msg in sub.follow(stop=stop, until_closed=exit_on_close):
                live_plot.update(msg)
        if live_plot.t:
            live_plot.draw()
            console.print(f"Wrote {out}.", highlight=False)


@app.command(rich_help_panel=PANEL)
def view(
    archive: Annotated[Path | None, typer.Argument(
        help="A session archive to open; without it, follow the running service.")] = None,
    connect: Connect = DEFAULT_RESULTS_ENDPOINT,
    server_key: ServerKey = None,
    key: ClientKey = None,
) -> None:
    """See what the analysis sees, in napari: the frame with each particle's outline and
    track id, the needle and grid shaded, the events and the cluster area; live from a
    running service, or an archive with a time slider. Needs the [view] extra."""
    from lithoscope.clients.viewer import follow_service, open_archive, require_napari

    with friendly_errors():
        require_napari()
        if archive is not None:
            open_archive(archive)
            return
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        follow_service(connect, curve=client_curve(server_key, key))
