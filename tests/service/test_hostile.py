"""Issue 19's hostile sender, as tests: every message that once killed the service is
refused at decode with a reason (or, for names, stored under a bounded name), nothing
out of range reaches an archive, start-up recovery and ``inspect`` survive a poisoned
journal, and a worker fed the whole barrage between the frames of a valid session
stays up and archives that session bit for bit.

The worker-loop test here needs only the decode side (this branch): each hostile case
is refused before the worker loop sees it, or is a valid message for a session of its
own. Damage to *another* sender's session (issue 19 case 8) is the worker branch's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service import protocol
from lithoscope.service.archive import (
    FRAME_LOG,
    MAX_NAME_CHARS,
    ArchiveReader,
    ArchiveWriter,
    recover_abandoned,
    safe_archive_name,
)
from lithoscope.service.config import ServiceConfig
from lithoscope.service.errors import ConfigError, ProtocolError
from lithoscope.service.live.worker import Worker, WorkerThread, default_archive_path
from lithoscope.service.operando.echem import EchemBacklog, echem_message_bytes
from lithoscope.service.protocol import (
    Echem,
    Frame,
    FrameLimits,
    Heartbeat,
    SessionClosed,
    SessionStart,
    SessionStop,
    decode,
    encode,
)
from lithoscope.service.sources.echem import CsvEchemSource, EchemBatch

from support.arrays import noisy_frames

DEADLINE_S = 60.0
PX = bytes(128)  # an 8x8 uint16 payload


def frame_header(sid: str = "p", **kw: Any) -> bytes:
    """The issue's ``F``: a valid 8x8 uint16 frame header, with fields overridden."""
    return json.dumps({"version": 1, "type": "frame", "session_id": sid, "index": 0,
                       "t_s": 0.0, "acquired_at": 1764081000.0, "shape": [8, 8],
                       "dtype": "uint16", "seq": 1, **kw}).encode()


def header_of(kind: str, **kw: Any) -> bytes:
    base: dict[str, Any] = {
        "session_start": {"session_id": "p", "source": "t", "source_kind": "t",
                          "t0_unix": 0.0, "live": False},
        "session_stop": {"session_id": "p", "frames_sent": 1},
        "echem": {"source": "csv:x", "t_unix": [1.0], "bias_v": [0.1], "current_a": [1e-9],
                  "session_id": "p"},
    }[kind]
    return json.dumps({"version": 1, "type": kind, **base, **kw}).encode()


def raw(text: str) -> bytes:
    """A header written by hand: JSON that ``json.dumps`` would never produce."""
    return text.encode()


