"""The worker's archive thread, over real sockets into real zarr stores: a full queue
makes the publisher wait and loses nothing, a failed write is announced while the
service goes on, and stopping drains the queue before the archive is closed.

The writer is held back by a gate around ``ArchiveWriter.append_frame`` (a disk that
stalls), so the queue fills for certain; every wait is for a counter or a message, with
a deadline.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from lithoscope.service.archive import ArchiveReader, ArchiveWriter
from lithoscope.service.archive.options import ArchiveConfig
from lithoscope.service.config import ServiceConfig
from lithoscope.service.errors import ArchiveError
from lithoscope.service.live import sessions as sessions_module
from lithoscope.service.live.budget import MemoryBudget
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import Event, Heartbeat, decode
from lithoscope.service.publisher import Publisher, PublishReport

from support import publishing
from support.arrays import ArraySource, noisy_frames

DEADLINE_S = 60.0
BUDGET_FRAMES = 2
BUDGET_BYTES = BUDGET_FRAMES * 128 * 128 * 2
"""A memory budget of two 128² uint16 frames (eight of 64²)."""


def config(tmp_path: Path, **overrides: Any) -> ServiceConfig:
    settings: dict[str, Any] = {"memory_budget_bytes": BUDGET_BYTES, "frame_hwm": 2,
                                **overrides}
    return ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                         results_endpoint=f"ipc://{tmp_path}/results",
                         sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1, **settings)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Frames reach the disk only while the gate is open."""
    opened = threading.Event()
    append_frames = ArchiveWriter.append_frames

    def held(self: ArchiveWriter, *args: Any, **kwargs: Any) -> int:
        if not opened.wait(DEADLINE_S):
            raise AssertionError("the test never opened the gate")
        return append_frames(self, *args, **kwargs)

    monkeypatch.setattr(ArchiveWriter, "append_frames", held)
    yield opened
    opened.set()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def publish_in_thread(worker: Worker, frames: np.ndarray, *, stop: threading.Event | None = None,
                      ack_timeout_s: float = DEADLINE_S) -> tuple[threading.Thread, dict[str, Any]]:
    return publishing.publish_in_thread(
        worker.frames_endpoint or "", worker.results_endpoint or "", frames,
        fps=10.0, ack_timeout_s=ack_timeout_s, publisher_options={"sndhwm": 2}, speed=None,
        live=False, stop=stop)


def joined(thread: threading.Thread, out: dict[str, Any]) -> PublishReport:
    return publishing.joined(thread, out, DEADLINE_S)


def test_a_full_memory_budget_makes_the_publisher_wait_and_loses_nothing(
        tmp_path: Path, gate: threading.Event) -> None:
    frames = noisy_frames(60, shape=(128, 128))
    with WorkerThread(Worker(config(tmp_path))) as thread:
        worker = thread.worker
        publisher, out = publish_in_thread(worker, frames)
        wait_for(lambda: worker.counters["memory_full"] >= 1, "a full budget")
        # The writer is stalled and the budget full: the worker stops reading, so
        # frames pile up in ZeroMQ's queues and the publisher waits instead of dropping.
        assert worker.counters["received"] == BUDGET_FRAMES
        assert worker.budget.held_bytes == BUDGET_BYTES
        assert publisher.is_alive()
        gate.set()
        report = joined(publisher, out)
    assert report.closed is not None
    assert report.frames_sent == report.closed.frames_archived == len(frames)
    assert report.closed.frames_dropped == 0
    assert report.closed.frames_analysed == len(frames)
    reader = ArchiveReader(report.closed.archive_path)
    assert reader.status == "complete"  # the ack came after the last frame was on disk
    np.testing.assert_array_equal(reader.frames[:], frames)
    np.testing.assert_array_equal(reader.table("frame_table")["index"], np.arange(len(frames)))
    np.testing.assert_array_equal(reader.table("cluster")["frame"], np.arange(len(frames)))
    # Every frame's bytes came back once written and analysed: nothing leaks.
    wait_for(lambda: worker.budget.held_bytes == 0, "the budget to empty")
    assert worker.budget.peak_bytes <= BUDGET_BYTES


