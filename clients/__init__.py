"""lithoscope.clients: libraries and ready tools that follow a running service.

Importing this package costs pyzmq and numpy only; the monitor (rich), the plots and
reports (matplotlib, OpenCV through the analysis) are imported by the commands that
need them.
"""

from __future__ import annotations

from .subscriber import ConnectionState, Subscriber, parse_topics

__all__ = ["ConnectionState", "Subscriber", "parse_topics"]