BIG = 10**400  # 401 digits: under Python's 4300-digit limit, far past float64
DEEP = 500
# Every crash of issue 19 (cases 1-5 and 7, 26 messages) plus case 14's NaN literals and
# newline in a session id, with the reason each is now refused with.
REFUSED: dict[str, tuple[list[bytes], str]] = {
    "1_deep_array": ([b"frame", b"[" * 100_000 + b"]" * 100_000, b""], "too_deep"),
    "1_deep_object": ([b"frame", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b""], "too_deep"),
    "1_deep_frame_metadata": ([b"frame", frame_header(
        metadata=json.loads("[" * 900 + "]" * 900)), PX], "too_deep"),
    "2_deep_session_metadata": ([b"session_start", header_of(
        "session_start", metadata={"a": json.loads("[" * DEEP + "]" * DEEP)}), b""],
        "too_deep"),
    "3_long_int_version": ([b"frame", raw('{"version": ' + "1" * 5000 + "}"), b""],
                           "bad_number"),
    "3_long_int_metadata": ([b"frame", raw(frame_header().decode()[:-1]
                                           + ', "metadata": {"n": ' + "9" * 5000 + "}}"),
                             PX], "bad_number"),
    "4_index_2_63": ([b"frame", frame_header(index=2**63), PX], "bad_number"),
    "4_seq_2_64": ([b"frame", frame_header(seq=2**64), PX], "bad_number"),
    "4_index_below_int64": ([b"frame", frame_header(index=-(2**63) - 1), PX], "bad_number"),
    "5_t_s": ([b"frame", frame_header(t_s=BIG), PX], "bad_number"),
    "5_acquired_at": ([b"frame", frame_header(acquired_at=BIG), PX], "bad_number"),
    "5_frame_pixel_size": ([b"frame", frame_header(pixel_size_nm=BIG), PX], "bad_number"),
    "5_start_pixel_size": ([b"session_start", header_of("session_start", pixel_size_nm=BIG),
                            b""], "bad_number"),
    "5_start_fps": ([b"session_start", header_of("session_start", fps=BIG), b""],
                    "bad_number"),
    "5_exposure": ([b"frame", frame_header(exposure_s=BIG), PX], "bad_number"),
    "5_seq_big": ([b"frame", frame_header(seq=BIG), PX], "bad_number"),
    "5_echem_t_unix": ([b"echem", header_of("echem", t_unix=[BIG]), b""], "bad_number"),
    "5_echem_clock_offset": ([b"echem", header_of("echem", clock_offset_s=BIG), b""],
                             "bad_number"),
    "5_echem_bias": ([b"echem", header_of("echem", bias_v=[BIG]), b""], "bad_number"),
    "5_float_literal_overflow": ([b"frame", raw(frame_header().decode().replace(
        '"t_s": 0.0', '"t_s": 1e400')), PX], "bad_number"),
    "7_echem_lone_surrogate": ([b"echem", header_of("echem", source="\ud800"), b""],
                               "bad_string"),
    "7_surrogate_in_metadata_key": ([b"frame", frame_header(metadata={"\udfff": 1}), PX],
                                    "bad_string"),
    "14_nan_literal": ([b"frame", raw(frame_header().decode().replace(
        '"t_s": 0.0', '"t_s": NaN')), PX], "bad_number"),
    "14_infinity_literal": ([b"frame", raw(frame_header().decode().replace(
        '"acquired_at": 1764081000.0', '"acquired_at": -Infinity')), PX], "bad_number"),
    "14_newline_session_id": ([b"frame", frame_header("a\nINFO forged line"), PX],
                              "bad_string"),
    "14_escape_in_source": ([b"session_start", header_of("session_start",
                                                         source="\x1b[2Jcleared"), b""],
                            "bad_string"),
    "11_echem_long_source": ([b"echem", header_of("echem", source="s" * 25_000), b""],
                             "bad_string"),
    "11_echem_many_samples": ([b"echem", header_of(
        "echem", t_unix=[1.0] * 10_000, bias_v=[None] * 10_000, current_a=[None] * 10_000),
        b""], "too_large"),
    "13_parts_total": ([b"frame", frame_header(), bytes(2 * 2**20)], "too_large"),
    "13_extra_part": ([b"frame", frame_header(), PX, PX], "bad_parts"),
}
LONG_NAMES = ["a" * 251, "-" * 300, "a." * 200, "é" * 300]
"""Case 6: valid session ids whose cleaned names once failed with ENAMETOOLONG."""
ATTACKER_TOKEN = "attacker-" + "x" * 24
"""The hostile sender's own session token: it may open sessions of its own."""
VALID_TOKEN = "valid-sender-" + "v" * 24


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_every_issue_19_crash_is_refused_at_decode_with_its_reason(name: str) -> None:
    parts, reason = REFUSED[name]
    limits = FrameLimits(max_side=64, max_pixels=4096)  # 13_parts_total: 1 MiB is too much
    with pytest.raises(ProtocolError) as info:
        decode(parts, limits=limits)
    assert info.value.reason == reason, info.value
    decoder = protocol.Decoder(limits=limits)
    assert decoder(parts) is None
    assert decoder.rejected == {reason: 1}


