"""The wire: encode/decode are inverses; every malformed message is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service import protocol
from lithoscope.service.errors import ProtocolError
from lithoscope.service.protocol import Decoder, Frame, FrameLimits, decode, encode

DOCS = Path(__file__).parents[2] / "docs" / "protocol.md"


def make_frame(image: np.ndarray, **overrides: object) -> Frame:
    values: dict[str, object] = dict(
        session_id="s1", index=3, t_s=0.75, acquired_at=1_700_000_000.5,
        shape=list(image.shape), dtype=image.dtype.name, pixel_size_nm=0.5,
        metadata={"bias_v": -2.0}, seq=4, image=image)
    values.update(overrides)
    return Frame(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", sorted(protocol.ALLOWED_DTYPES))
def test_frame_round_trip_is_bit_identical(dtype: str) -> None:
    rng = np.random.default_rng(1)
    image = (rng.random((7, 5)) * 200).astype(dtype)
    msg = make_frame(image)
    back = decode([bytes(p) for p in encode(msg)])
    assert isinstance(back, Frame)
    assert back == msg
    assert back.image is not None
    assert back.image.dtype == image.dtype
    np.testing.assert_array_equal(back.image, image)


def test_big_endian_input_is_sent_little_endian() -> None:
    image = np.arange(6, dtype=">u2").reshape(2, 3)
    back = decode([bytes(p) for p in encode(make_frame(image, dtype="uint16"))])
    assert isinstance(back, Frame)
    assert back.image is not None
    np.testing.assert_array_equal(back.image, image)


def test_every_kind_round_trips() -> None:
    messages = [
        protocol.SessionStart(session_id="s", source="sim:x", source_kind="sim", t0_unix=1.0,
                              live=True, shape=[4, 4], metadata={"a": 1}),
        protocol.SessionStop(session_id="s", frames_sent=3),
        protocol.Result(session_id="s", index=1, t_s=0.1, latency_s=0.01,
                        cluster={"area_px": 10}, particles={"label": [1, 2]}),
        protocol.Event(session_id="s", kind="contact_made", t_s=1.0, frame=4,
                       particle_ids=[1]),
        protocol.Heartbeat(session_id=None, counters={"received": 1}, fps_in=1.0,
                           fps_analysed=1.0, latency_p50_s=None, latency_p99_s=None),
        protocol.SessionClosed(session_id="s", archive_path="/x.zarr", frames_archived=1,
                               frames_analysed=1, frames_dropped=0, reason="end_of_source"),
    ]
    for msg in messages:
        assert decode(encode(msg)) == msg


def test_zero_copy_decode_over_a_real_socket(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        pull.bind(f"ipc://{tmp_path}/frames")
        push.connect(f"ipc://{tmp_path}/frames")
        image = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
        push.send_multipart(encode(make_frame(image)), copy=False)
        assert pull.poll(5000)
        back = decode(pull.recv_multipart(copy=False))
        assert isinstance(back, Frame)
        assert back.image is not None
        np.testing.assert_array_equal(back.image, image)
        assert not back.image.flags.writeable  # a view on the received buffer, not a copy
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def _corrupt(parts: list[bytes], **header_changes: object) -> list[bytes]:
    header = json.loads(parts[1])
    header.update(header_changes)
    return [parts[0], json.dumps(header).encode(), parts[2]]


GOOD = [bytes(p) for p in encode(make_frame(np.zeros((4, 6), np.uint16)))]


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([GOOD[0], b"{not json", GOOD[2]], "bad_header"),
        ([GOOD[0], b"[1, 2]", GOOD[2]], "bad_header"),
        ([GOOD[0], b"\xff\xfe", GOOD[2]], "bad_header"),
        (_corrupt(GOOD, version=2), "unknown_version"),
        (_corrupt(GOOD, type="teleport"), "unknown_type"),
        ([b"result", GOOD[1], GOOD[2]], "topic_mismatch"),
        (_corrupt(GOOD, shape=[4, 7]), "size_mismatch"),
        (_corrupt(GOOD, dtype="uint8"), "size_mismatch"),
        (_corrupt(GOOD, shape=[-4, -6]), "bad_shape"),
        (_corrupt(GOOD, shape=[4, 6, 1]), "bad_shape"),
        (_corrupt(GOOD, shape=[100_000, 100_000]), "bad_shape"),
        (_corrupt(GOOD, dtype="complex128"), "bad_dtype"),
        (_corrupt(GOOD, dtype="object"), "bad_dtype"),
        (_corrupt(GOOD, index="three"), "bad_field"),
        (_corrupt(GOOD, shape="4x6"), "bad_field"),
        ([GOOD[0], json.dumps({"version": 1, "type": "frame"}).encode(), GOOD[2]], "bad_field"),
        (GOOD[:2], "bad_parts"),
        ([b"session_stop", json.dumps({"version": 1, "type": "session_stop",
                                       "session_id": "s", "frames_sent": 0}).encode(), b"x"],
         "unexpected_payload"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(parts: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(parts)
    assert info.value.reason == reason
    decoder = Decoder()
    assert decoder(parts) is None
    assert decoder.rejected[reason] == 1


def test_nan_float_frames_are_refused() -> None:
    image = np.full((3, 3), np.nan, np.float32)
    parts = [bytes(p) for p in encode(make_frame(image))]
    with pytest.raises(ProtocolError, match="NaN") as info:
        decode(parts)
    assert info.value.reason == "non_finite"


def test_limits_bound_the_frame_size() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(GOOD, limits=FrameLimits(max_side=5))
    assert info.value.reason == "bad_shape"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_decoder_never_raises_anything_but_protocol_error_on_noise(parts: list[bytes]) -> None:
    try:
        decode(parts)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["version", "type", "session_id", "index", "t_s", "acquired_at",
                         "shape", "dtype", "metadata", "seq", "truth", "pixel_size_nm"]),
        st.one_of(st.none(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
                  st.text(max_size=8), st.lists(st.integers(-5, 70000), max_size=4),
                  st.sampled_from(["frame", "uint16", "float32", 1])),
    ),
    st.binary(max_size=256),
)
def test_decoder_fuzzed_headers_fail_cleanly(header: dict[str, object], payload: bytes) -> None:
    parts = [b"frame", json.dumps(header).encode(), payload]
    try:
        msg = decode(parts)
    except ProtocolError:
        return
    assert isinstance(msg, Frame)
    assert msg.image is not None
    assert msg.image.nbytes == len(payload)


def test_docs_protocol_tables_match_the_code() -> None:
    text = DOCS.read_text()
    begin, end = "<!-- BEGIN GENERATED SCHEMA -->", "<!-- END GENERATED SCHEMA -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert generated == protocol.schema_markdown().strip(), (
        "docs/protocol.md is out of date: regenerate its schema section with "
        "`python -m lithoscope.service.protocol`")


def test_header_values_become_json_builtins() -> None:
    # What results and metadata carry: numpy scalars and arrays, non-finite floats
    # (JSON null), tuples, mappings of any kind with non-string keys, subclasses of
    # the builtins, nested at any depth.
    import enum
    import types

    class Level(enum.IntEnum):
        HIGH = 2

    metadata = {
        "plain": [1, 2.5, "x", True, None],
        "non_finite": [float("nan"), float("inf"), -float("inf"), [np.nan]],
        "numpy": {"scalar": np.float32(0.5), "int": np.int64(7), "array": np.arange(3),
                  "nan_array": np.array([1.0, np.nan])},
        "nested": ({"points": [[1, 2], [3, 4]]}, (5, 6)),
        "keys": {1: "a", 2.5: "b"},
        "proxy": types.MappingProxyType({"a": np.bool_(True)}),
        "subclasses": [Level.HIGH, np.float64(np.inf)],
    }
    header = json.loads(encode(make_frame(np.zeros((2, 2), np.uint8), metadata=metadata))[1])
    assert header["metadata"] == {
        "plain": [1, 2.5, "x", True, None],
        "non_finite": [None, None, None, [None]],
        "numpy": {"scalar": 0.5, "int": 7, "array": [0, 1, 2], "nan_array": [1.0, None]},
        "nested": [{"points": [[1, 2], [3, 4]]}, [5, 6]],
        "keys": {"1": "a", "2.5": "b"},
        "proxy": {"a": True},
        "subclasses": [2, None],
    }
