"""The ``lithoscope`` command: demo, publish, serve, replay, inspect.

Each command is a few lines around library calls. Errors lithoscope raises on
purpose become one line on stderr and exit status 1; a traceback is a bug.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import DEFAULT_FRAMES_ENDPOINT, DEFAULT_RESULTS_ENDPOINT, load_config, parse_endpoint
from .errors import ConfigError, LithoscopeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="lithoscope",
    help="Real-time analysis of operando TEM lithiation experiments: stream camera frames "
    "over ZeroMQ, measure particles and the needle as they come, archive every frame to zarr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("lithoscope")


class Scenario(StrEnum):
    lithiation = "lithiation"
    control = "control"


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    try:
        yield
    except LithoscopeError as exc:
        err_console.print(f"[bold red]lithoscope: error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # tifffile logs its own ERROR line before raising; our one-line error already
        # quotes it, and a second line reads like a crash.
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def parse_speed(value: str | None) -> float | None:
    """``max`` -> None (as fast as the worker takes frames); otherwise a factor > 0."""
    if value is None or value.strip().lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise ConfigError(f"Expected --speed to be a number > 0 or 'max'. Got {value!r}.") from None
    if not speed > 0:
        raise ConfigError(f"Expected --speed to be a number > 0 or 'max'. Got {value!r}.")
    return speed


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set an event instead of killing us mid-write: archives get closed."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C means it
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _client_curve(server_key: Path | None, key: Path | None) -> Any:
    if server_key is None and key is None:
        return None
    if server_key is None or key is None:
        raise ConfigError("A CURVE service needs both --server-key (its public key) and "
                          "--key (this client's secret key).")
    from .security import ClientCurve

    return ClientCurve.load(server_key, key)


def _sender_setup(connect: str, speed: str, server_key: Path | None, key: Path | None, *,
                  results: str | None = None) -> tuple[float | None, threading.Event, Any]:
    """What every command that sends to a service checks first: its endpoints, the
    pace, Ctrl-C handling and the CURVE keys."""
    parse_endpoint(connect, what="frames endpoint", allow_remote=True)
    if results is not None:
        parse_endpoint(results, what="results endpoint", allow_remote=True)
    pace = parse_speed(speed)
    stop = _stop_on_signals()
    return pace, stop, _client_curve(server_key, key)


def _open_source(spec: str, fps: float | None, pixel_size_nm: float | None,
                 scenario: str | None = None, stop: threading.Event | None = None) -> Any:
    from lithoscope.replay.readers import open_source

    return open_source(spec, fps=fps, pixel_size_nm=pixel_size_nm, stop=stop)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log sessions and events.")]
Fps = Annotated[float | None, typer.Option(
    "--fps", min=1e-6, help="Frame rate of the recording, when the file does not say.")]
ServerPublicKey = Annotated[Path | None, typer.Option(
    "--server-key", help="The service's public key file (server.key), for a CURVE service.")]
ClientSecretKey = Annotated[Path | None, typer.Option(
    "--key", help="This client's secret key file (NAME.key_secret), for a CURVE service.")]
PixelSize = Annotated[float | None, typer.Option(
    "--pixel-size", min=1e-6, help="Pixel size in nm, when the file does not say (overrides it).")]


@app.command()
def demo(
    sessions: Annotated[Path, typer.Option(help="Folder for the session archive.")] = Path(
        "sessions"),
    scenario: Annotated[Scenario, typer.Option(help="Simulated experiment.")] = (
        Scenario.lithiation),
    speed: Annotated[float, typer.Option(
        min=0.01, help="Pace of the simulated experiment relative to real time.")] = 2.0,
    monitor: Annotated[bool, typer.Option(
        help="Show the live monitor on a terminal; --no-monitor prints alerts line by line "
        "(for scripts and logs).")] = True,
    verbose: Verbose = False,
) -> None:
    """Run a simulated operando experiment through the real pipeline and summarise it.

    A simulated camera streams a needle touching a silicon particle cluster, the bias
    switching on, the particles swelling, the needle withdrawing and the cluster
    shrinking; the worker analyses and archives every frame under SESSIONS.
    """
    from .config import ServiceConfig
    from .protocol import Event
    from .session import run_local_session
    from .sources.echem import SimulatedEchem
    from .sources.sim import SimulatedSource

    _setup_logging(verbose)
    with _friendly_errors():
        stop = _stop_on_signals()
        config = ServiceConfig(sessions_dir=str(sessions))
        source = SimulatedSource(scenario=scenario.value)
        info = source.info
        wall_s = (info.frame_count or 0) / (info.fps or 1) / speed
        console.print(f"[bold]lithoscope demo[/] {__version__}: {info.name}, "
                      f"{info.frame_count} frames of {info.shape} at {info.fps:g} fps, "
                      f"played at {speed:g}x ({wall_s:.0f}"
                      " s). Ctrl-C stops early and keeps what was recorded.")

        def show(msg: Any) -> None:
            if isinstance(msg, Event):
                console.print(f"  t = {msg.t_s:7.2f} s  frame {msg.frame:5d}  "
                              f"[bold yellow]{msg.kind:<20}[/] {msg.message}", highlight=False)

        started = time.monotonic()
        with _demo_display(monitor, show) as (on_message, on_frame):
            echem = SimulatedEchem(source.config, scenario=scenario.value)
            report = run_local_session(source, config=config, speed=speed, live=True,
                                       on_message=on_message, on_frame=on_frame, stop=stop,
                                       echem=echem)
        wall = time.monotonic() - started
        if report.closed is None:
            raise LithoscopeError("The worker did not confirm the end of the session.")
        _print_summary(Path(report.closed.archive_path), wall_s=wall,
                       frames_sent=report.frames_sent)


@app.command()
def publish(
    source: Annotated[str, typer.Argument(
        help="'sim' (or sim:control), a TIFF stack, AVI/MP4 movie, DM3/DM4, EMD or MRC "
        "file, image folder, archive, watch:DIR (frames as the camera software saves them; "
        "ends on a file named lithoscope.stop or after 60 s without a new frame) or "
        "imagezmq://tcp://*:5555 (receive from imagezmq ImageSenders; ends after 30 s "
        "without a frame).")],
    connect: Annotated[str, typer.Option(help="The service's frames endpoint.")] = (
        DEFAULT_FRAMES_ENDPOINT),
    results: Annotated[str, typer.Option(
        help="The service's results endpoint (to confirm the session was archived).")] = (
        DEFAULT_RESULTS_ENDPOINT),
    speed: Annotated[str, typer.Option(
        help="Pace: a factor of real time, or 'max' for as fast as the worker takes frames.")
    ] = "1",
    fps: Fps = None,
    pixel_size: PixelSize = None,
    archive_name: Annotated[str | None, typer.Option(
        help="Name for the session's archive on the service (default: the session id).")] = None,
    server_key: ServerPublicKey = None,
    key: ClientSecretKey = None,
    verbose: Verbose = False,
) -> None:
    """Stream a source's frames to a running service (e.g. beside a camera)."""
    from .publisher import Publisher

    _setup_logging(verbose)
    with _friendly_errors():
        pace, stop, curve = _sender_setup(connect, speed, server_key, key,
                                          results=results)
        with _open_source(source, fps, pixel_size, stop=stop) as src, \
                Publisher(connect, results_endpoint=results, curve=curve) as publisher:
            console.print(f"Publishing {src.info.name} to {connect} ...")
            if src.info.kind in ("watch", "imagezmq"):
                # Frames arrive at the camera's pace already; pacing by their time stamps
                # would replay a folder's backlog in real time, lagging the camera.
                pace = None
            report = publisher.publish(src, speed=pace, archive_name=archive_name,
                                       fps=fps, pixel_size_nm=pixel_size, stop=stop)
        console.print(f"Sent {report.frames_sent} frames in {report.wall_s:.1f} s "
                      f"(session {report.session_id}).")
        if report.closed is None:
            raise LithoscopeError(f"The service at {results} did not confirm that session "
                                  f"{report.session_id} was archived.")
        console.print(f"Archived {report.closed.frames_archived} frames to "
                      f"{report.closed.archive_path}.")


