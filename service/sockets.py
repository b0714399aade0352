"""Options every socket the service binds gets, set in one place.

A bound socket is where strangers connect, so it is where a peer could make the
service allocate without bound. ZeroMQ checks ``MAXMSGSIZE`` per message *part* as it
reads from the wire and drops a peer that exceeds it, before the part is allocated;
the total across parts (``[topic, header, payload]`` here) is checked again by
:func:`lithoscope.service.protocol.decode`. A receive high-water mark bounds how many
whole messages wait, so the most a socket can hold is about ``hwm x parts x
MAXMSGSIZE`` and the limits of docs/security.md follow from the settings.
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["harden_socket"]


def harden_socket(sock: zmq.Socket[Any], *, max_part_bytes: int,
                  receive_hwm: int | None = None) -> None:
    """Bound what a peer of a bound socket can make it hold.

    Parameters
    ----------
    sock
        A socket about to be bound (options apply to connections made after them).
    max_part_bytes
        ``MAXMSGSIZE``: a peer sending a larger part is disconnected by ZeroMQ.
    receive_hwm
        ``RCVHWM``, in messages, if given.
    """
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_part_bytes))
    sock.setsockopt(zmq.LINGER, 0)
    if receive_hwm is not None:
        sock.setsockopt(zmq.RCVHWM, int(receive_hwm))
