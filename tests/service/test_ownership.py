"""A session belongs to the sender that opened it, and its archive holds what was
accepted, once, whatever else arrives: real sockets, a running worker (issue 19,
cases 8, 9, 10 and the worker-loop parts of 14)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import (
    Echem,
    Frame,
    Message,
    SessionClosed,
    SessionStart,
    SessionStop,
    encode,
)

from support.arrays import noisy_frames

DEADLINE_S = 30.0
OWNER = "owner-token-0123456789abcdef"
INTRUDER = "intruder-token-0123456789abc"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Worker, Callable[[Message], None]]]:
    with _running(tmp_path) as both:
        yield both


@contextlib.contextmanager
def _running(tmp_path: Path, **settings: Any
             ) -> Iterator[tuple[Worker, Callable[[Message], None]]]:
    config = ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                           results_endpoint=f"ipc://{tmp_path}/results",
                           sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1,
                           **settings)
    thread = WorkerThread(Worker(config)).start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(thread.worker.frames_endpoint or "")
    try:
        yield thread.worker, lambda msg: push.send_multipart(encode(msg))
    finally:
        push.close(linger=0)
        ctx.term()
        thread.stop()


def start(session_id: str, token: str | None = OWNER, **changes: Any) -> SessionStart:
    return SessionStart(session_id=session_id, source="test", source_kind="test",
                        t0_unix=1000.0, live=False, session_token=token, **changes)


def frame(session_id: str, image: np.ndarray, index: int, *, seq: int | None = None,
          token: str | None = OWNER) -> Frame:
    return Frame(session_id=session_id, index=index, t_s=0.1 * index, acquired_at=1000.0,
                 shape=list(image.shape), dtype=image.dtype.name,
                 seq=index + 2 if seq is None else seq, image=image, session_token=token)


def stop(session_id: str, frames_sent: int, token: str | None = OWNER) -> SessionStop:
    return SessionStop(session_id=session_id, frames_sent=frames_sent, session_token=token)


def echem(session_id: str | None, token: str | None) -> Echem:
    return Echem(source="intruder", t_unix=[1000.0, 1000.1], bias_v=[1.0, 1.0],
                 current_a=[1e-9, 1e-9], session_id=session_id, session_token=token)


def closed(worker: Worker, session_id: str) -> SessionClosed:
    wait_for(lambda: session_id in worker.closed_sessions, f"{session_id} closed")
    return worker.closed_sessions[session_id]


def test_no_other_sender_can_damage_a_live_session(
        running: tuple[Worker, Callable[[Message], None]]) -> None:
    worker, send = running
    frames = noisy_frames(10, shape=(16, 16))
    other_shape = noisy_frames(1, shape=(8, 8))[0]
    send(start("victim"))
    for i in range(5):
        send(frame("victim", frames[i], i))
    # Everything an intruder who read the session id off the results stream can send:
    # wrong or missing tokens, another shape, a replayed frame, a stop, echem.
    for token in (None, INTRUDER):
        send(frame("victim", other_shape, 5, seq=7, token=token))
        send(frame("victim", frames[4], 4, seq=-1, token=token))
        send(frame("victim", frames[4], 4, seq=6, token=token))
        send(stop("victim", 5, token=token))
        send(start("victim", token=token))
        send(echem("victim", token))
        send(echem(None, token))
    for i in range(5, 10):
        send(frame("victim", frames[i], i))
    send(stop("victim", 10))
    ack = closed(worker, "victim")
    reader = ArchiveReader(ack.archive_path)
    assert reader.status == "complete"
    assert ack.frames_archived == reader.frame_count == 10
    np.testing.assert_array_equal(reader.frames[:], frames)
    assert reader.table("echem") == {}
    rejected = worker.decoder.rejected
    # Wrong token: 3 frames, the stop, the start, the echem naming the session; no
    # token: 3 frames and the stop (a start or echem without one is "missing").
    assert rejected["session_token_mismatch"] == 6 + 4
    assert rejected["session_token_missing"] == 1 + 2
    # The intruder's echem with its own token and no session waits for a session that
    # token opens, filed nowhere meanwhile.
    assert [m.session_token for m in worker._echem_unattached] == [INTRUDER]
    assert "intruder" not in (ack.archive_path + str(reader.meta))
    assert OWNER not in str(reader.meta)  # the secret is nowhere a reader looks


def test_repeated_negative_and_out_of_order_seq_store_each_frame_once(
        running: tuple[Worker, Callable[[Message], None]]) -> None:
    worker, send = running
    seqs = [2, 2, 3, 4, 4, 100, 50, 7, -3, 11, 12]
    frames = noisy_frames(len(seqs), shape=(16, 16))
    send(start("mine"))
    for i, seq in enumerate(seqs):
        send(frame("mine", frames[i], i, seq=seq))
    send(stop("mine", len(seqs)))
    ack = closed(worker, "mine")
    reader = ArchiveReader(ack.archive_path)
    kept = [0, 2, 3, 5]  # seq 2, 3, 4, 100: the rest repeat, go back or are negative
    assert ack.frames_archived == reader.frame_count == len(kept)
    np.testing.assert_array_equal(reader.frames[:], frames[kept])
    assert list(reader.table("frame_table")["seq"]) == [2, 3, 4, 100]
    assert worker.decoder.rejected["seq_not_increasing"] == 6
    assert worker.decoder.rejected["bad_seq"] == 1
    # The publisher says 11 were sent; 4 are archived: reported, and not "complete".
    assert reader.status == "interrupted"
    assert reader.meta["frames_sent"] == len(seqs)
    kinds = [(e["kind"], e["magnitude"]) for e in reader.events()]
    assert ("frames_dropped", float(len(seqs) - len(kept))) in kinds


def test_frames_for_a_session_nobody_opened_open_nothing(
        running: tuple[Worker, Callable[[Message], None]], tmp_path: Path) -> None:
    worker, send = running
    image = noisy_frames(1, shape=(8, 8))[0]
    for i in range(20):
        send(frame(f"made-up-{i}", image, 0))
    send(start("tokenless", token=None))
    send(start("short", token="abc"))
    send(frame("tokenless", image, 0, token=None))
    wait_for(lambda: worker.decoder.rejected["unknown_session"] == 21, "frames counted")
    assert worker.decoder.rejected["session_token_missing"] == 1
    assert worker.decoder.rejected["session_token_invalid"] == 1
    assert worker.sessions == {}
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_open_sessions_are_bounded_and_idle_ones_closed(tmp_path: Path) -> None:
    with _running(tmp_path, max_sessions=2, idle_session_timeout_s=0.5) as (worker, send):
        image = noisy_frames(1, shape=(8, 8))[0]
        for name in ("one", "two", "three"):
            send(start(name))
        wait_for(lambda: worker.decoder.rejected["too_many_sessions"] == 1, "the third refused")
        assert set(worker.sessions) <= {"one", "two"}
        send(frame("three", image, 0))
        ack = closed(worker, "one")  # nothing more came: closed after the timeout
        assert ack.reason == "idle"
        assert ArchiveReader(ack.archive_path).status == "interrupted"
        assert worker.counters["sessions_closed_idle"] >= 1
        send(start("three"))  # room again
        wait_for(lambda: "three" in worker.sessions or "three" in worker.closed_sessions,
                 "three opened")


def test_an_unexpected_error_on_one_message_is_counted_and_the_loop_goes_on(
        running: tuple[Worker, Callable[[Message], None]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    worker, send = running

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug reached by one message")

    monkeypatch.setattr(worker, "_file_echem", broken)
    send(start("after"))
    for _ in range(3):
        send(echem("after", OWNER))
    frames = noisy_frames(2, shape=(8, 8))
    for i in range(2):
        send(frame("after", frames[i], i))
    send(stop("after", 2))
    ack = closed(worker, "after")
    assert worker.counters["message_errors"] == 3
    assert ack.frames_archived == 2
    assert ArchiveReader(ack.archive_path).status == "complete"


def test_creating_archives_on_a_hung_disk_never_stops_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives are created in the archive thread: while creating one hangs, sessions
    still open, heartbeats go on, and nothing is lost once the disk comes back."""
    from lithoscope.service.archive import ArchiveWriter

    disk = threading.Event()
    create = ArchiveWriter.__init__

    def hung(self: ArchiveWriter, *args: Any, **kwargs: Any) -> None:
        if not disk.wait(DEADLINE_S):
            raise AssertionError("the test never released the disk")
        create(self, *args, **kwargs)

    monkeypatch.setattr(ArchiveWriter, "__init__", hung)
    frames = noisy_frames(3, shape=(8, 8))
    with _running(tmp_path) as (worker, send):
        for name in ("one", "two", "three"):
            send(start(name))
            for i in range(3):
                send(frame(name, frames[i], i))
        wait_for(lambda: len(worker.sessions) == 3, "three sessions open")
        beats = worker._results_seq
        wait_for(lambda: worker._results_seq > beats + 5, "heartbeats while the disk hangs")
        disk.set()
        for name in ("one", "two", "three"):
            send(stop(name, 3))
        for name in ("one", "two", "three"):
            ack = closed(worker, name)
            assert ack.frames_archived == 3
            reader = ArchiveReader(ack.archive_path)
            assert reader.status == "complete"
            np.testing.assert_array_equal(reader.frames[:], frames)


def test_many_stalled_sessions_do_not_stall_another_sessions_archive(tmp_path: Path) -> None:
    """Issue 19 case 10: sessions that go quiet raise source_stalled each; their events
    must not hold up the archive thread for a session that is streaming."""
    frames = noisy_frames(30, shape=(32, 32))
    with _running(tmp_path, stall_timeout_s=0.2, max_sessions=16) as (worker, send):
        image = noisy_frames(1, shape=(8, 8))[0]
        for n in range(15):
            send(start(f"quiet-{n}"))
            send(frame(f"quiet-{n}", image, 0))
        wait_for(lambda: sum(s.stalled for s in worker.sessions.values()) == 15,
                 "fifteen sessions stalled")
        send(start("busy"))
        for i in range(len(frames)):
            send(frame("busy", frames[i], i))
        send(stop("busy", len(frames)))
        ack = closed(worker, "busy")
    reader = ArchiveReader(ack.archive_path)
    assert reader.status == "complete"
    np.testing.assert_array_equal(reader.frames[:], frames)
    kinds = {e["kind"] for e in reader.events()}
    assert "archive_stalled" not in kinds
