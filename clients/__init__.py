"""lithoscope.clients: libraries and ready tools that follow a running service."""

from __future__ import annotations

from .subscriber import Subscriber

__all__ = ["Subscriber"]
