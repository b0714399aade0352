"""Subscribe to a lithoscope service's results stream and iterate typed messages.

Depends on ``lithoscope.service.protocol`` only (no OpenCV, no zarr), so another tool
can follow an experiment with pyzmq and numpy installed.

ZeroMQ already reconnects a SUB socket on its own, so a subscriber may be started
before the service and survives a service restart; what it adds here is *knowing*:
a socket monitor tells whether a service is connected right now, and the results
stream's sequence numbers tell a restarted service (``seq`` starts again) from lost
updates (a gap, which a slow reader is allowed to have).

Example
-------
>>> from lithoscope.clients import Subscriber
>>> from lithoscope.service.protocol import Event
>>> with Subscriber("tcp://127.0.0.1:5556", topics=["event"]) as sub:  # doctest: +SKIP
...     for event in sub.messages(Event, timeout_s=60):
...         print(event.t_s, event.kind, event.message)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import Decoder, Message, MessageType

if TYPE_CHECKING:
    from lithoscope.service.security import ClientCurve

__all__ = ["ConnectionState", "Subscriber", "parse_topics"]

M = TypeVar("M")

RESULT_TOPICS = (MessageType.SESSION_START, MessageType.RESULT, MessageType.EVENT,
                 MessageType.HEARTBEAT, MessageType.SESSION_CLOSED)
"""What a worker publishes on its results stream (frames never travel there)."""
ON_REQUEST_TOPICS = (MessageType.PREVIEW,)
"""Published only to those who name them (never part of the default subscription): a
downsampled frame costs the worker a resize and the network a quarter of a MiB."""

# A successful ZMTP handshake means a real ZeroMQ peer answered, not merely a TCP port.
_UP = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)
_DOWN = zmq.EVENT_DISCONNECTED


class ConnectionState(StrEnum):
    """What a person needs to know about the link, in the words the monitor shows."""

    WAITING = "waiting"
    """Never connected yet: the service is not (yet) up at that endpoint."""
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """Was connected, lost it; ZeroMQ keeps retrying."""


def parse_topics(topics: Iterable[str | MessageType] | None) -> tuple[MessageType, ...]:
    """Validate topic names at the edge; None means everything on the results stream."""
    if topics is None:
        return RESULT_TOPICS
    parsed: list[MessageType] = []
    for topic in topics:
        try:
            kind = MessageType(str(topic).strip())
        except ValueError:
            raise ConfigError(
                f"Expected topics among {', '.join(t.value for t in RESULT_TOPICS)}. "
                f"Got {str(topic)!r}.") from None
        if kind not in RESULT_TOPICS and kind not in ON_REQUEST_TOPICS:
            raise ConfigError(f"Topic {kind.value!r} is not published on the results stream.")
        parsed.append(kind)
    if not parsed:
        raise ConfigError("Expected at least one topic.")
    return tuple(dict.fromkeys(parsed))


class Subscriber:
    """A SUB socket on the results stream, decoding leniently (bad messages are counted).

    Parameters
    ----------
    endpoint
        The service's results endpoint, e.g. ``tcp://127.0.0.1:5556``.
    topics
        Message kinds to receive (``result``, ``event``, ``heartbeat``,
        ``session_start``, ``session_closed``); all of them by default.
    rcvhwm
        Messages queued for us before ZeroMQ drops newer ones. The publisher never
        waits for a subscriber, so a slow reader loses updates, never the service's time.
    reconnect_ivl_s, reconnect_ivl_max_s
        First and longest interval between reconnection attempts (ZeroMQ backs off).
    curve
        Keys for a service that requires CURVE (one beyond loopback does).

    Attributes
    ----------
    restarts
        How many times the service's sequence numbers started again (it restarted).
    missed
        Messages lost between the service and us (sequence gaps), counted only when
        subscribed to every topic, since a filtered stream has gaps by design.
    """

    def __init__(self, endpoint: str, *, topics: Iterable[str | MessageType] | None = None,
                 context: zmq.Context[Any] | None = None, rcvhwm: int = 1000,
                 reconnect_ivl_s: float = 0.1, reconnect_ivl_max_s: float = 2.0,
                 curve: ClientCurve | None = None) -> None:
        self.endpoint = endpoint
        self.topics = parse_topics(topics)
        self._own_context = context is None
        self.context: zmq.Context[Any] = context or zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.RECONNECT_IVL, max(int(reconnect_ivl_s * 1000), 1))
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, max(int(reconnect_ivl_max_s * 1000), 1))
        subscriptions = [""] if self.topics == RESULT_TOPICS else list(self.topics)
        for topic in subscriptions:
            self.socket.setsockopt(zmq.SUBSCRIBE, str(topic).encode())
        if curve is not None:
            curve.apply(self.socket)
        self._monitor: zmq.Socket[Any] | None = self.socket.get_monitor_socket(_UP | _DOWN)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"Cannot connect to {endpoint!r}: {exc}.") from None
        self.decoder = Decoder()
        self._state = ConnectionState.WAITING
        self.state_since = time.monotonic()
        self.last_message_at: float | None = None
        self.restarts = 0
        self.missed = 0
        self._last_seq: int | None = None

    @property
    def state(self) -> ConnectionState:
        """The link as of now (reads pending socket-monitor events, never blocks)."""
        self._read_monitor()
        return self._state

    def _read_monitor(self) -> None:
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            new = (ConnectionState.CONNECTED if event == _UP
                   else ConnectionState.DISCONNECTED if event == _DOWN else self._state)
            if new is not self._state:
                self._state = new
                self.state_since = time.monotonic()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until a service is connected (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self.state is not ConnectionState.CONNECTED:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._monitor is None:
                return False
            self._monitor.poll(max(int(remaining * 1000), 1))
        return True

    def _note_seq(self, msg: Message) -> None:
        seq = msg.seq
        last = self._last_seq
        if last is not None and seq <= last:
            self.restarts += 1
        elif last is not None and seq > last + 1 and self.topics == RESULT_TOPICS:
            self.missed += seq - last - 1
        self._last_seq = seq

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None if none arrives within ``timeout_s``.

        ``timeout_s=0`` only takes what is already queued (a display loop's drain).
        """
        deadline = None if timeout_s is None else time.monotonic() + max(timeout_s, 0.0)
        while True:
            remaining_ms = (None if deadline is None
                            else max(int((deadline - time.monotonic()) * 1000), 0))
            if not self.socket.poll(remaining_ms):
                self._read_monitor()
                return None
            msg = self.decoder(self.socket.recv_multipart(copy=False))
            if msg is None or msg.TYPE not in self.topics:
                continue
            self.last_message_at = time.monotonic()
            self._note_seq(msg)
            if self._state is not ConnectionState.CONNECTED:
                self._read_monitor()
            return msg

    def iter(self, *, timeout_s: float | None = None) -> Iterator[Message]:
        """Messages until none arrives for ``timeout_s`` seconds (forever if None).

        A running service sends a heartbeat every second, so silence for longer than a
        few seconds means it is gone (or this subscriber filtered heartbeats out).
        """
        while (msg := self.recv(timeout_s)) is not None:
            yield msg

    def follow(self, *, stop: threading.Event | None = None, until_closed: bool = False,
               poll_s: float = 0.2) -> Iterator[Message]:
        """Messages for a long-running tool: through silences and service restarts,
        until ``stop`` is set or, with ``until_closed``, a ``session_closed`` arrives."""
        while stop is None or not stop.is_set():
            msg = self.recv(poll_s)
            if msg is None:
                continue
            yield msg
            if until_closed and msg.TYPE is MessageType.SESSION_CLOSED:
                return

    def messages(self, kind: type[M], *, timeout_s: float | None = None) -> Iterator[M]:
        """Only messages of one class (``Result``, ``Event``, ...), typed as such.

        The timeout counts silence of the whole stream, not of this kind: a quiet
        experiment with a live service keeps iterating.
        """
        for msg in self.iter(timeout_s=timeout_s):
            if isinstance(msg, kind):
                yield msg

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
