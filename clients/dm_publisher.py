"""Stream camera frames from Gatan DigitalMicrograph (GMS 3.4+ Python) to lithoscope.

Run this file inside DigitalMicrograph (File > Open, then Execute; or paste it into a
Python script window). It acquires frames from the active camera, one
``AcquireImage`` per frame, and pushes each to a running ``lithoscope serve`` in
lithoscope's wire protocol (docs/protocol.md): ``session_start``, one ``frame``
per acquisition, ``session_stop``. The service archives and analyses them as it does
any other source.

It is one self-contained file on purpose: DigitalMicrograph's embedded Python has
numpy but not lithoscope, so the script needs only ``pyzmq`` beside numpy. Install
it once into GMS's Python environment (in GMS 3.4+, from an Anaconda prompt for the
``GMS_VENV_PYTHON`` environment: ``pip install pyzmq``).

Settings: edit the constants below (``ENDPOINT``: where ``lithoscope serve`` listens
for frames, ``tcp://127.0.0.1:5555`` on the same PC; a service on another PC needs
CURVE keys, see docs/security.md, which this script does not do), or call
`publish` from your own script. Stop it with ``FRAME_COUNT`` or by interrupting the
script (DM's "Stop" / Ctrl+Pause): the session is then closed as interrupted and the
archive keeps every frame sent.

Frames keep the camera's dtype (uint16/int16/uint32/int32/float32) and carry
``exposure_s`` and the image's spatial calibration as ``pixel_size_nm``.

The camera call is the only DigitalMicrograph dependency (`acquire`); the tests run
this file against a stand-in for it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

ENDPOINT = "tcp://127.0.0.1:5555"
"""Where ``lithoscope serve`` receives frames."""
EXPOSURE_S = 0.1
BINNING = 1
PROCESS_LEVEL = 3
"""GMS processing: 1 unprocessed, 2 dark subtracted, 3 gain normalised."""
FRAME_COUNT: int | None = None
"""Stop after this many frames (``None``: until the script is stopped)."""
ARCHIVE_NAME: str | None = None
"""Name of the archive on the service (default: the session id)."""

PROTOCOL_VERSION = 1
_DTYPES = {"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
_LENGTH_UNIT_NM = {"nm": 1.0, "µm": 1e3, "um": 1e3, "\u03bcm": 1e3, "å": 0.1,
                   "angstrom": 0.1, "pm": 1e-3, "mm": 1e6, "m": 1e9}


def acquire(camera: Any, exposure_s: float, binning: int,
            process_level: int) -> tuple[np.ndarray, float | None]:
    """One frame from a DigitalMicrograph camera: pixels and pixel size in nm.

    ``camera`` is ``DigitalMicrograph.GetActiveCamera()``; ``AcquireImage`` returns a
    ``Py_Image`` whose ``GetNumArray`` is a view of DM's memory, copied here before the
    image is released.
    """
    image = camera.AcquireImage(exposure_s, binning, binning, process_level)
    try:
        pixels = np.array(image.GetNumArray(), copy=True)
        scale = float(image.GetDimensionScale(0))
        unit = str(image.GetDimensionUnitString(0)).strip().casefold()
    finally:
        del image
    unit_nm = _LENGTH_UNIT_NM.get(unit)
    pixel_size_nm = scale * unit_nm if unit_nm is not None and scale > 0 else None
    return pixels, pixel_size_nm


def _message(kind: str, fields: dict[str, Any], seq: int,
             payload: bytes | memoryview = b"") -> list[Any]:
    header = {"version": PROTOCOL_VERSION, "type": kind, **fields, "seq": seq,
              "sent_at": time.time()}
    return [kind.encode("ascii"), json.dumps(header, allow_nan=False).encode(), payload]


def publish(
    grab: Callable[[], tuple[np.ndarray, float | None]],
    *,
    endpoint: str = ENDPOINT,
    frame_count: int | None = FRAME_COUNT,
    exposure_s: float | None = None,
    archive_name: str | None = ARCHIVE_NAME,
    source: str = "camera:digitalmicrograph",
    context: zmq.Context[Any] | None = None,
    linger_s: float = 30.0,
) -> int:
    """Acquire frames with ``grab()`` and push them to lithoscope until done.

    Parameters
    ----------
    grab : callable
        Returns ``(frame, pixel_size_nm or None)`` per call (see `acquire`).
    endpoint : str
        The service's frames endpoint.
    frame_count : int, optional
        Stop after this many frames; ``None`` runs until interrupted.
    exposure_s : float, optional
        Recorded with each frame.
    archive_name, source : str
        Session naming on the service.
    context : zmq.Context, optional
        Default: a new one, terminated on return.
    linger_s : float
        How long closing waits for queued frames to reach the service.

    Returns
    -------
    int
        Frames sent.
    """
    own = context is None
    ctx = context or zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 16)
    push.connect(endpoint)
    session_id = f"{time.strftime('%Y%m%d-%H%M%S')}-camera-{secrets.token_hex(3)}"
    token = secrets.token_urlsafe(24)  # the session is ours: every message carries it
    seq = sent = 0
    reason = "end_of_source"
    try:
        first, pixel_size_nm = grab()
        if first.ndim != 2 or first.dtype.name not in _DTYPES:
            raise ValueError(f"Camera frame is {first.shape} {first.dtype}; expected a 2-D "
                             f"image of {', '.join(sorted(_DTYPES))}.")
        t0 = time.time()
        seq += 1
        push.send_multipart(_message("session_start", {
            "session_id": session_id, "source": source, "source_kind": "camera",
            "t0_unix": t0, "live": True, "pixel_size_nm": pixel_size_nm, "fps": None,
            "shape": list(first.shape), "dtype": first.dtype.name, "frame_count": frame_count,
            "archive_name": archive_name, "metadata": {"client": "dm_publisher"},
            "session_token": token,
        }, seq))
        frame: np.ndarray | None = first
        while frame_count is None or sent < frame_count:
            if frame is None:
                frame, pixel_size_nm = grab()
            acquired_at = time.time()
            image = np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<"),
                                                      copy=False))
            seq += 1
            push.send_multipart(_message("frame", {
                "session_id": session_id, "index": sent, "t_s": acquired_at - t0,
                "acquired_at": acquired_at, "shape": list(image.shape),
                "dtype": image.dtype.name, "pixel_size_nm": pixel_size_nm,
                "exposure_s": exposure_s, "metadata": {}, "truth": None,
                "session_token": token,
            }, seq, image.data.cast("B")), copy=False)
            sent += 1
            frame = None
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        if seq:  # a session was opened: close it, whatever happened
            seq += 1
            push.send_multipart(_message("session_stop", {
                "session_id": session_id, "frames_sent": sent,
                "reason": reason, "session_token": token}, seq))
        push.close(linger=int(linger_s * 1000))
        if own:
            ctx.term()
    return sent


def main() -> None:
    """What runs when DigitalMicrograph executes this file."""
    import DigitalMicrograph as DM  # noqa: N813 - the name GMS documents

    camera = DM.GetActiveCamera()
    camera.PrepareForAcquire()
    sent = publish(lambda: acquire(camera, EXPOSURE_S, BINNING, PROCESS_LEVEL),
                   endpoint=ENDPOINT, frame_count=FRAME_COUNT, exposure_s=EXPOSURE_S,
                   archive_name=ARCHIVE_NAME)
    print(f"lithoscope: sent {sent} frames to {ENDPOINT}")


if __name__ == "__main__":
    main()