def test_the_budget_counts_a_frame_once_until_its_last_holder_lets_go() -> None:
    budget = MemoryBudget(3 * 800)
    frames = [np.zeros((20, 20), np.uint16) for _ in range(3)]  # 800 bytes each
    assert budget.has_room()
    budget.hold(frames[0])
    view = frames[0][::2]  # another holder of the same frame: not counted again
    budget.hold(frames[1])
    assert budget.held_bytes == 1600
    assert budget.has_room()
    budget.hold(frames[2])
    assert not budget.has_room()
    frames.pop(0)
    assert budget.held_bytes == 2400  # the view still holds the first frame
    del view
    gc.collect()
    assert budget.held_bytes == 1600
    assert budget.has_room()
    frames.clear()
    assert budget.held_bytes == 0
    assert budget.peak_bytes == 2400
    big = np.zeros(10_000, np.uint8)  # larger than the whole budget: taken alone
    budget.hold(big)
    assert not budget.has_room()


@contextlib.contextmanager
def _watching(worker: Worker) -> Iterator[zmq.Socket[Any]]:
    """A subscriber to everything the worker publishes, connected (a heartbeat heard)."""
    context = zmq.Context()
    watch = context.socket(zmq.SUB)
    watch.setsockopt(zmq.SUBSCRIBE, b"")
    watch.connect(worker.results_endpoint or "")
    try:
        assert watch.poll(int(DEADLINE_S * 1000))  # a heartbeat: subscribed
        yield watch
    finally:
        watch.close(linger=0)
        context.term()