def test_the_limits_themselves_are_accepted() -> None:
    """The bounds are inclusive: the extreme values an archive can store decode."""
    msg = decode([b"frame", frame_header(index=2**63 - 1, seq=-(2**63), t_s=1.7e308,
                                         metadata={"a": _deep(14)}), PX])
    assert isinstance(msg, Frame)
    assert msg.index == 2**63 - 1
    with pytest.raises(ProtocolError, match="deeper than 16"):
        decode([b"frame", frame_header(metadata={"a": _deep(15)}), PX])
    echem = decode([b"echem", header_of("echem", source="s" * protocol.MAX_ECHEM_SOURCE_CHARS,
                                        t_unix=[1.0] * protocol.MAX_ECHEM_SAMPLES,
                                        bias_v=[None] * protocol.MAX_ECHEM_SAMPLES,
                                        current_a=[0.0] * protocol.MAX_ECHEM_SAMPLES), b""])
    assert isinstance(echem, Echem)


def test_message_prose_may_hold_a_newline_but_no_name_may() -> None:
    event = protocol.Event(session_id="s", kind="contact_made", t_s=1.0, frame=2,
                           message="two\nlines")
    assert decode(encode(event)) == event
    with pytest.raises(ProtocolError, match="control characters"):
        decode(encode(dataclasses.replace(event, kind="contact\rmade")))


@pytest.mark.parametrize("session_id", LONG_NAMES)
def test_long_session_ids_get_a_bounded_archive_name(tmp_path: Path, session_id: str) -> None:
    start = SessionStart(session_id=session_id, source="t", source_kind="t", t0_unix=0.0,
                         live=False)
    first = default_archive_path(tmp_path, start)
    first.mkdir()  # the OS takes it: no ENAMETOOLONG
    second = default_archive_path(tmp_path, start)
    assert second != first
    second.mkdir()
    assert first.parent == tmp_path
    assert len(first.name.encode()) <= MAX_NAME_CHARS + len(".zarr")
    named = default_archive_path(tmp_path, dataclasses.replace(start, session_id="s",
                                                               archive_name=session_id))
    assert len(named.name) <= MAX_NAME_CHARS + len("-2.zarr")


def test_long_names_that_share_a_prefix_stay_apart() -> None:
    a, b = safe_archive_name("x" * 300 + "1"), safe_archive_name("x" * 300 + "2")
    assert a != b
    assert len(a) == len(b) == MAX_NAME_CHARS
    assert safe_archive_name("run-3") == "run-3"  # short names are unchanged
    assert safe_archive_name("../../etc/passwd") == "passwd"


def test_limits_must_be_positive_integers() -> None:
    with pytest.raises(ConfigError, match="echem_backlog_bytes"):
        FrameLimits(echem_backlog_bytes=0)
    with pytest.raises(ConfigError, match="subscription_bytes"):
        FrameLimits(subscription_bytes=1.5)  # type: ignore[arg-type]


# -- echem: memory bounded in bytes ------------------------------------------------------
def _echem(samples: int, session_id: str | None = "later", source: str = "csv:x") -> Echem:
    return Echem(source=source, t_unix=[1.0] * samples, bias_v=[0.0] * samples,
                 current_a=[None] * samples, session_id=session_id)


def test_echem_backlog_is_bounded_in_bytes_and_drops_the_oldest() -> None:
    batch = _echem(1000)
    size = echem_message_bytes(batch)
    assert size >= 3 * 1000 * 32
    backlog = EchemBacklog(max_bytes=10 * size)
    for _ in range(40):
        backlog.append(batch)
    assert len(backlog) == 10
    assert backlog.nbytes <= backlog.max_bytes
    assert backlog.dropped == 30
    backlog.append(_echem(1, session_id=None))
    taken = backlog.take("later")
    assert len(taken) == 10  # 9 of "later" and the unnamed one; the oldest went
    assert taken[-1].session_id is None
    assert len(backlog) == 0
    assert backlog.nbytes == 0


