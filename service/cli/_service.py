"""Commands for the microscope PC: run the service, feed it frames and bias, try it out.

``demo``, ``serve``, ``publish``, ``publish-echem``, ``replay``, ``measure``, ``keys``
and ``config``. Everything heavy (the worker, OpenCV through the analysis, zarr, the
file readers of :mod:`lithoscope.replay`) is imported inside the command that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..endpoints import DEFAULT_FRAMES_ENDPOINT, DEFAULT_RESULTS_ENDPOINT, parse_endpoint
from ..errors import ConfigError, LithoscopeError
from ._common import (
    SOURCE_HELP,
    ClientSecretKey,
    Fps,
    PixelSize,
    ServerPublicKey,
    Verbose,
    app,
    client_curve,
    console,
    friendly_errors,
    parse_speed,
    progress_bar,
    sender_setup,
    setup_logging,
    stop_on_signals,
)
from ._demo import demo_display

__all__: list[str] = []

PANEL = "Service (the microscope PC)"


_REPLAY_PROCESS_MIN_PIXELS = 1024 * 1024
"""Frames at least this large are segmented in a measuring process of replay's own by
default: replay reads, archives and publishes in its own process, and at 1024² (0.4
nm/px, two cores) a measuring process beside it replayed 1.2-1.6 times faster; on
smaller frames the analysis is too short for the process and its frame copies to pay."""


def replay_workers(shape: tuple[int, int] | None, cores: int) -> int:
    """Measuring processes for a replay whose frames are ``shape`` (None: not known
    before reading) on a machine of ``cores`` cores, when ``--workers`` is not given:
    one for frames of ``_REPLAY_PROCESS_MIN_PIXELS`` or more with a core to spare."""
    if shape is None or cores < 2:
        return 0
    return 1 if shape[0] * shape[1] >= _REPLAY_PROCESS_MIN_PIXELS else 0


def _open_source(spec: str, fps: float | None, pixel_size_nm: float | None,
                 stop: threading.Event | None = None) -> Any:
    # Importing lithoscope.replay registers its file readers with the service's registry.
    import lithoscope.replay  # noqa: F401

    from ..sources.registry import open_source

    return open_source(spec, fps=fps, pixel_size_nm=pixel_size_nm, stop=stop)


def _scenario(name: str) -> str:
    """A scenario of the simulator's list (read when a demo runs: the simulator imports
    OpenCV, which ``lithoscope --help`` must not)."""
    from ..sources.sim import SCENARIOS

    if name not in SCENARIOS:
        raise typer.BadParameter(f"Expected one of {', '.join(SCENARIOS)}. Got {name!r}.")
    return name


@app.command(rich_help_panel=PANEL)
def demo(
    sessions: Annotated[Path, typer.Option(help="Folder for the session archive.")] = Path(
        "sessions"),
    scenario: Annotated[str, typer.Option(
        parser=_scenario, metavar="SCENARIO",
        help="Simulated experiment, one of the simulator's scenarios: lithiation (bias on, "
        "particles swell), control (no bias), chemical (lithiation on contact, without "
        "bias), heavy_drift, low_dose, crystalline (real-looking crystals), no_needle "
        "(crystals, no needle in view).")] = "lithiation",
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
    from .. import __version__
    from ..config import ServiceConfig
    from ..live.session import run_local_session
    from ..protocol import Event
    from ..sources.echem import SimulatedEchem
    from ..sources.sim import SimulatedSource
    from ._archive import show_session
    from .render import event_line

    setup_logging(verbose)
    with friendly_errors():
        stop = stop_on_signals()
        config = ServiceConfig(sessions_dir=str(sessions))
        source = SimulatedSource(scenario=scenario)
        info = source.info
        wall_s = (info.frame_count or 0) / (info.fps or 1) / speed
        console.print(f"[bold]lithoscope demo[/] {__version__}: {info.name}, "
                      f"{info.frame_count} frames of {info.shape} at {info.fps:g} fps, "
                      f"played at {speed:g}x ({wall_s:.0f}"
                      " s). Ctrl-C stops early and keeps what was recorded.")

        def show(msg: Any) -> None:
            if isinstance(msg, Event):
                console.print(event_line(msg.t_s, msg.frame, msg.kind, msg.message),
                              highlight=False)

        started = time.monotonic()
        with demo_display(monitor, show) as (on_message, on_frame):
            echem = SimulatedEchem(source.config, scenario=scenario)
            report = run_local_session(source, config=config, speed=speed, live=True,
                                       on_message=on_message, on_frame=on_frame, stop=stop,
                                       echem=echem)
        wall = time.monotonic() - started
        if report.closed is None:
            raise LithoscopeError("The worker did not confirm the end of the session.")
        show_session(Path(report.closed.archive_path), wall_s=wall,
                     frames_sent=report.frames_sent)


@app.command(rich_help_panel=PANEL)
def publish(
    source: Annotated[str, typer.Argument(
        help=SOURCE_HELP + " watch:DIR ends on a file named lithoscope.stop or after 60 s "
        "without a new frame; imagezmq://tcp://*:5555 receives from imagezmq ImageSenders "
        "and ends after 30 s without a frame.")],
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
    from ..publisher import Publisher

    setup_logging(verbose)
    with friendly_errors():
        pace, stop, curve = sender_setup(connect, speed, server_key, key,
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


@app.command("publish-echem", rich_help_panel=PANEL)
def publish_echem(
    source: Annotated[str, typer.Argument(
        help="A CSV log with a header row and a time column (t_unix/timestamp: Unix s; "
        "t_s/time/s/time: s since --t0-unix), tailed as it is written; a BioLogic EC-Lab "
        ".mpr or .mpt file (needs lithoscope[echem]), re-read as it grows; a Protochips "
        "holder log (.csv with Protochips' header, or protochips:PATH; needs "
        "lithoscope[formats]); or 'sim' / 'sim:SCENARIO', the simulated experiment's "
        "potentiostat.")],
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
    from ..publisher import EchemPublisher
    from ..sources.echem import open_echem_source

    setup_logging(verbose)
    with friendly_errors():
        pace, stop, curve = sender_setup(connect, speed, server_key, key)
        with open_echem_source(source, t0_unix=t0_unix, time_column=time_column,
                               bias_column=bias_column, current_column=current_column,
                               idle_timeout_s=idle_timeout, stop=stop) as src, \
                EchemPublisher(connect, curve=curve, ack_timeout_s=5.0) as publisher:
            console.print(f"Publishing {src.name} to {connect} ...")
            report = publisher.publish_echem(src, speed=pace, clock_offset_s=clock_offset,
                                             session_id=session, stop=stop)
        console.print(f"Sent {report.samples} samples in {report.batches} batches"
                      f"{' (interrupted)' if report.interrupted else ''}.")


@app.command(rich_help_panel=PANEL)
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

    from .. import __version__
    from ..config import load_config
    from ..live.worker import Worker

    setup_logging(verbose)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: a service that seems
    # stuck at 2 a.m. can say where, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with friendly_errors():
        settings = load_config(config).replace(
            frames_endpoint=frames, results_endpoint=results,
            sessions_dir=str(sessions) if sessions else None,
            allow_remote=allow_remote or None,
            server_key=str(server_key) if server_key else None,
            client_keys=str(client_keys) if client_keys else None,
            workers=workers, measure_jobs_endpoint=measure_jobs,
            measure_results_endpoint=measure_results)
        stop = stop_on_signals()
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


@app.command(rich_help_panel=PANEL)
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
    from ..live.fanout import run_measurer

    setup_logging(verbose)
    with friendly_errors():
        curve = client_curve(server_key, key)
        stop = stop_on_signals()
        console.print(f"lithoscope measure: taking frames from {jobs}, answering to {results}",
                      highlight=False)
        done = run_measurer(jobs, results, stop=stop, curve=curve)
        console.print(f"lithoscope measure: stopped after {done} frames.")


@app.command(rich_help_panel=PANEL)
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
    from ..security import create_keys

    with friendly_errors():
        public, secret = create_keys(folder, name)
    console.print(f"Public key: {public} (copy it to whoever must know this key)\n"
                  f"Secret key: {secret} (keep it on this machine)", highlight=False)


@app.command(rich_help_panel=PANEL)
def replay(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
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
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object summarising the replay (and nothing else on "
        "stdout).")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Measuring processes of replay's own worker, as serve --workers: frames are "
        "segmented in N processes (0: in replay's process, beside reading the recording, "
        "archiving and publishing). Default: 1 for frames of a megapixel or more on a "
        "machine of two or more cores, else 0.", min=0)] = None,
    verbose: Verbose = False,
) -> None:
    """Feed a recording through the same publisher -> ZeroMQ -> worker path, losslessly.

    Every frame reaches the archive, in order and bit-identical, whatever the speed.
    With --connect, the running service archives it in its own folder under the name
    of --archive.
    """
    from ..config import ServiceConfig
    from ..live.session import run_local_session
    from ..publisher import Publisher

    setup_logging(verbose)
    with friendly_errors():
        pace = parse_speed(speed)
        if connect is None and archive.exists():
            raise ConfigError(f"{archive} already exists; choose a new --archive path.")
        if connect is not None and workers is not None:
            raise ConfigError("--workers sets replay's own worker; with --connect the running "
                              "service measures as it was started (serve --workers).")
        stop = stop_on_signals()
        started = time.monotonic()
        with _open_source(source, fps, pixel_size) as src:
            if src.info.fps is None and fps is None and pace is not None:
                raise ConfigError(f"{source} does not record its frame rate; give --fps "
                                  "or use --speed max.")
            if connect is None and workers is None:
                workers = replay_workers(src.info.shape, os.cpu_count() or 1)
            if not as_json:
                measuring = (f", segmented in {workers} measuring process"
                             f"{'es' if workers > 1 else ''}" if workers else "")
                console.print(f"Replaying {src.info.name} ({src.info.frame_count or '?'} "
                              f"frames{measuring}) ...", highlight=False)
            with progress_bar("replay", src.info.frame_count) as advance:
                def on_frame(_: Any) -> None:
                    advance(1)

                if connect is None:
                    report = run_local_session(src, config=ServiceConfig(workers=workers or 0),
                                               archive_path=archive, speed=pace,
                                               live=False, fps=fps, pixel_size_nm=pixel_size,
                                               stop=stop, on_frame=on_frame)
                else:
                    parse_endpoint(connect, what="frames endpoint", allow_remote=True)
                    with Publisher(connect, results_endpoint=results) as publisher:
                        report = publisher.publish(src, speed=pace, live=False, fps=fps,
                                                   pixel_size_nm=pixel_size,
                                                   archive_name=archive.name, stop=stop,
                                                   on_frame=on_frame)
            source_name = src.info.name
        wall = time.monotonic() - started
        closed = report.closed
        if closed is None:
            raise LithoscopeError(f"The worker did not confirm that session {report.session_id} "
                                  "was archived.")
        if as_json:
            sys.stdout.write(json.dumps({
                "source": source_name, "session_id": report.session_id,
                "frames_sent": report.frames_sent, "frames_archived": closed.frames_archived,
                "archive": str(closed.archive_path), "wall_s": round(wall, 3),
                "frames_per_s": round(report.frames_sent / max(wall, 1e-9), 3),
                "interrupted": report.interrupted}) + "\n")
        else:
            console.print(f"Replayed {report.frames_sent} frames in {wall:.1f} s "
                          f"({report.frames_sent / max(wall, 1e-9):.1f} frames/s); archived "
                          f"{closed.frames_archived} to {closed.archive_path}.", highlight=False)
        if report.interrupted:
            raise LithoscopeError("Interrupted: the archive holds the frames sent so far.")
        if closed.frames_archived != report.frames_sent:
            raise LithoscopeError(f"Only {closed.frames_archived} of {report.frames_sent} "
                                  "frames reached the archive.")


@app.command("config", rich_help_panel=PANEL)
def config_command(
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="Print every setting at its default as commented TOML (a "
        "starting point for serve --config).")] = False,
    check: Annotated[Path | None, typer.Option(
        help="Read this TOML file as serve --config would and say what is wrong, if "
        "anything.")] = None,
) -> None:
    """Service settings: print the defaults, or check a settings file.

    Every key is described in docs/configuration.md; the defaults printed here are the
    same text as a file, comments included.
    """
    from ..config import defaults_toml, load_config

    with friendly_errors():
        if defaults == (check is not None):
            raise ConfigError("Expected --defaults or --check FILE (one of them).")
        if defaults:
            sys.stdout.write(defaults_toml())
            return
        load_config(check)
        console.print(f"{check}: every setting is valid.", highlight=False)