def test_a_stuck_disk_keeps_the_heartbeat_going_and_is_announced(
        tmp_path: Path, gate: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the worker waits for the disk with its memory budget full, a monitor must
    still hear it (a slow disk is not a dead worker), and a disk stuck for long is an
    alert."""
    monkeypatch.setattr(sessions_module, "_ARCHIVE_STALL_S", 0.5)
    frames = noisy_frames(30, shape=(64, 64))
    with WorkerThread(Worker(config(tmp_path))) as thread:
        worker = thread.worker
        with _watching(worker) as watch:
            publisher, out = publish_in_thread(worker, frames)
            wait_for(lambda: worker.counters["memory_full"] >= 1, "a full budget")
            heartbeats, stalled = 0, []
            deadline = time.monotonic() + DEADLINE_S
            while (heartbeats < 5 or not stalled) and time.monotonic() < deadline:
                if watch.poll(100):
                    msg = decode(watch.recv_multipart())
                    heartbeats += isinstance(msg, Heartbeat)
                    if isinstance(msg, Event) and msg.kind == "archive_stalled":
                        stalled.append(msg)
            received = worker.counters["received"]
            gate.set()
            report = joined(publisher, out)
    assert heartbeats >= 5
    assert len(stalled) == 1
    assert "Nothing is lost yet" in stalled[0].message
    assert received < len(frames)  # it was still waiting when the alert came
    assert report.closed is not None
    assert report.closed.frames_archived == len(frames)


def test_a_failed_write_goes_on_in_the_fallback_archive_and_the_service_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_at = 5
    append_frames = ArchiveWriter.append_frames

    def disk_full_at_frame_5(self: ArchiveWriter, frames: list[Any]) -> int:
        if (self.path.name.startswith("failing") and self.path.parent.name == "sessions"
                and any(row["index"] == fail_at for _, row in frames)):
            raise ArchiveError(f"Cannot write frame {fail_at} to {self.path}: "
                               "No space left on device.")
        return append_frames(self, frames)

    monkeypatch.setattr(ArchiveWriter, "append_frames", disk_full_at_frame_5)
    frames = noisy_frames(20, shape=(64, 64))
    fallback = tmp_path / "fallback"
    with WorkerThread(Worker(config(tmp_path, fallback_dir=str(fallback)))) as thread:
        worker = thread.worker
        with _watching(worker) as watch:
            reports = []
            for name in ("failing", "next"):
                with Publisher(worker.frames_endpoint or "",
                               results_endpoint=worker.results_endpoint,
                               ack_timeout_s=DEADLINE_S) as pub:
                    source = ArraySource(frames)
                    reports.append(pub.publish(source, speed=None, live=False,
                                               archive_name=name))
            errors = []
            while watch.poll(0):
                msg = decode(watch.recv_multipart())
                if isinstance(msg, Event) and msg.kind == "archive_error":
                    errors.append(msg)
        assert worker.counters["archive_errors"] >= 1
    failing, after = (r.closed for r in reports)
    assert failing is not None
    assert after is not None
    assert len(errors) == 1  # one alert, however many frames were queued behind it
    assert "No space left on device" in errors[0].message
    moved = fallback / "failing.zarr"
    assert str(moved) in errors[0].message  # where the session goes on
    assert failing.frames_archived == len(frames)  # nothing accepted was dropped
    assert failing.frames_analysed == len(frames)  # analysis and results carried on
    reader = ArchiveReader(failing.archive_path)
    assert reader.status == "interrupted"
    assert "No space left on device" in reader.meta["archive_error"]
    assert reader.meta["continued_in"] == str(moved)
    # The batch that failed (the frame at fail_at and those queued with it) and every
    # frame after it went on in the fallback archive, each once, in order.
    kept = reader.frame_count
    assert kept <= fail_at
    np.testing.assert_array_equal(reader.frames[:kept], frames[:kept])
    rest = ArchiveReader(moved)
    assert rest.status == "complete"
    assert rest.meta["continues"] == failing.archive_path
    np.testing.assert_array_equal(rest.frames[:], frames[kept:])
    assert after.frames_archived == len(frames)
    following = ArchiveReader(after.archive_path)
    assert following.status == "complete"
    np.testing.assert_array_equal(following.frames[:], frames)


def _fill_the_queue(tmp_path: Path, frames: np.ndarray) -> tuple[
        Worker, threading.Thread, threading.Event,
        tuple[threading.Thread, dict[str, Any], threading.Event]]:
    """A worker run in a thread (stopped by the returned event, as SIGTERM does), and a
    publisher streaming ``frames`` to it until the gated disk has filled its budget."""
    worker = Worker(config(tmp_path))
    worker.bind()
    stop_worker, stop_publisher = threading.Event(), threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop_worker,), daemon=True)
    runner.start()
    publisher, out = publish_in_thread(worker, frames, stop=stop_publisher, ack_timeout_s=1.0)
    wait_for(lambda: worker.counters["memory_full"] >= 1, "a full budget")
    return worker, runner, stop_worker, (publisher, out, stop_publisher)


def test_stopping_drains_the_queue_before_closing_the_archive(
        tmp_path: Path, gate: threading.Event) -> None:
    frames = noisy_frames(200, shape=(128, 128))
    worker, runner, stop_worker, (publisher, out, stop_publisher) = _fill_the_queue(
        tmp_path, frames)
    try:
        # SIGTERM while the budget is full and frames wait for the disk: the worker
        # stops reading, and closing writes every frame it took from the socket.
        stop_worker.set()
        gate.set()
        runner.join(DEADLINE_S)
        assert not runner.is_alive()
        received = worker.counters["received"]
        assert BUDGET_FRAMES <= received < len(frames)
    finally:
        worker.close()
        stop_publisher.set()
    joined(publisher, out)
    (path,) = (tmp_path / "sessions").glob("*.zarr")
    reader = ArchiveReader(path)
    assert reader.status == "interrupted"
    assert reader.meta["stop_reason"] == "shutdown"
    assert reader.frame_count == reader.meta["frame_count"] == received
    assert worker.counters["archived"] == received
    assert not (path / "frame_log.jsonl").exists()
    np.testing.assert_array_equal(reader.frames[:], frames[:received])
    np.testing.assert_array_equal(reader.table("frame_table")["index"], np.arange(received))


def test_stopping_while_the_disk_takes_nothing_returns_at_once_and_keeps_what_it_took(
        tmp_path: Path, gate: threading.Event) -> None:
    frames = noisy_frames(50, shape=(64, 64))
    worker, runner, stop_worker, (publisher, out, stop_publisher) = _fill_the_queue(
        tmp_path, frames)
    try:
        stop_worker.set()  # Ctrl-C with the disk still stuck (the gate closed)
        runner.join(10.0)
        stopped = not runner.is_alive()
        gate.set()  # the disk comes back: what was queued is written at closing
        runner.join(DEADLINE_S)
    finally:
        worker.close()
        stop_publisher.set()
    joined(publisher, out)
    assert stopped, "the worker did not stop while waiting for the disk"
    (path,) = (tmp_path / "sessions").glob("*.zarr")
    reader = ArchiveReader(path)
    assert reader.status == "interrupted"
    # The loop never waits for the disk (the budget stops it reading instead): it stops
    # at once, and what it had taken is written when the disk comes back.
    assert "archive_error" not in reader.meta
    assert reader.frame_count == worker.counters["archived"] == worker.counters["received"]
    assert worker.counters["frames_lost"] == 0
    np.testing.assert_array_equal(reader.frames[:], frames[: reader.frame_count])


def test_inline_archive_writes_without_the_thread_still_count_every_frame(
        tmp_path: Path) -> None:
    frames = noisy_frames(12, shape=(32, 32))
    with WorkerThread(Worker(config(tmp_path, archive=ArchiveConfig(inline=True)))) as thread:
        worker = thread.worker
        with Publisher(worker.frames_endpoint or "", results_endpoint=worker.results_endpoint,
                       ack_timeout_s=DEADLINE_S) as pub:
            report = pub.publish(ArraySource(frames), speed=None, live=False)
    assert report.closed is not None
    assert report.closed.frames_archived == len(frames)
    np.testing.assert_array_equal(ArchiveReader(report.closed.archive_path).frames[:], frames)


def _frames_in_thread_at_submit(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, for each frame handed to the analysis thread, how many jobs it already
    held (waiting or running)."""
    from lithoscope.service.live.analysing import _Analysing

    seen: list[int] = []
    analyse = _Analysing._analyse

    def watched(self: _Analysing, *args: Any, **kwargs: Any) -> None:
        seen.append(self._analysis.in_thread)
        analyse(self, *args, **kwargs)

    monkeypatch.setattr(_Analysing, "_analyse", watched)
    return seen


def test_a_replay_hands_the_next_frame_over_while_one_is_analysed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis thread starts a replay's next frame as it ends one, not after the
    socket loop has published that one's results: one frame waits behind the one being
    analysed, never more. Every frame is analysed, in order."""
    from lithoscope.service.live.session import run_local_session

    seen = _frames_in_thread_at_submit(monkeypatch)
    frames = noisy_frames(30, shape=(128, 128))
    report = run_local_session(ArraySource(frames, fps=20.0), config=ServiceConfig(
        sessions_dir=str(tmp_path)), archive_path=tmp_path / "replay.zarr")
    assert report.closed is not None
    assert report.closed.frames_archived == report.closed.frames_analysed == len(frames)
    assert len(seen) == len(frames)
    assert max(seen) == 1  # the next one was handed over while one was in the thread
    reader = ArchiveReader(tmp_path / "replay.zarr")
    np.testing.assert_array_equal(reader.table("cluster")["frame"], np.arange(len(frames)))


def test_a_live_session_hands_its_newest_frame_over_only_when_the_thread_is_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Live, a frame waiting behind another would be older than the newest by the time
    its analysis began: it is handed over only when the analysis thread is free."""
    from lithoscope.service.live.session import run_local_session

    seen = _frames_in_thread_at_submit(monkeypatch)
    frames = noisy_frames(40, shape=(128, 128))
    report = run_local_session(ArraySource(frames, fps=40.0), config=ServiceConfig(
        sessions_dir=str(tmp_path)), speed=1.0, live=True,
        archive_path=tmp_path / "live.zarr")
    assert report.closed is not None
    assert report.closed.frames_archived == len(frames)
    assert 1 <= report.closed.frames_analysed == len(seen)
    assert set(seen) == {0}