def test_one_echem_source_string_is_not_copied_per_row(tmp_path: Path) -> None:
    """Case 11: a long source times many samples. The archive stores variable-length
    strings: one long source in a batch no longer pads every row of the flush."""
    writer = ArchiveWriter(tmp_path / "e.zarr", session={"session_id": "e"})
    n = protocol.MAX_ECHEM_SAMPLES
    source = "s" * protocol.MAX_ECHEM_SOURCE_CHARS
    writer.append_rows("echem", {"t_s": np.zeros(n), "t_unix": np.zeros(n),
                                 "bias_v": np.zeros(n), "current_a": np.zeros(n),
                                 "clock_offset_s": np.zeros(n),
                                 "source": np.full(n, source, dtype=object),
                                 "seq": np.arange(n)})
    writer.append_rows("echem", {"t_s": [1.0], "t_unix": [1.0], "bias_v": [0.0],
                                 "current_a": [0.0], "clock_offset_s": [0.0], "source": ["b"],
                                 "seq": [n]})
    writer.close()
    table = ArchiveReader(tmp_path / "e.zarr").table("echem")
    assert len(table["seq"]) == n + 1
    assert str(table["source"][0]) == source
    assert str(table["source"][-1]) == "b"


# -- start-up recovery and inspect on a poisoned journal -------------------------------
def test_recovery_and_inspect_survive_a_poisoned_frame_log(tmp_path: Path) -> None:
    """Case 4's follow-on: an archive left ``recording`` whose journal holds a line no
    frame_table can store. Recovery skips the line and what follows, reports it, marks
    the archive interrupted; the reader and ``summary`` (``inspect``) still work."""
    sessions = tmp_path / "sessions"
    frames = noisy_frames(3, shape=(8, 8))
    poisoned = []
    for name, line in {
        "big_int": {"position": 2, "seq": 2**64, "index": 2, "t_s": 0.2},
        "long_int": None,  # written raw below
        "deep": None,
        "nan_time": {"position": 2, "seq": 3, "index": 2, "t_s": "NaN?"},
    }.items():
        path = sessions / f"{name}.zarr"
        writer = ArchiveWriter(path, session={"session_id": name, "fps": BIG})
        for i in range(2):
            writer.append_frame(frames[i], seq=i + 1, index=i, t_s=0.1 * i, acquired_at=0.0)
        # A frame whose pixels were written and whose journal line is poison.
        writer.frames.resize((3, 8, 8))
        writer.frames[2] = frames[2]
        text = {"long_int": '{"position": 2, "seq": ' + "7" * 5000 + "}",
                "deep": '{"position": 2, "seq": ' + "[" * 50_000 + "]" * 50_000 + "}",
                }.get(name) or json.dumps(line)
        with open(path / FRAME_LOG, "a", encoding="utf-8") as log_file:
            log_file.write(text + "\n")
        poisoned.append(path)
        # ``writer`` is abandoned, as by a killed worker: status stays ``recording``.
    recovered = recover_abandoned(sessions)
    assert sorted(p for p, _ in recovered) == sorted(poisoned)
    for path in poisoned:
        reader = ArchiveReader(path)
        assert reader.status == "interrupted"
        assert reader.frame_count == 2
        assert reader.skipped_log_lines == 1
        summary = reader.summary()
        assert summary["frames"] == 2
        assert summary["fps"] == BIG  # kept as written; the wire now refuses it
        np.testing.assert_array_equal(reader.frames[:2], frames[:2])
    assert recover_abandoned(sessions) == []  # a second start finds nothing to do


def test_recovery_goes_on_past_an_archive_it_cannot_read(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          ) -> None:
    sessions = tmp_path / "sessions"
    good = sessions / "good.zarr"
    writer = ArchiveWriter(good, session={"session_id": "good"})
    writer.append_frame(np.zeros((4, 4), np.uint8), seq=1, index=0, t_s=0.0, acquired_at=0.0)
    bad = sessions / "a-bad.zarr"  # sorted first
    bad.mkdir()
    (bad / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": '
                                   '{"lithoscope": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    recovered = recover_abandoned(sessions)
    assert [p for p, _ in recovered] == [good]


# -- the worker loop under the barrage -------------------------------------------------
def _config(tmp_path: Path, **limits: Any) -> ServiceConfig:
    return ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                         results_endpoint=f"ipc://{tmp_path}/results",
                         sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1,
                         limits=FrameLimits(max_side=256, max_pixels=65536, **limits))