@app.command("publish-echem")
def publish_echem(
    source: Annotated[str, typer.Argument(
        help="A CSV log with a header row and a time column (t_unix/timestamp: Unix s; "
        "t_s/time/s/time: s since --t0-unix), tailed as it is written; a BioLogic EC-Lab "
        ".mpr or .mpt file (needs lithoscope[echem]), re-read as it grows; or 'sim' / "
        "'sim:SCENARIO', the simulated experiment's potentiostat.")],
    connect: Annotated[str, typer.Option(help="The service's frames endpoint.")] = (
        DEFAULT_FRAMES_ENDPOINT),
    clock_offset: Annotated[float, typer.Option(
        "--clock-offset", help="Seconds added to the instrument's times to put them on the "
        "camera's clock (camera minus instrument); archived with every sample.")] = 0.0,
    t0_unix: Annotated[float | None, typer.Option(
        "--t0-unix", help="Unix time of t = 0 for a log with relative times (default: the "
        "start recorded in an EC-Lab file, else now).")] = None,
    session: Annotated[str | None, typer.Option(
        help="Session to file the samples under (default: the one the service has open).")
    ] = None,
    time_column: Annotated[str | None, typer.Option(help="CSV time column name.")] = None,
    bias_column: Annotated[str | None, typer.Option(help="CSV bias column name (V).")] = None,
    current_column: Annotated[str | None, typer.Option(
        help="CSV current column name (A; a name ending /mA, _ma, ... is scaled).")] = None,
    idle_timeout: Annotated[float, typer.Option(
        min=0.1, help="End after the log has not grown for this many seconds.")] = 60.0,
    speed: Annotated[str, typer.Option(
        help="Pace of 'sim': a factor of real time, or 'max'.")] = "1",
    server_key: ServerPublicKey = None,
    key: ClientSecretKey = None,
    verbose: Verbose = False,
) -> None:
    """Stream bias and current beside the frames: a potentiostat or biasing-holder log."""
    from .publisher import EchemPublisher
    from .sources.echem import open_echem_source

    _setup_logging(verbose)
    with _friendly_errors():
        pace, stop, curve = _sender_setup(connect, speed, server_key, key)
        with open_echem_source(source, t0_unix=t0_unix, time_column=time_column,
                               bias_column=bias_column, current_column=current_column,
                               idle_timeout_s=idle_timeout, stop=stop) as src, \
                EchemPublisher(connect, curve=curve, ack_timeout_s=5.0) as publisher:
            console.print(f"Publishing {src.name} to {connect} ...")
            report = publisher.publish_echem(src, speed=pace, clock_offset_s=clock_offset,
                                             session_id=session, stop=stop)
        console.print(f"Sent {report.samples} samples in {report.batches} batches"
                      f"{' (interrupted)' if report.interrupted else ''}.")


