"""The ``lithoscope`` command: one typer app, its commands split by audience.

* :mod:`._service` -- the microscope PC: ``demo``, ``serve``, ``publish``,
  ``publish-echem``, ``replay``, ``measure``, ``keys``, ``config``;
* :mod:`._clients` -- following a running service: ``monitor``, ``log``, ``forward``,
  ``plot``;
* :mod:`._archive` -- sessions already recorded: ``inspect``, ``report``, ``export``,
  ``reanalyze``;
* :mod:`.render` -- what they print, as pure functions; :mod:`._common` -- what they share.

Each command is a few lines around library calls, importing what it needs when it
runs, so ``lithoscope --help`` and the client commands never load OpenCV. Errors
lithoscope raises on purpose become one line on stderr and exit status 1; a traceback
is a bug.
"""

from __future__ import annotations

# Each module registers its commands; the order is that of the panels in --help.
# isort: off
from . import _service, _clients, _archive  # noqa: F401
# isort: on
from ._common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