def _until(sock: zmq.Socket[Any], condition: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if sock.poll(100):
            msg = decode(sock.recv_multipart())
            if condition(msg):
                return msg
    raise AssertionError(f"timed out waiting for {what}")


def _barrage() -> list[list[bytes]]:
    """Every refused case, case 6's long names as whole sessions of their own, echem
    for sessions that never open, and random noise."""
    rng = np.random.default_rng(19)
    messages = [parts for parts, _ in REFUSED.values()]
    for i, name in enumerate(LONG_NAMES):
        messages += [
            [b"session_start", header_of("session_start", session_id=name,
                                         session_token=ATTACKER_TOKEN), b""],
            [b"frame", frame_header(name, seq=i + 1, session_token=ATTACKER_TOKEN), PX],
            [b"session_stop", header_of("session_stop", session_id=name,
                                        session_token=ATTACKER_TOKEN), b""],
        ]
    messages += [[b"echem", header_of("echem", session_id=f"never-{i}",
                                      session_token=ATTACKER_TOKEN, t_unix=[1.0] * 4000,
                                      bias_v=[0.0] * 4000, current_a=[None] * 4000), b""]
                 for i in range(20)]
    messages += [[bytes(rng.integers(0, 256, int(rng.integers(0, 64)), np.uint8))
                  for _ in range(int(rng.integers(1, 5)))] for _ in range(200)]
    return messages


def _peers(ctx: zmq.Context[Any], worker: Worker,
           ) -> tuple[zmq.Socket[Any], zmq.Socket[Any], zmq.Socket[Any]]:
    """A watcher of everything the worker publishes, the valid sender, and the hostile
    sender as another peer: ZeroMQ drops a peer that sends a part over MAXMSGSIZE (case
    13), and with it what that peer had queued."""
    watch = ctx.socket(zmq.SUB)
    watch.setsockopt(zmq.SUBSCRIBE, b"")
    watch.connect(worker.results_endpoint or "")
    push = ctx.socket(zmq.PUSH)
    push.connect(worker.frames_endpoint or "")
    attacker = ctx.socket(zmq.PUSH)
    attacker.connect(worker.frames_endpoint or "")
    return watch, push, attacker


def _close(ctx: zmq.Context[Any], *sockets: zmq.Socket[Any]) -> None:
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()


def test_worker_survives_the_barrage_and_the_valid_session_is_bit_identical(
        tmp_path: Path) -> None:
    frames = noisy_frames(12, shape=(16, 16))
    hostile = _barrage()
    echem_budget = 4 * echem_message_bytes(_echem(4000))
    ctx = zmq.Context()
    with WorkerThread(Worker(_config(tmp_path, echem_backlog_bytes=echem_budget))) as thread:
        worker = thread.worker
        watch, push, attacker = _peers(ctx, worker)
        try:
            _until(watch, lambda m: isinstance(m, Heartbeat), "a heartbeat")
            push.send_multipart(encode(SessionStart(
                session_id="valid", source="t", source_kind="t", t0_unix=0.0, live=False,
                seq=1, session_token=VALID_TOKEN)))
            per_frame = -(-len(hostile) // len(frames))
            for i, image in enumerate(frames):
                push.send_multipart(encode(Frame(
                    session_id="valid", index=i, t_s=0.1 * i, acquired_at=0.0,
                    shape=[16, 16], dtype="uint16", seq=i + 2, image=image,
                    session_token=VALID_TOKEN)), copy=False)
                for parts in hostile[i * per_frame:(i + 1) * per_frame]:
                    attacker.send_multipart(parts)
            push.send_multipart(encode(SessionStop(session_id="valid",
                                                   frames_sent=len(frames),
                                                   seq=len(frames) + 2,
                                                   session_token=VALID_TOKEN)))
            closed = _until(watch, lambda m: isinstance(m, SessionClosed)
                            and m.session_id == "valid", "the valid session's close")
            refused = len(REFUSED) + 200
            beat = _until(watch, lambda m: isinstance(m, Heartbeat)
                          and m.counters.get("rejected", 0) >= refused - 200
                          and m.counters.get("received", 0) >= len(frames), "the counts")
            assert thread._thread.is_alive()
        finally:
            _close(ctx, watch, push, attacker)
        thread.maybe_raise()
        backlog = worker._echem_unattached
        assert backlog.nbytes <= echem_budget
        assert backlog.dropped >= 20 - 4
    assert closed.frames_archived == len(frames)
    assert closed.frames_dropped == 0
    for reason in {reason for _, reason in REFUSED.values()}:
        assert beat.counters.get(f"rejected_{reason}", 0) >= 1, reason
    reader = ArchiveReader(closed.archive_path)
    assert reader.status == "complete"
    assert reader.frame_count == len(frames)
    np.testing.assert_array_equal(reader.frames[:], frames)
    sessions = sorted(p.name for p in (tmp_path / "sessions").iterdir())
    assert len(sessions) == 1 + len(LONG_NAMES)
    assert all(len(name) <= MAX_NAME_CHARS + len(".zarr") for name in sessions)


@st.composite
def _hostile_message(draw: st.DrawFn) -> list[bytes]:
    """A message of a type a sender may send, aimed at the valid session or another,
    with the attacker's token or none, and up to two fields given hostile values."""
    kind = draw(st.sampled_from(["session_start", "frame", "session_stop", "echem"]))
    header = dict(VALID[kind])
    header["session_id"] = draw(st.sampled_from(["valid", "s", "other", None]))
    if draw(st.booleans()):
        header["session_token"] = ATTACKER_TOKEN
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(set(header) - {"version", "type"})))
        header[field] = draw(st.one_of(_HOSTILE, st.integers(1, 40).map(_deep)))
    text = json.dumps(header).encode("utf-8", "surrogatepass")
    return [kind.encode(), text, bytes(32) if kind == "frame" else b""]