@app.command()
def serve(
    frames: Annotated[str | None, typer.Option(
        help=f"Endpoint to receive frames on (default {DEFAULT_FRAMES_ENDPOINT}).")] = None,
    results: Annotated[str | None, typer.Option(
        help=f"Endpoint to publish results on (default {DEFAULT_RESULTS_ENDPOINT}).")] = None,
    sessions: Annotated[Path | None, typer.Option(
        help="Folder receiving one archive per session (default sessions).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="TOML file with service, analysis and alert settings.")] = None,
    allow_remote: Annotated[bool, typer.Option(
        help="Allow listening on interfaces other than loopback (needs --server-key and "
        "--client-keys).")] = False,
    server_key: Annotated[Path | None, typer.Option(
        help="The service's secret key file (NAME.key_secret from `lithoscope keys`); turns "
        "on CURVE encryption and authentication.")] = None,
    client_keys: Annotated[Path | None, typer.Option(
        help="Folder of the public keys (*.key) of the clients allowed to connect.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Measuring processes: frames are segmented in N processes and joined up in "
        "order here (0: in this process). Others may join with `lithoscope measure`.",
        min=0)] = None,
    measure_jobs: Annotated[str | None, typer.Option(
        help="Endpoint where measuring processes fetch frames (default: a local ipc "
        "socket); a tcp address lets other hosts join.")] = None,
    measure_results: Annotated[str | None, typer.Option(
        help="Endpoint where measuring processes send measurements back.")] = None,
    verbose: Verbose = False,
) -> None:
    """Run the analysis worker as a service until Ctrl-C or SIGTERM.

    It archives every session that a publisher streams to it, and publishes
    per-frame results, alerts and a heartbeat for monitors and other tools.
    """
    import faulthandler

    from .worker import Worker

    _setup_logging(verbose)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: a service that seems
    # stuck at 2 a.m. can say where, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with _friendly_errors():
        settings = load_config(config).replace(
            frames_endpoint=frames, results_endpoint=results,
            sessions_dir=str(sessions) if sessions else None,
            allow_remote=allow_remote or None,
            server_key=str(server_key) if server_key else None,
            client_keys=str(client_keys) if client_keys else None,
            workers=workers, measure_jobs_endpoint=measure_jobs,
            measure_results_endpoint=measure_results)
        stop = _stop_on_signals()
        with Worker(settings) as worker:
            frames_at, results_at = worker.bind()
            for path, meta in worker.recover_abandoned():
                console.print(f"{path} was left open by a worker that stopped without "
                              f"closing it: marked interrupted, {meta['frame_count']} frames "
                              "kept.", highlight=False)
            console.print(f"lithoscope serve {__version__}: receiving frames on {frames_at}, "
                          f"publishing results on {results_at}, archiving into "
                          f"{Path(settings.sessions_dir).resolve()}", highlight=False)
            worker.run(stop)
        console.print("lithoscope serve: stopped; open archives were closed.")


@app.command()
def measure(
    jobs: Annotated[str, typer.Option(
        help="The service's measure-jobs endpoint (serve --measure-jobs).")],
    results: Annotated[str, typer.Option(
        help="The service's measure-results endpoint (serve --measure-results).")],
    server_key: ServerPublicKey = None,
    key: ClientSecretKey = None,
    verbose: Verbose = False,
) -> None:
    """Measure frames for a service on another host, until Ctrl-C.

    Joins `lithoscope serve --measure-jobs tcp://HOST:PORT --measure-results
    tcp://HOST:PORT2`: takes frames, segments and measures them, sends the
    measurements back; the service joins them up in order. Start as many as there
    are spare cores; they may come and go during a session.
    """
    from .fanout import run_measurer

    _setup_logging(verbose)
    with _friendly_errors():
        curve = _client_curve(server_key, key)
        stop = _stop_on_signals()
        console.print(f"lithoscope measure: taking frames from {jobs}, answering to {results}",
                      highlight=False)
        done = run_measurer(jobs, results, stop=stop, curve=curve)
        console.print(f"lithoscope measure: stopped after {done} frames.")


@app.command()
def keys(
    folder: Annotated[Path, typer.Argument(help="Folder to write the key files into.")],
    name: Annotated[str, typer.Option(
        help="Key name: 'server' for the service, or one per client machine.")] = "server",
) -> None:
    """Create a CURVE key pair: NAME.key (public) and NAME.key_secret (keep private).

    The service needs its own pair (serve --server-key NAME.key_secret) and a folder
    holding the public key of every client allowed in (serve --client-keys FOLDER);
    each client needs its own pair and the service's public key (publish --key,
    --server-key). Only loopback works without keys.
    """
    from .security import create_keys

    with _friendly_errors():
        public, secret = create_keys(folder, name)
    console.print(f"Public key: {public} (copy it to whoever must know this key)\n"
                  f"Secret key: {secret} (keep it on this machine)", highlight=False)


@app.command()
def replay(
    source: Annotated[str, typer.Argument(
        help="A TIFF stack, AVI/MP4 movie, image folder (sorted by name) or lithoscope archive.")],
    archive: Annotated[Path, typer.Option(help="Where to write the new archive (.zarr).")],
    speed: Annotated[str, typer.Option(
        help="Pace: a factor of real time, or 'max' for as fast as the worker takes frames.")
    ] = "max",
    fps: Fps = None,
    pixel_size: PixelSize = None,
    connect: Annotated[str | None, typer.Option(
        help="Frames endpoint of a running service; by default replay starts its own worker.")
    ] = None,
    results: Annotated[str, typer.Option(
        help="Results endpoint of that service (with --connect).")] = DEFAULT_RESULTS_ENDPOINT,
    verbose: Verbose = False,
) -> None:
    """Feed a recording through the same publisher -> ZeroMQ -> worker path, losslessly.

    Every frame reaches the archive, in order and bit-identical, whatever the speed.
    With --connect, the running service archives it in its own folder under the name
    of --archive.
    """
    from .publisher import Publisher
    from .session import run_local_session

    _setup_logging(verbose)
    with _friendly_errors():
        pace = parse_speed(speed)
        if connect is None and archive.exists():
            raise ConfigError(f"{archive} already exists; choose a new --archive path.")
        stop = _stop_on_signals()
        started = time.monotonic()
        with _open_source(source, fps, pixel_size) as src:
            if src.info.fps is None and fps is None and pace is not None:
                raise ConfigError(f"{source} does not record its frame rate; give --fps "
                                  "or use --speed max.")
            console.print(f"Replaying {src.info.name} ({src.info.frame_count or '?'} frames) ...")
            if connect is None:
                report = run_local_session(src, archive_path=archive, speed=pace, live=False,
                                           fps=fps, pixel_size_nm=pixel_size, stop=stop)
            else:
                parse_endpoint(connect, what="frames endpoint", allow_remote=True)
                with Publisher(connect, results_endpoint=results) as publisher:
                    report = publisher.publish(src, speed=pace, live=False, fps=fps,
                                               pixel_size_nm=pixel_size,
                                               archive_name=archive.name, stop=stop)
        wall = time.monotonic() - started
        closed = report.closed
        if closed is None:
            raise LithoscopeError(f"The worker did not confirm that session {report.session_id} "
                                  "was archived.")
        console.print(f"Replayed {report.frames_sent} frames in {wall:.1f} s "
                      f"({report.frames_sent / max(wall, 1e-9):.1f} frames/s); archived "
                      f"{closed.frames_archived} to {closed.archive_path}.", highlight=False)
        if report.interrupted:
            raise LithoscopeError("Interrupted: the archive holds the frames sent so far.")
        if closed.frames_archived != report.frames_sent:
            raise LithoscopeError(f"Only {closed.frames_archived} of {report.frames_sent} "
                                  "frames reached the archive.")


@app.command()
def inspect(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Summarise an archived session: frames, duration, pixel size, events, cluster area."""
    from .archive import ArchiveReader

    with _friendly_errors():
        summary = ArchiveReader(archive).summary()
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
            return
        _print_summary(archive, summary=summary)


def _print_summary(path: Path, *, summary: dict[str, Any] | None = None,
                   wall_s: float | None = None, frames_sent: int | None = None) -> None:
    from .archive import ArchiveReader

    s = summary or ArchiveReader(path).summary()
    table = Table(title=f"Session {s['session_id']}", show_header=False, title_justify="left")
    table.add_row("archive", f"{s['path']} ({s['size_bytes'] / 1e6:.1f} MB, {s['status']})")
    if s.get("status") == "interrupted":
        table.add_row("how it ended", _how_it_ended(s.get("stop_reason")))
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
            typical = float(np.median(found))
            nm = f" = {typical * s['pixel_size_nm']:.1f} nm" if s["pixel_size_nm"] else ""
            table.add_row("particle size", f"{typical:.1f} px across{nm} (median over "
                                           "frames, measured on the images)")
    _add_operando_rows(table, path)
    console.print(table)
    events = Table(title="Events", title_justify="left")
    for column in ("t_s", "frame", "kind", "message"):
        events.add_column(column)
    for e in s["events"]:
        events.add_row(f"{e['t_s']:.2f}", str(e["frame"]), e["kind"], e["message"])
    console.print(events if s["events"] else "No events.")


def _add_operando_rows(table: Table, path: Path) -> None:
    """Dose and the lithium bookkeeping, when the session recorded them."""
    from .archive import ArchiveReader
    from .errors import ArchiveError
    from .operando import bookkeeping_summary

    try:
        operando = ArchiveReader(path).table("operando")
    except ArchiveError:
        return
    if not operando or not len(operando.get("frame", [])):
        return
    dose = operando["dose_e_per_a2"]
    if len(dose) and dose[-1] > 0:
        rate = operando["dose_rate_e_per_a2_s"]
        table.add_row("electron dose", f"{dose[-1]:.0f} e/Å² in total, "
                      f"{float(np.nanmax(rate)):.1f} e/Å²/s at most")
    book = bookkeeping_summary(operando)
    if book is None:
        return
    table.add_row("charge passed", f"{book['charge_c']:.3g} C = {book['lithium_from_charge']:.3g}"
                  " Li")
    table.add_row("Li in view, peak", f"{book['peak_visible']:.3g} ± {book['peak_sigma']:.2g} at "
                  f"t = {book['peak_t_s']:.1f} s ({100 * book['uptake_fraction']:.0f} % of the "
                  f"{book['peak_from_charge']:.3g} passed by then)")
    table.add_row("Li in view, end", f"{book['end_visible']:.3g} ± {book['end_sigma']:.2g}; "
                  f"out of view {book['out_of_view_end']:.3g}")


def _how_it_ended(stop_reason: Any) -> str:
    return {
        "worker_died": "the worker was killed or crashed mid-session; every frame written "
                       "before that is kept",
        "shutdown": "the service was stopped (Ctrl-C or SIGTERM) mid-session; archive "
                    "flushed and closed",
        "interrupted": "the publisher was stopped mid-session",
        "error": "the source failed mid-session (e.g. a truncated file)",
    }.get(str(stop_reason), f"stopped early ({stop_reason})")


# -- clients: the monitor, reports and ready tools (lithoscope.clients, imported lazily) --

Connect = Annotated[str, typer.Option(
    help="The service's results endpoint.")]
ServerKey = Annotated[Path | None, typer.Option(
    help="The service's public key, for a service that requires CURVE.")]
ClientKey = Annotated[Path | None, typer.Option(
    "--key", help="This client's secret key, for a service that requires CURVE.")]
ExitOnClose = Annotated[bool, typer.Option(
    help="Stop when the session being followed closes (instead of waiting for the next).")]


@contextlib.contextmanager
def _demo_display(monitor: bool, fallback: Any) -> Iterator[tuple[Any, Any]]:
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


@app.command()
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

    with _friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        curve = _client_curve(server_key, key)
        stop = _stop_on_signals()
        run_monitor(connect, console=console, bell=bell, stop=stop,
                    exit_on_close=exit_on_close, curve=curve)


class LogFormatChoice(StrEnum):
    csv = "csv"
    parquet = "parquet"


@app.command("log")
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

    with _friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        curve = _client_curve(server_key, key)
        stop = _stop_on_signals()
        with MeasurementLogger(out, format=fmt.value) as logger, Subscriber(

                connect, topics=["result", "event", "session_closed"], curve=curve) as sub:
            console.print(f"Logging {connect} to {out}/ ... (Ctrl-C stops)", highlight=False)
            for msg in sub.follow(stop=stop, until_closed=exit_on_close):
                logger.write(msg)
        console.print(summary_line(logger), highlight=False)


@app.command()
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

    with _friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        forwarder = Forwarder(kinds.split(","), command=run, url=url, timeout_s=timeout)
        curve = _client_curve(server_key, key)
        stop = _stop_on_signals()
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


@app.command()
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

    with _friendly_errors():
        parse_endpoint(connect, what="results endpoint", allow_remote=True)
        if out.suffix.lower() != ".png":
            raise ConfigError(f"Expected --out to name a .png file. Got {out}.")
        if not out.parent.is_dir():
            raise ConfigError(f"Folder {out.parent} does not exist.")
        curve = _client_curve(server_key, key)
        stop = _stop_on_signals()
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


@app.command()
def report(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    out: Annotated[Path, typer.Option(help="Folder for the figures and summary.md.")],
    particles: Annotated[int, typer.Option(
        min=1, max=20, help="How many particles to plot.")] = 6,
) -> None:
    """Figures, an event montage and a Markdown summary of an archived session."""
    from rich.progress import Progress

    from lithoscope.clients.report import make_report

    with _friendly_errors():
        from .archive import ArchiveReader

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
    mp4 = "mp4"
    avi = "avi"


@app.command()
def export(
    archive: Annotated[Path, typer.Argument(help="A session archive (.zarr folder).")],
    to: Annotated[ExportTarget, typer.Option(
        "--to", help="csv / parquet: one file per table; tiff: the frames (ImageJ, at "
        "scale); mp4 / avi: a movie with outlines, needle, clock and alerts burned in.")],
    output: Annotated[Path | None, typer.Option(
        help="Folder (tables) or file (frames); default beside the archive.")] = None,
    reanalysis: Annotated[str | None, typer.Option(
        help="Tables of this re-analysis run ('latest' for the newest) instead of the "
        "live ones.")] = None,
) -> None:
    """Export an archive for other tools: tables, a TIFF stack, or a movie for talks."""
    from .export import export_archive

    with _friendly_errors():
        written = export_archive(archive, to.value, output, reanalysis=reanalysis)
    for path in written:
        console.print(f"Wrote {path}", highlight=False)


@app.command()
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
    verbose: Verbose = False,
) -> None:
    """Re-run the analysis with new settings over archives on a Dask cluster.

    One task per archive (the analysis follows each session frame by frame, as live).
    The new measurement tables go into reanalysis/RUN/ inside each archive, beside the
    live ones; frames and live tables are not touched. Read them back with
    open_archive(path, reanalysis="latest") or export --reanalysis latest.
    """
    from .reanalyze import reanalyze as run_reanalysis

    _setup_logging(verbose)
    with _friendly_errors():
        settings = load_config(config)
        started = time.monotonic()
        results = run_reanalysis(archives, analysis=settings.analysis, alerts=settings.alerts,
                                 scheduler=scheduler, run=run, local_workers=workers)
    for result in results:
        kinds = ", ".join(f"{e['kind']} (frame {e['frame']})" for e in result.events)
        console.print(f"{result.path}: {result.frames_analysed} frames re-analysed into "
                      f"reanalysis/{result.run}; events: {kinds or 'none'}", highlight=False)
    console.print(f"Done in {time.monotonic() - started:.1f} s.")


def main() -> None:
    """Console-script entry point."""
    app()
