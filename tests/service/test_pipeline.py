"""Publisher → ZeroMQ → worker → archive, over real sockets (tcp loopback and ipc)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from lithoscope.clients import Subscriber
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.worker import SkipRate, Worker, WorkerThread, default_archive_path
from lithoscope.service.protocol import Event, Frame, Heartbeat, SessionStart, encode
from lithoscope.service.publisher import Publisher

from support.arrays import ArraySource, noisy_frames

TOKEN = "pipeline-test-token-0123456789"


def endpoints(kind: str, tmp_path: Path) -> dict[str, str]:
    if kind == "tcp":
        return {"frames_endpoint": "tcp://127.0.0.1:*", "results_endpoint": "tcp://127.0.0.1:*"}
    return {"frames_endpoint": f"ipc://{tmp_path}/frames",
            "results_endpoint": f"ipc://{tmp_path}/results"}


@pytest.fixture(params=["tcp", "ipc"])
def worker(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = ServiceConfig(sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.2,
                           **endpoints(request.param, tmp_path))
    thread = WorkerThread(Worker(config)).start()
    yield thread.worker
    thread.stop()


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_every_frame_reaches_the_archive_bit_identical(worker: Worker, dtype: str) -> None:
    frames = noisy_frames(40, dtype=dtype)
    with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                   ack_timeout_s=30) as publisher:
        report = publisher.publish(ArraySource(frames, fps=20.0), speed=None, live=False)
    assert report.closed is not None
    assert report.frames_sent == report.closed.frames_archived == 40
    assert report.closed.frames_analysed == 40

    reader = ArchiveReader(report.closed.archive_path)
    assert reader.status == "complete"
    np.testing.assert_array_equal(reader.frames[:], frames)
    table = reader.table("frame_table")
    np.testing.assert_allclose(table["t_s"], np.arange(40) / 20.0)
    np.testing.assert_array_equal(table["index"], np.arange(40))
    assert np.all(np.diff(table["acquired_at"]) >= 0)
    assert json.loads(str(table["metadata_json"][5]))["bias_v"] == -2.0
    cluster = reader.table("cluster")
    np.testing.assert_array_equal(cluster["frame"], np.arange(40))
    assert np.all(cluster["area_px"] > 0)  # the discs were found
    assert reader.meta["pixel_size_nm"] == 0.5
    assert reader.meta["config"]["analysis"]  # how it was analysed is recorded


def test_pacing_follows_the_source_clock(worker: Worker) -> None:
    frames = noisy_frames(11, shape=(32, 32))
    with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint) as pub:
        report = pub.publish(ArraySource(frames, fps=10.0), speed=2.0)  # 1 s of source → 0.5 s
    # Only a lower bound: on a loaded machine (CI shares 2 cores) the session's closing
    # handshake alone has taken seconds, so an upper bound measured the machine.
    assert report.wall_s >= 0.45
    assert report.closed is not None
    assert report.closed.frames_archived == 11


def test_malformed_messages_are_counted_and_good_ones_continue(worker: Worker) -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(worker.frames_endpoint)
    frames = noisy_frames(3, shape=(16, 16))
    start = SessionStart(session_id="mixed", source="test", source_kind="test",
                         t0_unix=0.0, live=False, session_token=TOKEN)

    def frame(i: int, **changes: object) -> list[bytes | memoryview]:
        values: dict[str, object] = dict(session_id="mixed", index=i, t_s=i * 0.1,
                                         acquired_at=0.0, shape=[16, 16], dtype="uint16",
                                         seq=i + 2, image=frames[i], session_token=TOKEN)
        values.update(changes)
        return encode(Frame(**values))  # type: ignore[arg-type]

    bad_size = frame(1)
    bad_size[2] = b"\x00" * 7
    messages = [encode(start), frame(0), [b"frame", b"{oops", b""], bad_size,
                [b"frame"], frame(1), [b"frame", b'{"version": 99, "type": "frame"}', b""],
                frame(2)]
    with Subscriber(worker.results_endpoint, topics=["heartbeat", "session_closed"]) as sub:
        for parts in messages:
            raw.send_multipart(parts)
        from lithoscope.service.protocol import SessionStop
        raw.send_multipart(encode(SessionStop(session_id="mixed", frames_sent=3, seq=9,
                                             session_token=TOKEN)))
        counters: dict[str, int] = {}
        closed = False
        # Both, in either order: a heartbeat may count the rejects before the worker
        # has reached the session_stop behind them.
        for msg in sub.iter(timeout_s=30):
            if isinstance(msg, Heartbeat) and msg.counters.get("rejected", 0) >= 4:
                counters = msg.counters
            closed = closed or msg.TYPE == "session_closed"
            if counters and closed:
                break
    raw.close(linger=0)
    assert counters["rejected_bad_header"] == 1
    assert counters["rejected_size_mismatch"] == 1
    assert counters["rejected_bad_parts"] == 1
    assert counters["rejected_unknown_version"] == 1
    path = worker.closed_sessions["mixed"].archive_path
    np.testing.assert_array_equal(ArchiveReader(path).frames[:], frames)


def test_sequence_gaps_are_reported_as_dropped_frames(worker: Worker) -> None:
    frames = noisy_frames(6, shape=(16, 16))
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(worker.frames_endpoint)
    with Subscriber(worker.results_endpoint, topics=["event", "heartbeat"]) as sub:
        next(sub.messages(Heartbeat, timeout_s=30))  # subscribed for sure now
        raw.send_multipart(encode(SessionStart(session_id="gappy", source="t", source_kind="t",
                                               t0_unix=0.0, live=False, seq=1,
                                               session_token=TOKEN)))
        for i in (0, 1, 4, 5):  # frames 2 and 3 never arrive
            raw.send_multipart(encode(Frame(session_id="gappy", index=i, t_s=float(i),
                                            acquired_at=0.0, shape=[16, 16], dtype="uint16",
                                            seq=i + 2, image=frames[i],
                                            session_token=TOKEN)))
        events = []
        deadline = time.monotonic() + 30
        for m in sub.iter(timeout_s=5):
            if isinstance(m, Event) and m.kind == "frames_dropped":
                events.append(m)
            # A heartbeat after all four frames: any event they caused came before it.
            if (isinstance(m, Heartbeat) and m.counters.get("received", 0) >= 4
                    or time.monotonic() > deadline):
                break
    raw.close(linger=0)
    assert len(events) == 1
    assert events[0].magnitude == 2
    assert events[0].frame == 4
    assert worker.counters["dropped"] == 2


def test_live_sessions_archive_everything_even_when_analysis_skips(worker: Worker) -> None:
    frames = noisy_frames(60, shape=(256, 256))
    with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint) as pub:
        report = pub.publish(ArraySource(frames, fps=1000.0, live=True), speed=None)
    closed = report.closed
    assert closed is not None
    assert closed.frames_archived == 60
    assert 1 <= closed.frames_analysed <= 60
    reader = ArchiveReader(closed.archive_path)
    assert reader.meta["frames_analysed"] + reader.meta["frames_skipped"] == 60
    np.testing.assert_array_equal(reader.frames[:], frames)


def test_stop_while_the_worker_is_absent_does_not_hang(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with Publisher(f"ipc://{tmp_path}/nobody", sndhwm=1, ack_timeout_s=0.1) as pub:
        report = pub.publish(ArraySource(noisy_frames(3, shape=(8, 8))), speed=None, stop=stop)
        assert report.interrupted
        assert report.frames_sent == 0
        pub.close(linger_s=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/passwd", "passwd.zarr"), ("run 3/µ", "session.zarr"),
     ("run 3 ", "run_3.zarr"), ("good-name.zarr", "good-name.zarr")],
)
def test_archive_names_from_the_wire_cannot_escape_the_sessions_folder(
        tmp_path: Path, name: str, expected: str) -> None:
    start = SessionStart(session_id="s", source="t", source_kind="t", t0_unix=0.0, live=False,
                         archive_name=name)
    path = default_archive_path(tmp_path, start)
    assert path.parent == tmp_path
    assert path.name == expected
    path.mkdir()
    assert default_archive_path(tmp_path, start).name == expected.replace(".zarr", "-2.zarr")


class TestSkipRate:
    def test_silent_until_the_window_has_filled_once(self) -> None:
        rate = SkipRate(window_s=10.0)
        # The first frames of a session arrive while the archive opens: all skipped.
        assert [rate.update(t, skipped=True) for t in (0.0, 0.1, 0.2)] == [None] * 3
        assert rate.update(9.9, skipped=False) is None
        assert rate.update(10.0, skipped=False) == 0.5  # the frame at 0.0 aged out

    def test_fraction_over_the_sliding_window(self) -> None:
        rate = SkipRate(window_s=10.0)
        fractions = [rate.update(0.5 * i, skipped=i % 4 == 0) for i in range(100)]
        # Steady state: one frame in four skipped, whatever the window's phase.
        assert all(f == pytest.approx(0.25, abs=0.03) for f in fractions[40:])
        # Catching up: the fraction falls as unskipped frames fill the window.
        after = [rate.update(50.0 + 0.5 * i, skipped=False) for i in range(21)]
        assert after == sorted(after, reverse=True)
        assert after[-1] == 0.0


def test_a_repeated_session_stop_is_acknowledged_again(worker: Worker) -> None:
    """The acknowledgement went out while nobody listened (a publisher's results socket
    reconnecting to a restarted worker): the publisher repeats session_stop, the worker
    repeats session_closed."""
    from lithoscope.service.protocol import SessionClosed, SessionStop

    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(worker.frames_endpoint)
    start = SessionStart(session_id="deaf", source="test", source_kind="test", t0_unix=0.0,
                         live=False, session_token=TOKEN)
    raw.send_multipart(encode(start))
    raw.send_multipart(encode(SessionStop(session_id="deaf", frames_sent=0, seq=2,
                                          session_token=TOKEN)))
    deadline = time.monotonic() + 30
    while "deaf" not in worker.closed_sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "deaf" in worker.closed_sessions  # closed, acknowledged to no one
    with Subscriber(worker.results_endpoint, topics=["heartbeat", "session_closed"]) as sub:
        next(sub.messages(Heartbeat, timeout_s=30))  # subscribed for sure now
        raw.send_multipart(encode(SessionStop(session_id="deaf", frames_sent=0, seq=3,
                                              session_token=TOKEN)))
        ack = None
        deadline = time.monotonic() + 30
        for msg in sub.iter(timeout_s=10):
            if isinstance(msg, SessionClosed) or time.monotonic() > deadline:
                ack = msg
                break
    raw.close(linger=0)
    assert isinstance(ack, SessionClosed)
    assert ack.session_id == "deaf"
