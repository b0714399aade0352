"""What every command shares: the app, the consoles, errors as one line, logging,
signals, CURVE keys and the option types.

Imports nothing heavy: ``lithoscope --help`` and the client commands load this, the
command modules, typer and rich, and no analysis (no OpenCV, no zarr).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..endpoints import parse_endpoint
from ..errors import ConfigError, LithoscopeError

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "SOURCE_HELP",
    "ClientSecretKey",
    "Fps",
    "PixelSize",
    "ServerPublicKey",
    "Verbose",
    "app",
    "client_curve",
    "console",
    "err_console",
    "friendly_errors",
    "parse_speed",
    "progress_bar",
    "sender_setup",
    "setup_logging",
    "stop_on_signals",
]

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

SOURCE_HELP = (
    "A TIFF stack (ImageJ, OME and vendor TIFFs: FEI/TFS, Zeiss, JEOL, DM-exported), an "
    "AVI/MP4 movie, a folder of frame files (TIFF, PNG, DM3/DM4, MRC; a GMS In-Situ "
    "Hour_/Minute_/Second_ tree too), a DM3/DM4 file, an MRC file, any other file "
    "RosettaSciIO reads (.emd, .ser/.emi, .hspy, .blo, .mib, .tvips, .nxs, .npy, ...), a "
    "lithoscope archive, 'watch:DIR' (a folder the camera writes into), "
    "'imagezmq://ENDPOINT' or 'sim' / 'sim:SCENARIO'."
)
"""Every kind of source ``open_source`` knows, for --help (written out: listing the
registry would load the file readers, and --help loads no OpenCV; a test compares)."""


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"lithoscope {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Real-time analysis of operando TEM lithiation experiments."""


def _progress(enabled: bool) -> Progress:
    """The rich progress display of every bar here: on stderr, gone when done."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True, disable=not enabled)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (gone when done); yields ``advance(n)``.

    On stderr, so a ``--json`` summary on stdout stays the only thing there.
    """
    with _progress(enabled) as progress:
        task = progress.add_task(description, total=total)

        def advance(count: int = 1) -> None:
            progress.advance(task, count)

        yield advance


@contextlib.contextmanager
def progress_rows(rows: list[tuple[str, int | None]], *, enabled: bool = True
                  ) -> Iterator[Callable[[int, int], None]]:
    """Several rich progress bars on stderr, one per row ``(description, total)``;
    yields ``set(row, completed)``, which may be called from any thread."""
    with _progress(enabled) as progress:
        tasks = [progress.add_task(description, total=total) for description, total in rows]

        def set_row(row: int, completed: int) -> None:
            progress.update(tasks[row], completed=completed)

        yield set_row


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Errors lithoscope raises on purpose become one line on stderr and exit status 1."""
    try:
        yield
    except LithoscopeError as exc:
        # Escaped: a message may hold brackets ("the [scale] extra") rich would eat.
        err_console.print(f"[bold red]lithoscope: error:[/] {escape(str(exc))}",
                          highlight=False)
        raise typer.Exit(1) from None


def setup_logging(verbose: bool) -> None:
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


def stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set an event instead of killing us mid-write: archives get closed."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C means it
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def client_curve(server_key: Path | None, key: Path | None) -> Any:
    """The CURVE keys of a client of a service that requires them (None: no CURVE)."""
    if server_key is None and key is None:
        return None
    if server_key is None or key is None:
        raise ConfigError("A CURVE service needs both --server-key (its public key) and "
                          "--key (this client's secret key).")
    from ..security import ClientCurve

    return ClientCurve.load(server_key, key)


def sender_setup(connect: str, speed: str, server_key: Path | None, key: Path | None, *,
                 results: str | None = None) -> tuple[float | None, threading.Event, Any]:
    """What every command that sends to a service checks first: its endpoints, the
    pace, Ctrl-C handling and the CURVE keys."""
    parse_endpoint(connect, what="frames endpoint", allow_remote=True)
    if results is not None:
        parse_endpoint(results, what="results endpoint", allow_remote=True)
    pace = parse_speed(speed)
    stop = stop_on_signals()
    return pace, stop, client_curve(server_key, key)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log sessions and events.")]
Fps = Annotated[float | None, typer.Option(
    "--fps", min=1e-6, help="Frame rate of the recording, when the file does not say.")]
ServerPublicKey = Annotated[Path | None, typer.Option(
    "--server-key", help="The service's public key file (server.key), for a CURVE service.")]
ClientSecretKey = Annotated[Path | None, typer.Option(
    "--key", help="This client's secret key file (NAME.key_secret), for a CURVE service.")]
PixelSize = Annotated[float | None, typer.Option(
    "--pixel-size", min=1e-6, help="Pixel size in nm, when the file does not say (overrides it).")]