def test_the_running_worker_loop_fuzzed_between_the_frames_of_a_valid_session(
        tmp_path: Path) -> None:
    """Hypothesis drives the worker loop itself, over real sockets: batches of hostile
    messages of every type a sender sends, some aimed at the open valid session with
    the wrong token or none, between its frames. After every batch the worker is still
    beating; at the end the valid session is complete and bit-identical."""
    frames = noisy_frames(6, shape=(16, 16))
    ctx = zmq.Context()
    sent = 0
    with WorkerThread(Worker(_config(tmp_path))) as thread:
        watch, push, attacker = _peers(ctx, thread.worker)

        def send_frame(i: int) -> None:
            push.send_multipart(encode(Frame(
                session_id="valid", index=i, t_s=0.1 * i, acquired_at=0.0, shape=[16, 16],
                dtype="uint16", seq=i + 2, image=frames[i], session_token=VALID_TOKEN)),
                copy=False)

        @settings(max_examples=40, deadline=None, database=None)
        @given(batch=st.lists(_hostile_message(), min_size=1, max_size=6))
        def hostile_batch(batch: list[list[bytes]]) -> None:
            nonlocal sent
            if sent < len(frames):
                send_frame(sent)
                sent += 1
            for parts in batch:
                attacker.send_multipart(parts)
            before = _until(watch, lambda m: isinstance(m, Heartbeat), "a heartbeat")
            _until(watch, lambda m: isinstance(m, Heartbeat) and m.seq > before.seq,
                   "the next heartbeat")
            assert thread._thread.is_alive()

        try:
            _until(watch, lambda m: isinstance(m, Heartbeat), "a heartbeat")
            push.send_multipart(encode(SessionStart(
                session_id="valid", source="t", source_kind="t", t0_unix=0.0, live=False,
                seq=1, session_token=VALID_TOKEN)))
            hostile_batch()
            for i in range(sent, len(frames)):
                send_frame(i)
            push.send_multipart(encode(SessionStop(
                session_id="valid", frames_sent=len(frames), seq=len(frames) + 2,
                session_token=VALID_TOKEN)))
            closed = _until(watch, lambda m: isinstance(m, SessionClosed)
                            and m.session_id == "valid", "the valid session's close")
            assert thread._thread.is_alive()
        finally:
            _close(ctx, watch, push, attacker)
        thread.maybe_raise()
    assert closed.frames_archived == len(frames)
    reader = ArchiveReader(closed.archive_path)
    assert reader.status == "complete"
    assert reader.frame_count == len(frames)
    np.testing.assert_array_equal(reader.frames[:], frames)


