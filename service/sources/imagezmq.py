"""Frames from imagezmq senders: existing OpenCV camera scripts feed lithoscope unchanged.

imagezmq (https://github.com/jeffbass/imagezmq) is a common way to push OpenCV frames
over ZeroMQ. Its ``ImageSender`` connects a REQ socket to an ``ImageHub``'s REP socket
and sends, for each frame, two parts:

1. JSON metadata: ``{"msg": <text>, "dtype": <numpy dtype name>, "shape": [rows, cols
   (, channels)]}`` for ``send_image``, or only ``{"msg": <text>}`` for ``send_jpg``;
2. the raw C-order pixel buffer, or the JPEG bytes;

then waits for the hub's reply (``b"OK"``) before sending the next frame. `ImagezmqSource`
plays the hub: it binds the REP socket, turns each request into a `SourceFrame` and
replies once the frame has been handed on, so the REQ/REP lock-step is the same
back-pressure the sender already expects. The publisher then streams the frames to the
worker in lithoscope's protocol: ``lithoscope publish imagezmq://tcp://*:5555``.

Conversions: OpenCV's BGR frames become grayscale (exactly, when the three channels
are equal; with BGR2GRAY otherwise); JPEG frames are decoded with OpenCV. The text
``msg`` (usually the camera's name) goes into each frame's metadata as
``imagezmq_msg``. ``t_s`` is the arrival time relative to the first frame.

The end: imagezmq has no end-of-stream message, so the stream ends after
``idle_timeout_s`` (default 30 s) without a frame, when a sender's ``msg`` equals
``stop_message`` (default ``"lithoscope:stop"``; that request carries no frame and is
answered ``OK``), or when the source is closed from another thread.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import zmq

from ..errors import ConfigError, SourceError
from ..protocol import FrameLimits
from ..sockets import harden_socket
from .base import SourceBase, SourceFrame, SourceInfo

__all__ = ["IMAGEZMQ_PREFIX", "ImagezmqSource", "decode_imagezmq"]

IMAGEZMQ_PREFIX = "imagezmq://"
"""Source spec prefix: ``imagezmq://tcp://*:5555`` binds a hub on that endpoint."""

_REPLY = b"OK"
_POLL_MS = 100


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        blue = image[..., 0]
        if np.array_equal(blue, image[..., 1]) and np.array_equal(blue, image[..., 2]):
            return np.ascontiguousarray(blue)
        gray: np.ndarray = cv2.cvtColor(np.ascontiguousarray(image[..., :3]),
                                        cv2.COLOR_BGR2GRAY)
        return gray
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(image[..., 0])
    raise SourceError(f"imagezmq frame of shape {image.shape}: expected a 2-D or BGR image.")


