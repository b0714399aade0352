"""Wire protocol v1: a pair of pure functions, ``encode`` and ``decode``.

Every message is three ZeroMQ frames ``[topic, header, payload]``:

* ``topic``  -- ASCII message type (``frame``, ``result`` ...), so SUB sockets can filter;
* ``header`` -- one UTF-8 JSON object (JSON rather than msgpack so that any language's
  standard library can read it, and because headers are small next to the images);
* ``payload`` -- the raw C-ordered pixel buffer for ``frame`` and ``preview`` messages,
  empty otherwise.

The schema lives here, one frozen dataclass per kind; docs/protocol.md's field tables
are generated from these classes (``python -m lithoscope.service.protocol``) and a test
fails when they diverge. Decoding validates every header field at the edge (shape,
dtype, size, version) so that the worker can trust the dataclasses it gets.

References
----------
pyzmq, "Serializing messages" (send_array / recv_array): shape and dtype in a JSON
header beside a zero-copy buffer. bluesky event-model: a document lifecycle with
sequence numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import types
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Union

import numpy as np

from . import schema
from .errors import ConfigError, ProtocolError
from .schema import names_markdown

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_ECHEM_SAMPLES",
    "MAX_ECHEM_SOURCE_CHARS",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_ITEMS",
    "MAX_STRING_CHARS",
    "PROTOCOL_VERSION",
    "Preview",
    "Decoder",
    "Echem",
    "Event",
    "EventKind",
    "Frame",
    "FrameLimits",
    "Heartbeat",
    "MAX_PREVIEW_SIDE",
    "MessageType",
    "Message",
    "Result",
    "SessionClosed",
    "SessionStart",
    "SessionStop",
    "decode",
    "encode",
    "schema_markdown",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""A header is metadata, not data: a megabyte is far beyond any honest header."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of arrays and objects in a header: the header object is level 1,
``metadata`` level 2, and no array or object may sit below level 16. Honest metadata
nests two or three; the bound keeps ``dataclasses.asdict``, ``json.dumps`` and zarr's
attribute writes far from Python's recursion limit."""
MAX_JSON_ITEMS = 262_144
"""Most values (numbers, strings, list items, object members) in one header."""
MAX_STRING_CHARS = 4096
"""Longest string anywhere in a header, object keys included."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer in a header must fit the archive's int64 columns."""
MAX_ECHEM_SAMPLES = 8192
"""Most samples in one echem batch (a sender splits longer runs): the archive stores
each sample's row, so a batch's cost is bounded by samples, not by header bytes."""
MAX_ECHEM_SOURCE_CHARS = 512
"""Longest echem ``source``: it is stored with every sample of the batch."""
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0, DEL and C1: no name field may hold them (a newline in a session id would write
a second line into the service's log; an escape sequence would drive the terminal)."""

MAX_PREVIEW_SIDE = 512
"""Longest side of a ``preview`` image, pixels."""

ALLOWED_DTYPES = frozenset(
    {"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
)
"""Pixel types cameras and file formats actually produce. Endianness is always little."""


class MessageType(StrEnum):
    """Message types. The value is also the topic (first ZeroMQ frame) and the header's
    ``type``."""

    SESSION_START = "session_start"
    FRAME = "frame"
    SESSION_STOP = "session_stop"
    RESULT = "result"
    EVENT = "event"
    HEARTBEAT = "heartbeat"
    SESSION_CLOSED = "session_closed"
    ECHEM = "echem"
    PREVIEW = "preview"


class EventKind(StrEnum):
    """Alerts the worker raises. Physical ones first, operational ones after."""

    CONTACT_MADE = "contact_made"
    CONTACT_LOST = "contact_lost"
    EXPANSION_ONSET = "expansion_onset"
    EXPANSION_SLOWING = "expansion_slowing"
    CONTRACTION_ONSET = "contraction_onset"
    CONTRACTION_SETTLED = "contraction_settled"
    BIAS_WITHOUT_EXPANSION = "bias_without_expansion"
    LITHIUM_REDISTRIBUTED = "lithium_redistributed"
    DRIFT_WARNING = "drift_warning"
    DOSE_RATE_HIGH = "dose_rate_high"
    FRAMES_DROPPED = "frames_dropped"
    ANALYSIS_SKIPPED = "analysis_skipped"
    SOURCE_STALLED = "source_stalled"
    ARCHIVE_STALLED = "archive_stalled"
    ARCHIVE_ERROR = "archive_error"


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (rendered into docs/protocol.md)."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Bounds a receiver enforces before it believes a header.

    They also size ZeroMQ's ``MAXMSGSIZE`` so that a hostile peer cannot make the
    worker allocate an unbounded message.
    """

    max_side: int = 16384
    """Longest frame side accepted, pixels."""
    max_pixels: int = 8192 * 8192
    """Most pixels in one frame accepted."""
    echem_backlog_bytes: int = 64 << 20
    """Memory for echem batches waiting for a session that is not open yet (the oldest
    go first past it); 64 MiB is some hours of a potentiostat at 10 Hz."""
    subscription_bytes: int = 1024
    """Largest message a results subscriber may send (a subscription is a topic
    prefix, a few bytes)."""

    def __post_init__(self) -> None:
        for name in ("max_side", "max_pixels", "echem_backlog_bytes", "subscription_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"Expected limits.{name} to be a positive integer. "
                                  f"Got {value!r}.")

    @property
    def max_payload_bytes(self) -> int:
        """Largest frame payload: the most pixels at 8 bytes each."""
        return self.max_pixels * 8

    @property
    def max_message_bytes(self) -> int:
        """Largest whole message ``[topic, header, payload]``; ZeroMQ's ``MAXMSGSIZE``
        bounds each part to it, :func:`decode` the parts' total."""
        return self.max_payload_bytes + MAX_HEADER_BYTES + 4096


@dataclass(frozen=True, slots=True)
class SessionStart:
    """Opens a session: sent by a publisher before its first frame, echoed on results."""

    TYPE: ClassVar[MessageType] = MessageType.SESSION_START
    session_id: str = _doc("Unique id of the session, chosen by the publisher.")
    source: str = _doc("Where the frames come from, e.g. `sim:lithiation`, `tiff:/data/run3.tif`.")
    source_kind: str = _doc("Source type: `sim`, `tiff`, `video`, `folder`, `archive`, `camera`.")
    t0_unix: float = _doc("Acquisition time of t_s = 0, seconds since the Unix epoch (UTC).")
    live: bool = _doc("True if the source does not wait (camera, live simulator): the worker "
                      "may skip analysis of frames to keep up, never their archiving.")
    pixel_size_nm: float | None = _doc("Pixel size in nanometres, if known.", default=None)
    fps: float | None = _doc("Nominal frame rate, if known.", default=None)
    shape: list[int] | None = _doc("Frame shape [rows, cols], if known in advance.", default=None)
    dtype: str | None = _doc("Pixel type, if known in advance.", default=None)
    frame_count: int | None = _doc("Number of frames, if known (files).", default=None)
    archive_name: str | None = _doc(
        "Requested archive name (a file name, not a path); the service chooses the folder.",
        default=None,
    )
    metadata: dict[str, Any] = _doc("Free session metadata (instrument, scenario, ...).",
                                    default_factory=dict)
    session_token: str | None = _doc(
        "Secret chosen by the sender (`secrets.token_urlsafe(16)`, 16-256 characters): the "
        "session belongs to whoever knows it. Required; never published or archived.",
        default=None,
    )
    seq: int = _doc("Per-stream sequence number, stamped by the sender.", default=0)
    sent_at: float = _doc("Sender's clock at sending, seconds since the Unix epoch.", default=0.0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame. The payload is the raw pixel buffer, C order, little endian."""

    TYPE: ClassVar[MessageType] = MessageType.FRAME
    session_id: str = _doc("Session this frame belongs to.")
    index: int = _doc("Frame number within the session's source, from 0.")
    t_s: float = _doc("Acquisition time, seconds since the session's t0.")
    acquired_at: float = _doc("Acquisition time, seconds since the Unix epoch (for latency).")
    shape: list[int] = _doc("[rows, cols] of the payload.")
    dtype: str = _doc(f"Pixel type, one of {', '.join(sorted(ALLOWED_DTYPES))}.")
    pixel_size_nm: float | None = _doc("Pixel size in nanometres, if known.", default=None)
    exposure_s: float | None = _doc("Exposure time in seconds, if known.", default=None)
    metadata: dict[str, Any] = _doc(
        "Per-frame values when known, unit in the name: `bias_v`, `current_a`, "
        "`dose_rate_e_per_a2_s`, `needle_tip_row`, `needle_tip_col`, ...",
        default_factory=dict,
    )
    truth: dict[str, Any] | None = _doc(
        "Simulator only: exact values the analysis should find (ground truth).", default=None
    )
    session_token: str | None = _doc(
        "The token of the session's `session_start`; anything else is rejected.",
        default=None,
    )
    seq: int = _doc("Per-stream sequence number; a gap means frames were lost.", default=0)
    sent_at: float = _doc("Sender's clock at sending, seconds since the Unix epoch.", default=0.0)
    image: np.ndarray | None = field(default=None, repr=False, compare=False,
                                     metadata={"payload": True})


@dataclass(frozen=True, slots=True)
class SessionStop:
    """Closes a session: the publisher has sent its last frame."""

    TYPE: ClassVar[MessageType] = MessageType.SESSION_STOP
    session_id: str = _doc("Session being closed.")
    frames_sent: int = _doc("Frames the publisher sent in this session.")
    reason: str = _doc("`end_of_source`, `interrupted` or `error`.", default="end_of_source")
    session_token: str | None = _doc(
        "The token of the session's `session_start`; anything else is rejected.",
        default=None,
    )
    seq: int = _doc("Per-stream sequence number.", default=0)
    sent_at: float = _doc("Sender's clock at sending, seconds since the Unix epoch.", default=0.0)


@dataclass(frozen=True, slots=True)
class Result:
    """Measurements of one analysed frame, published by the worker."""

    TYPE: ClassVar[MessageType] = MessageType.RESULT
    session_id: str = _doc("Session of the frame.")
    index: int = _doc("Frame number within the session.")
    t_s: float = _doc("Acquisition time of the frame, seconds since t0.")
    latency_s: float = _doc("From acquisition (`acquired_at`) to this result, seconds.")
    cluster: dict[str, Any] = _doc(
        "Cluster values: " + names_markdown(schema.CLUSTER_VALUES) + " (docs/analysis.md); "
        "with operando context " + names_markdown(schema.OPERANDO_VALUES)
        + " (docs/analysis.md, operando). Columns of the archive's `cluster` and `operando` "
        "tables (docs/archive.md)."
    )
    particles: dict[str, list[Any]] = _doc(
        "Per-particle columns of equal length: "
        + names_markdown(schema.SESSION_PARTICLE_COLUMNS) + "; with operando context "
        + names_markdown(schema.PARTICLE_DOSE.names("operando")) + ". Columns of the "
        "archive's `particles` and `particle_dose` tables (docs/archive.md)."
    )
    outlines: list[dict[str, Any]] = _doc(
        "Particle outlines: `{\"track_id\": int, \"points\": [[row, col], ...]}` per "
        "particle (one per piece), simplified polygons in frame pixels (within one analysis "
        "pixel of the boundary), `track_id` as in `particles`; at most 16384 vertices in "
        "all. Empty where the frame was measured without a label image.",
        default_factory=list)
    regions: list[dict[str, Any]] = _doc(
        "Outlines of the opaque regions: `{\"region\": \"needle\" or \"grid\", "
        "\"points\": [[row, col], ...]}`, polygons as in `outlines`; at most 4096 vertices "
        "in all.", default_factory=list)
    seq: int = _doc("Per-stream sequence number of the results stream.", default=0)
    sent_at: float = _doc("Worker's clock at sending.", default=0.0)


@dataclass(frozen=True, slots=True)
class Event:
    """An alert: something a microscopist should look at now."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    session_id: str = _doc("Session of the event.")
    kind: str = _doc("Event kind: " + ", ".join(f"`{k.value}`" for k in EventKind) + ".")
    t_s: float = _doc("Experiment time of the event, seconds since t0.")
    frame: int = _doc("Frame index at which it was detected.")
    magnitude: float = _doc("Size of the change (relative area change, frames lost, ...).",
                            default=0.0)
    confidence: float = _doc("0..1, how sure the detector is.", default=1.0)
    particle_ids: list[int] = _doc("Particles concerned (empty: the whole cluster).",
                                   default_factory=list)
    message: str = _doc("One line for a person.", default="")
    context: dict[str, Any] = _doc(
        "What else held at that moment: `bias_v`, `current_a`, `charge_c` (at the event's "
        "`t_s`), `dose_e_per_a2` (field), `particle_dose_e_per_a2` (cumulative dose of each "
        "particle concerned, by track id), `lithium_from_charge`, `lithium_visible`.",
        default_factory=dict)
    seq: int = _doc("Per-stream sequence number of the results stream.", default=0)
    sent_at: float = _doc("Worker's clock at sending.", default=0.0)


@dataclass(frozen=True, slots=True)
class Echem:
    """A batch of electrochemistry samples (bias, current) from a potentiostat or holder.

    Sent by ``lithoscope publish-echem`` to the frames endpoint beside the camera's
    publisher, on its own stream (its own ``seq``), and forwarded by the worker on the
    results stream with ``session_id`` filled in. Columns are parallel lists.
    """

    TYPE: ClassVar[MessageType] = MessageType.ECHEM
    source: str = _doc("Where the samples come from, e.g. `csv:/data/bias.csv`, `sim:lithiation`.")
    t_unix: list[float] = _doc("Sample times on the instrument's clock, seconds since the "
                               "Unix epoch.")
    bias_v: list[float | None] = _doc("Bias (working electrode potential), V; null if not "
                                      "recorded.")
    current_a: list[float | None] = _doc("Current, A (EC-Lab sign: negative is cathodic); null "
                                         "if not recorded.")
    clock_offset_s: float = _doc("Added to `t_unix` to put it on the camera's clock "
                                 "(camera minus instrument); archived with every sample.",
                                 default=0.0)
    session_id: str | None = _doc("Session the samples belong to; null: the session whose "
                                  "`session_token` they carry.", default=None)
    session_token: str | None = _doc(
        "The token of the session the samples belong to (shared with the camera's publisher, "
        "e.g. through `LITHOSCOPE_SESSION_TOKEN`); samples without one are never filed.",
        default=None,
    )
    seq: int = _doc("Per-stream sequence number; a gap means batches were lost.", default=0)
    sent_at: float = _doc("Sender's clock at sending, seconds since the Unix epoch.", default=0.0)

    def __post_init__(self) -> None:
        if not len(self.t_unix) == len(self.bias_v) == len(self.current_a):
            raise ProtocolError(
                f"Expected echem columns of equal length. Got t_unix {len(self.t_unix)}, "
                f"bias_v {len(self.bias_v)}, current_a {len(self.current_a)}.",
                reason="bad_field")
        if not all(math.isfinite(t) for t in self.t_unix):
            raise ProtocolError("Echem sample times must be finite.", reason="bad_field")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic worker status, about once a second, even when no frames arrive."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    session_id: str | None = _doc("Current session, if any.")
    counters: dict[str, int] = _doc(
        "Running totals: `received`, `analysed`, `archived`, `dropped`, `skipped`, "
        "`rejected` and `rejected_<reason>` per rejection reason."
    )
    fps_in: float = _doc("Frames received per second over the last interval.")
    fps_analysed: float = _doc("Frames analysed per second over the last interval.")
    latency_p50_s: float | None = _doc("Median acquisition-to-result latency, last interval.")
    latency_p99_s: float | None = _doc("99th percentile latency, last interval.")
    archive_path: str | None = _doc("Archive of the current session.", default=None)
    archive_bytes: int | None = _doc("Size of that archive on disk (recounted at most every 30 s).",
                                     default=None)
    source: str | None = _doc("The current session's source, as in its `session_start` (so a "
                              "client that joins mid-session can show it).", default=None)
    live: bool | None = _doc("The current session's `live` flag, as in its `session_start`.",
                             default=None)
    seq: int = _doc("Per-stream sequence number of the results stream.", default=0)
    sent_at: float = _doc("Worker's clock at sending.", default=0.0)


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The worker's acknowledgement that a session's archive is complete and closed."""

    TYPE: ClassVar[MessageType] = MessageType.SESSION_CLOSED
    session_id: str = _doc("Session that was closed.")
    archive_path: str = _doc("Where the archive is.")
    frames_archived: int = _doc("Frames in the archive.")
    frames_analysed: int = _doc("Frames analysed.")
    frames_dropped: int = _doc("Sequence gaps seen (frames lost before the worker).")
    reason: str = _doc("Why it closed: the publisher's stop reason, or `shutdown`.")
    seq: int = _doc("Per-stream sequence number of the results stream.", default=0)
    sent_at: float = _doc("Worker's clock at sending.", default=0.0)


@dataclass(frozen=True, slots=True)
class Preview:
    """A frame to look at, downsampled: for viewers on other machines, sent only while
    someone subscribes to `preview`, at most a few per second."""

    TYPE: ClassVar[MessageType] = MessageType.PREVIEW
    session_id: str = _doc("Session of the frame.")
    index: int = _doc("Frame number within the session (its `result` has the same).")
    t_s: float = _doc("Acquisition time of the frame, seconds since t0.")
    shape: list[int] = _doc(f"[rows, cols] of the payload, each at most {MAX_PREVIEW_SIDE}; "
                            "the payload is uint8, C order.")
    frame_shape: list[int] = _doc("[rows, cols] of the full frame.")
    scale: float = _doc("Frame pixels per preview pixel along each axis (>= 1): frame "
                        "(row, col) = preview (row, col) x `scale`, as in a `result`'s "
                        "`outlines`.")
    display_range: list[float] = _doc(
        "[low, high]: the frame values mapped to 0 and 255 (a robust stretch of this frame).")
    seq: int = _doc("Per-stream sequence number of the results stream.", default=0)
    sent_at: float = _doc("Worker's clock at sending.", default=0.0)
    image: np.ndarray | None = field(default=None, repr=False, compare=False,
                                     metadata={"payload": True})


Message = (SessionStart | Frame | SessionStop | Result | Event | Heartbeat | SessionClosed
           | Echem | Preview)
_CLASSES: dict[MessageType, type[Any]] = {
    cls.TYPE: cls
    for cls in (SessionStart, Frame, SessionStop, Result, Event, Heartbeat, SessionClosed,
                Echem, Preview)
}


def _header_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("payload")]


def _to_json_value(value: Any) -> Any:
    # numpy scalars and arrays leak into results and metadata; JSON wants builtins.
    # The builtins first, by exact type: a result holds thousands of outline
    # coordinates, and for each of them the checks against numpy's types and the
    # Mapping ABC below cost more than the rest of the message's encoding.
    kind = type(value)
    if kind is int or kind is str or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is list:
        return [_to_json_value(v) for v in value]
    if kind is dict:
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        # Float arrays may hold NaN: their values are checked as the builtins are.
        values = value.tolist()
        return _to_json_value(values) if value.dtype.kind == "f" else values
    if isinstance(value, np.generic):
        return _to_json_value(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    return value


def encode(msg: Message) -> list[bytes | memoryview]:
    """Turn a message into the three ZeroMQ frames ``[topic, header, payload]``.

    The payload of a ``Frame`` is a memoryview of its image (no copy when the image
    is C-contiguous), meant for ``send_multipart(parts, copy=False)``.

    Raises
    ------
    ProtocolError
        If a frame's image does not match its declared shape and dtype.
    """
    kind: MessageType = type(msg).TYPE
    header: dict[str, Any] = {"version": PROTOCOL_VERSION, "type": kind.value}
    for f in _header_fields(type(msg)):
        header[f.name] = _to_json_value(getattr(msg, f.name))
    payload: bytes | memoryview = b""
    if isinstance(msg, Frame):
        image = msg.image
        if image is None:
            raise ProtocolError("A frame message needs an image.", reason="no_payload")
        if list(image.shape) != list(msg.shape) or image.dtype.name != msg.dtype:
            raise ProtocolError(
                f"Frame header says {msg.shape} {msg.dtype}; image is "
                f"{list(image.shape)} {image.dtype}.",
                reason="size_mismatch",
            )
        image = np.ascontiguousarray(image)
        if image.dtype.byteorder == ">":
            image = image.astype(image.dtype.newbyteorder("<"))
        payload = image.data.cast("B")
    elif isinstance(msg, Preview):
        image = msg.image
        if (image is None or image.dtype != np.uint8 or list(image.shape) != list(msg.shape)):
            raise ProtocolError(f"A preview needs a uint8 image of its shape {msg.shape}.",
                                reason="size_mismatch")
        payload = np.ascontiguousarray(image).data.cast("B")
    return [kind.value.encode("ascii"), json.dumps(header, allow_nan=False).encode(), payload]


def _type_ok(value: Any, annotation: Any) -> bool:
    """Does a decoded JSON value fit a dataclass annotation? (a deliberately small checker)"""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(annotation)
        return isinstance(value, dict) and all(_type_ok(v, item) for v in value.values())
    return False  # pragma: no cover - every annotation used above is handled


_HINTS: dict[type[Any], dict[str, Any]] = {
    cls: typing.get_type_hints(cls) for cls in _CLASSES.values()
}


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"Header holds {name}; JSON numbers must be finite.",
                        reason="bad_number")


def _string_problem(text: str) -> str | None:
    if len(text) > MAX_STRING_CHARS:
        return f"a string of {len(text)} characters (at most {MAX_STRING_CHARS})"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"a string that is not valid Unicode ({text!r:.40})"
    return None


def _check_values(header: dict[str, Any]) -> None:
    """Bounds on every value of a parsed header, however deep: nesting, count, int64
    integers, finite floats, strings of bounded length that UTF-8 can encode.

    Iterative (an explicit stack), so a header that passed ``json.loads`` cannot make
    this check recurse either. What passes can be stored as it is: JSON text, zarr
    attributes and int64 / float64 columns.
    """
    stack: list[tuple[Any, int]] = [(header, 1)]
    items = 0
    while stack:
        value, depth = stack.pop()
        items += 1
        if items > MAX_JSON_ITEMS:
            raise ProtocolError(f"Header holds more than {MAX_JSON_ITEMS} values.",
                                reason="too_large")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise ProtocolError(f"Integer {value!r:.40} is outside int64.",
                                    reason="bad_number")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ProtocolError(f"Number {value!r} is not a finite float64.",
                                    reason="bad_number")
        elif isinstance(value, str):
            problem = _string_problem(value)
            if problem is not None:
                raise ProtocolError(f"Header holds {problem}.", reason="bad_string")
        elif isinstance(value, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise ProtocolError(f"Header nests deeper than {MAX_JSON_DEPTH} levels.",
                                    reason="too_deep")
            if isinstance(value, dict):
                for key in value:
                    problem = _string_problem(key)
                    if problem is not None:
                        raise ProtocolError(f"Header key: {problem}.", reason="bad_string")
                children: Any = value.values()
            else:
                children = value
            stack.extend((child, depth + 1) for child in children)


def _loads(raw: bytes | memoryview) -> Any:
    """``json.loads`` with every way it can fail turned into a ProtocolError."""
    try:
        return json.loads(bytes(raw), parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except RecursionError:
        # The C scanner recurses once per level and raises cleanly at the limit.
        raise ProtocolError(f"Header nests deeper than {MAX_JSON_DEPTH} levels.",
                            reason="too_deep") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"Header is not UTF-8: {exc}.", reason="bad_header") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"Header is not JSON: {exc}.", reason="bad_header") from None
    except ValueError as exc:
        # Python refuses int literals past sys.get_int_max_str_digits() (4300 digits).
        raise ProtocolError(f"Header number cannot be read: {exc}.",
                            reason="bad_number") from None


def _parse_header(raw: bytes | memoryview, topic: bytes) -> tuple[type[Any], dict[str, Any]]:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"Header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}.",
                            reason="bad_header")
    header = _loads(raw)
    if not isinstance(header, dict):
        raise ProtocolError(f"Expected a JSON object header. Got {type(header).__name__}.",
                            reason="bad_header")
    _check_values(header)
    version = header.get("version")
    # type() check: JSON true and 1.0 compare equal to 1 in Python, and are not version 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"Expected protocol version {PROTOCOL_VERSION}. Got {version!r:.40}.",
                            reason="unknown_version")
    try:
        kind = MessageType(str(header.get("type")))
    except ValueError:
        raise ProtocolError(f"Unknown message type {header.get('type')!r:.40}.",
                            reason="unknown_type") from None
    if topic != kind.value.encode():
        raise ProtocolError(f"Topic {topic!r:.40} does not match type {kind.value!r}.",
                            reason="topic_mismatch")
    cls = _CLASSES[kind]
    hints = _HINTS[cls]
    values: dict[str, Any] = {}
    for f in _header_fields(cls):
        if f.name in header:
            value = header[f.name]
            if not _type_ok(value, hints[f.name]):
                raise ProtocolError(
                    f"Field {kind.value}.{f.name}: expected {hints[f.name]}. Got {value!r:.80}.",
                    reason="bad_field",
                )
            if (isinstance(value, str) and f.name not in _FREE_TEXT_FIELDS
                    and _CONTROL_CHARACTERS.search(value)):
                raise ProtocolError(
                    f"Field {kind.value}.{f.name} holds control characters: {value!r:.80}.",
                    reason="bad_string")
            values[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"Field {kind.value}.{f.name} is missing.", reason="bad_field")
    return cls, values


_FREE_TEXT_FIELDS = frozenset({"message"})
"""Top-level string fields that are prose, not names: only these may hold control
characters (every other one is a name that ends up in a log line or a file name)."""


def _parse_frame_payload(values: dict[str, Any], payload: Any, limits: FrameLimits) -> np.ndarray:
    shape = values["shape"]
    dtype_name = values["dtype"]
    if len(shape) != 2 or any(n < 1 or n > limits.max_side for n in shape):
        raise ProtocolError(
            f"Expected a 2-D shape with sides 1..{limits.max_side}. Got {shape}.",
            reason="bad_shape",
        )
    if shape[0] * shape[1] > limits.max_pixels:
        raise ProtocolError(f"Frame of {shape[0]}x{shape[1]} exceeds {limits.max_pixels} pixels.",
                            reason="bad_shape")
    if dtype_name not in ALLOWED_DTYPES:
        raise ProtocolError(f"Unsupported dtype {dtype_name!r}.", reason="bad_dtype")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    buffer = payload.buffer if hasattr(payload, "buffer") else payload
    nbytes = memoryview(buffer).nbytes
    expected = shape[0] * shape[1] * dtype.itemsize
    if nbytes != expected:
        raise ProtocolError(
            f"Payload of {nbytes} bytes does not match {shape[0]}x{shape[1]} {dtype_name} "
            f"({expected} bytes).",
            reason="size_mismatch",
        )
    image = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    # A view on ZeroMQ's receive buffer: nobody downstream may write into it.
    image.flags.writeable = False
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ProtocolError("Float frame holds NaN or infinite pixels.", reason="non_finite")
    return image


def _parse_preview_payload(values: dict[str, Any], payload: Any) -> np.ndarray:
    shape = values["shape"]
    if len(shape) != 2 or any(n < 1 or n > MAX_PREVIEW_SIDE for n in shape):
        raise ProtocolError(f"Expected a preview shape with sides 1..{MAX_PREVIEW_SIDE}. "
                            f"Got {shape}.", reason="bad_shape")
    buffer = payload.buffer if hasattr(payload, "buffer") else payload
    nbytes = memoryview(buffer).nbytes
    if nbytes != shape[0] * shape[1]:
        raise ProtocolError(f"Preview payload of {nbytes} bytes does not match "
                            f"{shape[0]}x{shape[1]} uint8.", reason="size_mismatch")
    image = np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
    image.flags.writeable = False
    return image


def _check_echem(values: dict[str, Any]) -> None:
    samples = len(values["t_unix"])
    if samples > MAX_ECHEM_SAMPLES:
        raise ProtocolError(f"Echem batch of {samples} samples exceeds {MAX_ECHEM_SAMPLES}; "
                            "split it.", reason="too_large")
    if len(values["source"]) > MAX_ECHEM_SOURCE_CHARS:
        raise ProtocolError(f"Echem source of {len(values['source'])} characters exceeds "
                            f"{MAX_ECHEM_SOURCE_CHARS}.", reason="bad_string")


def decode(parts: Sequence[Any], *, limits: FrameLimits | None = None) -> Message:
    """Inverse of :func:`encode`: validate three ZeroMQ frames and build the message.

    ``parts`` may be ``bytes`` or ``zmq.Frame`` objects (from ``recv_multipart(copy=False)``);
    a frame's image is then a read-only view on the received buffer, not a copy.

    Raises
    ------
    ProtocolError
        With a ``reason`` token, for anything that is not a valid v1 message.
    """
    limits = limits or FrameLimits()
    if len(parts) != 3:
        raise ProtocolError(f"Expected 3 message parts. Got {len(parts)}.", reason="bad_parts")
    total = sum(memoryview(getattr(p, "buffer", p)).nbytes for p in parts)
    if total > limits.max_message_bytes:
        raise ProtocolError(f"Message of {total} bytes exceeds {limits.max_message_bytes}.",
                            reason="too_large")
    topic, raw_header, payload = (getattr(p, "bytes", None) if i < 2 else p
                                  for i, p in enumerate(parts))
    topic = topic if topic is not None else bytes(parts[0])
    raw_header = raw_header if raw_header is not None else bytes(parts[1])
    cls, values = _parse_header(raw_header, topic)
    if cls is Echem:
        _check_echem(values)
    if cls is Frame:
        values["image"] = _parse_frame_payload(values, payload, limits)
    elif cls is Preview:
        values["image"] = _parse_preview_payload(values, payload)
    else:
        buffer: Any = getattr(payload, "buffer", payload)
        if memoryview(buffer).nbytes:
            raise ProtocolError(f"A {cls.TYPE.value} message carries no payload.",
                                reason="unexpected_payload")
    try:
        return typing.cast(Message, cls(**values))
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # A dataclass's own checks (``__post_init__``) belong to decoding too.
        raise ProtocolError(f"{cls.TYPE.value}: {exc}", reason="bad_field") from None


class Decoder:
    """Lenient decoding for a long-running receiver: count, log once per reason, drop.

    The worker must never die of a bad message, but a flood of them must not flood
    the log either; ``rejected`` keeps the per-reason counts for the heartbeat.
    """

    def __init__(self, *, limits: FrameLimits | None = None) -> None:
        self.limits = limits or FrameLimits()
        self.rejected: Counter[str] = Counter()

    def __call__(self, parts: Sequence[Any]) -> Message | None:
        try:
            return decode(parts, limits=self.limits)
        except ProtocolError as exc:
            if not self.rejected[exc.reason]:
                log.warning("Rejected a message (%s): %s Further ones are only counted.",
                            exc.reason, exc)
            self.rejected[exc.reason] += 1
            return None


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("NoneType", "null")
    return text.replace("<class '", "").replace("'>", "")


def schema_markdown() -> str:
    """The field tables of docs/protocol.md, generated from the dataclasses above."""
    lines: list[str] = []
    for kind, cls in _CLASSES.items():
        hints = _HINTS[cls]
        lines += [f"### `{kind.value}`", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                  "| field | type | required | meaning |", "|---|---|---|---|"]
        for f in _header_fields(cls):
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{_type_name(hints[f.name])}` | "
                         f"{'yes' if required else 'no'} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(schema_markdown())