_OVERSIZED_SUBSCRIBER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.XSUB)
sock.connect(sys.argv[1])
sock.send(b"\\x01" + bytes(8 * 2**20))
time.sleep(1.0)
"""
"""Runs in its own process: libzmq 4.3 may crash the *sending* side when its peer drops
it mid-message, which must not take the test process with it."""


def test_results_socket_refuses_an_oversized_subscription(tmp_path: Path) -> None:
    """Case 11: an 8 MiB subscription. The results socket's ``MAXMSGSIZE`` is
    ``subscription_bytes``, so ZeroMQ drops the peer at the first oversized part
    instead of holding its subscription; heartbeats go on for an honest subscriber."""
    with Worker(_config(tmp_path)) as bound:
        bound.bind()
        assert bound._results is not None
        assert bound._frames is not None
        assert bound._results.getsockopt(zmq.MAXMSGSIZE) == FrameLimits().subscription_bytes
        assert bound._frames.getsockopt(zmq.MAXMSGSIZE) == bound.config.limits.max_message_bytes
    ctx = zmq.Context()
    with WorkerThread(Worker(_config(tmp_path))) as thread:
        honest = ctx.socket(zmq.SUB)
        honest.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
        honest.connect(thread.worker.results_endpoint or "")
        try:
            _until(honest, lambda m: isinstance(m, Heartbeat), "a heartbeat")
            subprocess.run([sys.executable, "-c", _OVERSIZED_SUBSCRIBER,
                            thread.worker.results_endpoint or ""], timeout=DEADLINE_S,
                           check=False)
            before = _until(honest, lambda m: isinstance(m, Heartbeat), "heartbeats")
            after = _until(honest, lambda m: isinstance(m, Heartbeat) and m.seq > before.seq,
                           "heartbeats")
            assert after.sent_at - before.sent_at < 2.0  # no stall
        finally:
            honest.close(linger=0)
            ctx.term()
        thread.maybe_raise()


def test_subscriptions_that_match_no_topic_are_refused_and_honest_ones_apply(
        tmp_path: Path) -> None:
    """Case 11's other half: a subscriber sending hundreds of distinct subscriptions.
    Only prefixes of published topics are applied, so they cannot pile up in the
    results socket; a prefix subscription (``heart``) and the empty one still work."""
    ctx = zmq.Context()
    with WorkerThread(Worker(_config(tmp_path))) as thread:
        endpoint = thread.worker.results_endpoint or ""
        honest = ctx.socket(zmq.SUB)
        honest.setsockopt(zmq.SUBSCRIBE, b"heart")
        honest.connect(endpoint)
        junk = ctx.socket(zmq.XSUB)
        junk.connect(endpoint)
        everything = ctx.socket(zmq.SUB)
        everything.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            _until(honest, lambda m: isinstance(m, Heartbeat), "a heartbeat")
            for i in range(500):  # within the XSUB's send high-water mark
                junk.send(b"\x01" + f"junk-{i}".encode())
            junk.send(b"\x02not-a-subscription")
            _until(honest, lambda m: isinstance(m, Heartbeat)
                   and m.counters.get("rejected_subscription", 0) >= 501,
                   "the refused subscriptions counted")
            everything.connect(endpoint)
            _until(everything, lambda m: isinstance(m, Heartbeat), "a heartbeat for ''")
        finally:
            _close(ctx, honest, junk, everything)
        thread.maybe_raise()


# -- the decoder fuzzed for every message type ----------------------------------------
def _valid_headers() -> dict[str, dict[str, Any]]:
    image = np.zeros((4, 4), np.uint16)
    messages: list[Any] = [
        SessionStart(session_id="s", source="t", source_kind="t", t0_unix=1.0, live=True,
                     pixel_size_nm=0.5, fps=10.0, shape=[4, 4], dtype="uint16",
                     frame_count=3, archive_name="a", metadata={"k": [1, 2.0, "x"]}),
        Frame(session_id="s", index=0, t_s=0.0, acquired_at=1.0, shape=[4, 4],
              dtype="uint16", pixel_size_nm=0.5, exposure_s=0.1, metadata={"bias_v": 1.0},
              truth={"area_px": 3}, image=image),
        SessionStop(session_id="s", frames_sent=1),
        protocol.Result(session_id="s", index=1, t_s=0.1, latency_s=0.01,
                        cluster={"area_px": 10}, particles={"label": [1, 2]}),
        protocol.Event(session_id="s", kind="contact_made", t_s=1.0, frame=4,
                       particle_ids=[1], context={"bias_v": 0.1}),
        Heartbeat(session_id=None, counters={"received": 1}, fps_in=1.0, fps_analysed=1.0,
                  latency_p50_s=0.1, latency_p99_s=None, archive_path="x", archive_bytes=9),
        SessionClosed(session_id="s", archive_path="/x.zarr", frames_archived=1,
                      frames_analysed=1, frames_dropped=0, reason="end_of_source"),
        Echem(source="t", t_unix=[1.0, 2.0], bias_v=[0.1, None], current_a=[None, 1e-9],
              clock_offset_s=0.5, session_id="s"),
    ]
    return {type(m).TYPE.value: json.loads(bytes(encode(m)[1])) for m in messages}


VALID = _valid_headers()
_HOSTILE_SCALARS = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1, BIG]),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.text(max_size=8), st.sampled_from(["\ud800", "a\nb", "\x00", "x" * 5000, "\x85"]))
_HOSTILE = st.recursive(_HOSTILE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12)


FUZZ_REASONS = {"bad_field", "bad_number", "bad_string", "too_deep", "too_large", "bad_shape",
                "bad_dtype", "size_mismatch", "unknown_version", "unknown_type",
                "topic_mismatch", "bad_header"}


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(VALID)), data=st.data(),
       value=st.one_of(_HOSTILE, st.integers(1, 40).map(_deep)))
def test_every_message_type_with_a_hostile_value_decodes_storable_or_is_refused(
        kind: str, data: st.DataObject, value: Any) -> None:
    header = dict(VALID[kind])
    field = data.draw(st.sampled_from(sorted(set(header) - {"version", "type"})))
    header[field] = value
    try:
        text = json.dumps(header).encode("utf-8", "surrogatepass")
    except ValueError:
        return  # JSON itself cannot carry it (json.dumps refuses non-finite floats)
    payload = bytes(32) if kind == "frame" else b""
    try:
        msg = decode([kind.encode(), text, payload])
    except ProtocolError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason in FUZZ_REASONS
        return
    # What decodes can be stored as it is: JSON without NaN, int64, UTF-8.
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)
              if f.name != "image"}
    stored = json.dumps(fields, allow_nan=False)
    stored.encode("utf-8")
    stack = [fields]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            assert -(2**63) <= item < 2**63
        elif isinstance(item, float):
            assert math.isfinite(item)


def test_a_long_echem_run_is_sent_in_pieces_the_decoder_accepts() -> None:
    n = 2 * protocol.MAX_ECHEM_SAMPLES + 5
    batch = EchemBatch(np.arange(n, dtype=float), np.zeros(n), np.full(n, np.nan))
    pieces = list(batch.pieces())
    assert [len(p) for p in pieces] == [protocol.MAX_ECHEM_SAMPLES] * 2 + [5]
    np.testing.assert_array_equal(np.concatenate([p.t_unix for p in pieces]), batch.t_unix)
    for piece in pieces:
        msg = Echem(source="csv:x", t_unix=piece.t_unix.tolist(), bias_v=[0.0] * len(piece),
                    current_a=[None] * len(piece))
        assert decode(encode(msg)) == msg


def test_an_echem_log_on_a_long_path_still_makes_a_message_the_service_accepts(
        tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 200] * 3)
    deep.mkdir(parents=True)
    source = CsvEchemSource(deep / "bias.csv")
    assert len(source.name) == protocol.MAX_ECHEM_SOURCE_CHARS
    assert source.name.startswith("csv:...")
    assert source.name.endswith("/bias.csv")
    msg = Echem(source=source.name, t_unix=[1.0], bias_v=[0.0], current_a=[None])
    assert decode(encode(msg)) == msg