def decode_imagezmq(parts: list[bytes]) -> tuple[str, np.ndarray | None]:
    """Decode one imagezmq request into ``(msg, grayscale image)``.

    The image is ``None`` for a request without pixels (the stop message).

    Raises
    ------
    SourceError
        Not two parts, metadata that is not imagezmq's JSON, a buffer whose size does
        not match dtype and shape, or JPEG bytes OpenCV cannot decode.
    """
    if len(parts) != 2:
        raise SourceError(f"imagezmq request with {len(parts)} parts; expected 2 "
                          "(JSON metadata, pixels).")
    try:
        header = json.loads(bytes(parts[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"imagezmq metadata is not JSON: {exc}.") from None
    if not isinstance(header, dict) or "msg" not in header:
        raise SourceError(f"imagezmq metadata without 'msg': {header!r}.")
    msg = str(header["msg"])
    payload = bytes(parts[1]) if not isinstance(parts[1], bytes) else parts[1]
    if "dtype" in header and "shape" in header:
        try:
            dtype = np.dtype(str(header["dtype"]))
            shape = tuple(int(size) for size in header["shape"])
        except (TypeError, ValueError) as exc:
            raise SourceError(f"imagezmq metadata with a bad dtype or shape: {exc}.") from None
        if dtype.kind not in "uif" or math.prod(shape) * dtype.itemsize != len(payload):
            raise SourceError(f"imagezmq frame of {len(payload)} bytes does not match "
                              f"{header['shape']} {header['dtype']}.")
        image = np.frombuffer(payload, dtype=dtype).reshape(shape)
        return msg, _to_gray(image)
    if not payload or payload == b"00":  # send_jpg's default buffer: no image
        return msg, None
    decoded = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise SourceError("imagezmq JPEG frame could not be decoded.")
    return msg, _to_gray(decoded)


class ImagezmqSource(SourceBase):
    """An imagezmq hub (REP socket) as a live `Source`.

    Parameters
    ----------
    endpoint : str
        Where to bind, e.g. ``tcp://*:5555`` (imagezmq's default) or
        ``tcp://127.0.0.1:0`` (an OS-picked port; see `endpoint`).
    idle_timeout_s : float
        End the stream after this long without a frame (after the first one; before
        it, the source waits as long ``first_frame_timeout_s``).
    first_frame_timeout_s : float
        How long to wait for the first frame.
    stop_message : str
        A sender's ``msg`` that ends the stream.
    fps, pixel_size_nm : float, optional
        What imagezmq does not carry.
    context : zmq.Context, optional
        Shared context (default: the process's instance).
    stop : threading.Event, optional
        Ends the stream within one poll when set (the CLI sets it on Ctrl-C).

    Raises
    ------
    SourceError
        The endpoint cannot be bound; during iteration, a malformed request or a
        frame whose shape differs from the first one's. A malformed request is still
        answered, so the sender does not hang.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        idle_timeout_s: float = 30.0,
        first_frame_timeout_s: float = 600.0,
        stop_message: str = "lithoscope:stop",
        fps: float | None = None,
        pixel_size_nm: float | None = None,
        context: zmq.Context[Any] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        for name, value in (("idle_timeout_s", idle_timeout_s),
                            ("first_frame_timeout_s", first_frame_timeout_s)):
            if not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"Expected {name} > 0. Got {value!r} instead.")
        self._idle_timeout_s = float(idle_timeout_s)
        self._first_frame_timeout_s = float(first_frame_timeout_s)
        self._stop_message = stop_message
        self._fps = fps
        self._closed = threading.Event()
        self._stop = stop
        self._socket = (context or zmq.Context.instance()).socket(zmq.REP)
        harden_socket(self._socket, max_part_bytes=FrameLimits().max_message_bytes)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise SourceError(f"Cannot listen for imagezmq senders on {endpoint}: {exc}.") \
                from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        """The bound endpoint (with the port the OS picked for ``:0``)."""
        self._lock = threading.Lock()
        self._info = SourceInfo(name=f"imagezmq:{self.endpoint}", kind="imagezmq", fps=fps,
                                pixel_size_nm=pixel_size_nm, live=True,
                                metadata={"imagezmq_endpoint": self.endpoint})

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._closed.is_set():
            raise SourceError(f"Cannot read imagezmq:{self.endpoint}: the source is closed.")
        return self._frames()

    def _frames(self) -> Iterator[SourceFrame]:
        index = 0
        first: np.ndarray | None = None
        t0: float | None = None
        last = time.monotonic()
        while True:
            timeout = self._idle_timeout_s if first is not None else self._first_frame_timeout_s
            with self._lock:
                if self._closed.is_set():
                    raise SourceError(f"Cannot read imagezmq:{self.endpoint}: the source is "
                                      "closed.")
                ready = self._socket.poll(_POLL_MS)
                if not ready:
                    if self._stop is not None and self._stop.is_set():
                        return
                    if time.monotonic() - last >= timeout:
                        return
                    continue
                parts = self._socket.recv_multipart()
                try:
                    msg, image = decode_imagezmq(parts)
                except SourceError:
                    self._socket.send(_REPLY)  # never leave a REQ sender hanging
                    raise
            arrived = time.monotonic()
            last = arrived
            if image is None or msg == self._stop_message:
                with self._lock:
                    self._socket.send(_REPLY)
                if msg == self._stop_message:
                    return
                continue
            if first is None:
                first, t0 = image, arrived
                self._info = replace(self._info, shape=(int(image.shape[0]),
                                                        int(image.shape[1])),
                                     dtype=image.dtype.name)
            elif image.shape != first.shape or image.dtype != first.dtype:
                with self._lock:
                    self._socket.send(_REPLY)
                raise SourceError(f"imagezmq frame {index} ({msg!r}) is {image.shape} "
                                  f"{image.dtype}; the first was {first.shape} {first.dtype}.")
            assert t0 is not None
            t_s = index / self._fps if self._fps else arrived - t0
            # Reply after the consumer has taken the frame: the sender's REQ lock-step
            # then paces it to what the publisher forwards.
            try:
                yield SourceFrame(image, t_s, index, metadata={"imagezmq_msg": msg})
            finally:
                with self._lock:
                    if not self._socket.closed:
                        self._socket.send(_REPLY)
            index += 1

    def close(self) -> None:
        """Unbind and close the socket. Safe to call more than once, from any thread."""
        self._closed.set()
        with self._lock:
            if not self._socket.closed:
                self._socket.close(linger=0)
