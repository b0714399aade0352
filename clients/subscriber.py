"""Subscribe to a lithoscope service's results stream and iterate typed messages.

Depends on ``lithoscope.service.protocol`` only (no OpenCV, no zarr), so another tool
can follow an experiment with pyzmq and numpy installed.

Example
-------
>>> from lithoscope.clients import Subscriber
>>> with Subscriber("tcp://127.0.0.1:5556", topics=["event"]) as sub:  # doctest: +SKIP
...     for msg in sub.iter(timeout_s=60):
...         print(msg.t_s, msg.kind, msg.message)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import zmq

from lithoscope.service.protocol import Decoder, Message, MessageType

__all__ = ["Subscriber"]


class Subscriber:
    """A SUB socket on the results stream, decoding leniently (bad messages are counted).

    Parameters
    ----------
    endpoint
        The service's results endpoint, e.g. ``tcp://127.0.0.1:5556``.
    topics
        Message kinds to receive (``result``, ``event``, ``heartbeat``,
        ``session_start``, ``session_closed``); all of them by default.
    """

    def __init__(self, endpoint: str, *, topics: Iterable[str | MessageType] | None = None,
                 context: zmq.Context[Any] | None = None, rcvhwm: int = 1000) -> None:
        self._own_context = context is None
        self.context: zmq.Context[Any] = context or zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in (topics if topics is not None else [""]):
            self.socket.setsockopt(zmq.SUBSCRIBE, str(topic).encode())
        self.socket.connect(endpoint)
        self.decoder = Decoder()

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None if none arrives within ``timeout_s``."""
        timeout_ms = None if timeout_s is None else max(int(timeout_s * 1000), 0)
        while self.socket.poll(timeout_ms):
            msg = self.decoder(self.socket.recv_multipart(copy=False))
            if msg is not None:
                return msg
        return None

    def iter(self, *, timeout_s: float | None = None) -> Iterator[Message]:
        """Messages until none arrives for ``timeout_s`` seconds (forever if None)."""
        while (msg := self.recv(timeout_s)) is not None:
            yield msg

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
