"""Faults made to happen for real: killed and restarted processes, stuck subscribers,
a disk that refuses writes, signals, hostile input.

The service runs as ``lithoscope serve`` in a subprocess (ipc endpoints under
``tmp_path``, so a restarted service binds the same addresses); every wait is for a
message or a process event with a generous deadline, never a sleep.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import event as hypothesis_event
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import (
    ALLOWED_DTYPES,
    Decoder,
    Event,
    Frame,
    FrameLimits,
    Heartbeat,
    Message,
    SessionStart,
    SessionStop,
    decode,
    encode,
)
from lithoscope.service.publisher import Publisher, PublishReport

from support import publishing
from support.arrays import ArraySource, noisy_frames
from support.media import write_tiff_stack
from support.serving import DEADLINE_S, LITHOSCOPE, Serve


class Results:
    """A SUB socket on the results stream that reads until a condition holds."""

    def __init__(self, endpoint: str, *, rcvhwm: int = 100_000) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.seen: list[Message] = []

    def until(self, condition: Callable[[Message], bool],
              timeout_s: float = DEADLINE_S) -> Message:
        while self.sock.poll(int(timeout_s * 1000)):
            msg = decode(self.sock.recv_multipart())
            self.seen.append(msg)
            if condition(msg):
                return msg
        raise AssertionError(f"nothing matching on the results stream in {timeout_s} s; "
                             f"last: {self.seen[-3:]}")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()


@pytest.fixture
def results_of() -> Iterator[Callable[[str], Results]]:
    opened: list[Results] = []

    def open_(endpoint: str) -> Results:
        opened.append(Results(endpoint))
        return opened[-1]

    yield open_
    for r in opened:
        r.close()


def archived_at_least(n: int) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Heartbeat) and m.counters.get("archived", 0) >= n


def event(kind: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Event) and m.kind == kind


def publish_in_thread(serve: Serve, frames: np.ndarray, **kwargs: Any
                      ) -> tuple[threading.Thread, dict[str, Any]]:
    """Publish to ``serve`` from a thread (see :mod:`support.publishing`)."""
    kwargs.setdefault("ack_timeout_s", DEADLINE_S)
    return publishing.publish_in_thread(serve.frames, serve.results, frames, **kwargs)


def joined(thread: threading.Thread, out: dict[str, Any]) -> PublishReport:
    return publishing.joined(thread, out, DEADLINE_S * 2)


def inspect(archive: Path) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "COLUMNS": "400"}
    as_json = subprocess.run([*LITHOSCOPE, "inspect", str(archive), "--json"],
                             capture_output=True, text=True, timeout=DEADLINE_S, env=env)
    human = subprocess.run([*LITHOSCOPE, "inspect", str(archive)], capture_output=True,
                           text=True, timeout=DEADLINE_S, env=env)
    assert as_json.returncode == human.returncode == 0, as_json.stderr + human.stderr
    return json.loads(as_json.stdout), human.stdout


def frames_by_index(reader: ArchiveReader) -> tuple[np.ndarray, np.ndarray]:
    index = reader.table("frame_table")["index"][: reader.frame_count]
    return index, np.asarray(reader.frames[: reader.frame_count])


# -- the worker is killed, and started again --------------------------------------------
def test_worker_sigkilled_mid_session_then_restarted_continues_in_a_linked_archive(
        tmp_path: Path, results_of: Callable[[str], Results]) -> None:
    frames = noisy_frames(120, shape=(32, 48))
    first = Serve(tmp_path)
    watch = results_of(first.results)
    thread, out = publish_in_thread(first, frames, speed=1.0, live=False, fps=20.0,
                                    archive_name="run 7")
    watch.until(archived_at_least(20))
    first.kill()  # SIGKILL: no flush, no close, no goodbye

    second = Serve(tmp_path)  # same endpoints: the publisher's sockets reconnect
    report = joined(thread, out)
    out_text, err = second.stop()
    assert second.proc.returncode == 0, err

    before, after = tmp_path / "sessions/run_7.zarr", tmp_path / "sessions/run_7-2.zarr"
    assert f"{before} was left open" in out_text
    assert report.closed is not None
    assert Path(report.closed.archive_path) == after

    old, new = ArchiveReader(before), ArchiveReader(after)
    assert old.status == "interrupted"
    assert old.meta["stop_reason"] == "worker_died"
    assert old.meta["frame_count"] == old.frame_count >= 20
    assert old.meta["continued_in"] == after.name
    assert new.status == "complete"
    assert new.meta["continues"] == before.name
    assert new.meta["session_id"] == old.meta["session_id"] == report.session_id
    # Every archived frame is the frame the publisher sent under that index, in order,
    # and every frame sent is either archived or counted as lost across the restart.
    old_index, old_frames = frames_by_index(old)
    new_index, new_frames = frames_by_index(new)
    index = np.concatenate([old_index, new_index])
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(np.concatenate([old_frames, new_frames]), frames[index])
    # Tables consistent with the frames: measurements only of frames the archive holds.
    assert set(old.table("cluster")["frame"]) <= set(old_index)
    assert set(new.table("cluster")["frame"]) <= set(new_index)
    lost = report.frames_sent - len(index)
    assert new.meta["frames_dropped"] == lost
    if lost:
        (dropped,) = [e for e in new.events() if e["kind"] == "frames_dropped"]
        assert dropped["magnitude"] == lost
    assert new_index[-1] == len(frames) - 1

    summary, human = inspect(before)
    assert summary["status"] == "interrupted"
    assert summary["frames"] == old.frame_count
    assert summary["continued_in"] == after.name
    assert "killed or crashed" in human
    assert "run_7-2.zarr" in human
    summary, human = inspect(after)
    assert summary["continues"] == before.name
    assert "run_7.zarr" in human


# -- the publisher dies, another one comes ----------------------------------------------
def test_publisher_killed_then_restarted_stall_is_announced_and_new_stream_taken_up(
        tmp_path: Path, results_of: Callable[[str], Results]) -> None:
    serve = Serve(tmp_path, settings="stall_timeout_s = 1.0\n")
    watch = results_of(serve.results)
    frames = noisy_frames(400, shape=(32, 48))
    stack = write_tiff_stack(tmp_path / "movie.tif", frames)
    publish = [*LITHOSCOPE, "publish", str(stack), "--connect", serve.frames, "--results",
               serve.results, "--fps", "20"]
    dying = subprocess.Popen([*publish, "--speed", "1"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    start = watch.until(lambda m: isinstance(m, SessionStart))
    watch.until(archived_at_least(10))
    dying.kill()
    dying.wait(DEADLINE_S)

    stalled = watch.until(event("source_stalled"))
    assert stalled.session_id == start.session_id  # type: ignore[union-attr]
    again = subprocess.run([*publish, "--speed", "max"], capture_output=True, text=True,
                           timeout=DEADLINE_S * 2)
    assert again.returncode == 0, again.stderr
    assert "Archived 400 frames" in again.stdout
    out_text, err = serve.stop()
    assert serve.proc.returncode == 0, err

    archives = {ArchiveReader(p).meta["session_id"]: ArchiveReader(p)
                for p in (tmp_path / "sessions").glob("*.zarr")}
    old = archives.pop(start.session_id)  # type: ignore[union-attr]
    (new,) = archives.values()
    assert new.status == "complete"
    np.testing.assert_array_equal(new.frames[:], frames)
    # The abandoned session kept what it had and was closed at shutdown.
    assert old.status == "interrupted"
    assert old.meta["stop_reason"] == "shutdown"
    assert old.frame_count >= 10
    index, kept = frames_by_index(old)
    np.testing.assert_array_equal(kept, frames[index])
    assert any(e["kind"] == "source_stalled" for e in old.events())


# -- subscribers that do not keep up ----------------------------------------------------
SUBSCRIBER_SCRIPT = """
import sys, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, b"")
sock.connect(sys.argv[1])
sock.recv_multipart()
print("got one", flush=True)
sys.stdin.read()
"""


def test_stuck_paused_and_vanished_subscribers_never_slow_archiving(tmp_path: Path) -> None:
    config = ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                           results_endpoint=f"ipc://{tmp_path}/results",
                           sessions_dir=str(tmp_path / "sessions"), results_hwm=8,
                           heartbeat_s=0.2)
    worker = Worker(config)
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.SUB)  # connects, never reads
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.SUBSCRIBE, b"result")  # results stop with the session
    paused = ctx.socket(zmq.SUB)  # reads one message, then stops until the end
    paused.setsockopt(zmq.RCVHWM, 1)
    paused.setsockopt(zmq.SUBSCRIBE, b"")
    frames = noisy_frames(1500, shape=(24, 32))
    with WorkerThread(worker):
        assert worker.results_endpoint is not None
        assert worker.frames_endpoint is not None
        stuck.connect(worker.results_endpoint)
        paused.connect(worker.results_endpoint)
        assert paused.poll(DEADLINE_S * 1000)
        paused.recv_multipart()
        gone = subprocess.Popen([sys.executable, "-c", SUBSCRIBER_SCRIPT,
                                 worker.results_endpoint], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert gone.stdout is not None
        assert gone.stdout.readline() == "got one\n"
        gone.kill()  # vanishes without closing its socket
        gone.communicate(timeout=DEADLINE_S)
        with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                       ack_timeout_s=DEADLINE_S) as pub:
            report = pub.publish(ArraySource(frames), speed=None, live=False)
        sent_results = report.closed.frames_analysed if report.closed else 0
        # The stuck subscriber's updates were dropped at its high-water marks, not waited
        # for: what it can still read (while the worker is up) is a fraction of them.
        received = 0
        while stuck.poll(1000):  # until its buffers have run dry
            stuck.recv_multipart()
            received += 1
    assert report.closed is not None
    assert report.closed.frames_archived == report.closed.frames_analysed == len(frames)
    reader = ArchiveReader(report.closed.archive_path)
    np.testing.assert_array_equal(reader.frames[:], frames)
    assert len(reader.table("cluster")["frame"]) == len(frames)
    assert received < sent_results / 2, (received, sent_results)
    for sock in (stuck, paused):
        sock.close(linger=0)
    ctx.term()


# -- the disk refuses writes ------------------------------------------------------------
FILE_SIZE_LIMIT = 64 * 1024


def _limit_file_size() -> None:
    # A real EFBIG from write(2) once a file would pass 64 KiB: what a full disk does to
    # the writer (ENOSPC) but confined to this process. Python ignores SIGXFSZ.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_disk_refusing_writes_mid_session_alerts_and_keeps_everything_before(
        tmp_path: Path, results_of: Callable[[str], Results]) -> None:
    # The file size limit is the process's: the fallback archive cannot take the frame
    # either, so the session's later frames are lost (and counted).
    serve = Serve(tmp_path, preexec=_limit_file_size,
                  settings=f'fallback_dir = "{tmp_path / "fallback"}"\n')
    watch = results_of(serve.results)
    quiet = np.zeros((10, 256, 256), np.uint16)  # compresses to almost nothing
    noise = np.random.default_rng(0).integers(0, 65535, (10, 256, 256), dtype=np.uint16)

    def publish(frames: np.ndarray) -> PublishReport:
        with Publisher(serve.frames, results_endpoint=serve.results,
                       ack_timeout_s=DEADLINE_S) as pub:
            return pub.publish(ArraySource(frames), speed=None, live=False)

    before = publish(quiet)
    failing = publish(np.concatenate([quiet, noise]))  # noise chunks exceed the limit
    error = watch.until(event("archive_error"))
    after = publish(quiet)  # the service stays up and archives the next session
    heartbeat = watch.until(lambda m: isinstance(m, Heartbeat)
                            and m.counters.get("archived", 0) >= 30)
    out_text, err = serve.stop()
    assert serve.proc.returncode == 0, err

    assert "File too large" in error.message  # type: ignore[union-attr]
    assert "Archive failure" in err
    assert heartbeat.counters["archived"] == 30  # type: ignore[union-attr]
    assert heartbeat.counters["archive_errors"] >= 1  # type: ignore[union-attr]
    for report, count, status in ((before, 10, "complete"), (failing, 10, "interrupted"),
                                  (after, 10, "complete")):
        assert report.closed is not None
        assert report.closed.frames_archived == count
        reader = ArchiveReader(report.closed.archive_path)
        assert reader.status == status
        np.testing.assert_array_equal(reader.frames[: reader.frame_count], quiet)
    failed = ArchiveReader(failing.closed.archive_path)  # type: ignore[union-attr]
    assert "File too large" in failed.meta["archive_error"]
    summary, human = inspect(failed.path)
    assert "File too large" in human


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), so a full disk is ENOSPC from the kernel.

    Mounting needs root (CAP_SYS_ADMIN); elsewhere the RLIMIT_FSIZE test above covers
    the same code path with EFBIG.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_that_fills_while_an_archive_is_created_is_an_archive_error(
        tiny_disk: Path) -> None:
    """Whatever step of creating an archive finds the disk full (the group, its metadata,
    the tables' arrays), it is an ArchiveError the worker turns into an alert: a bare
    OSError from zarr while creating the tables once took `lithoscope serve` down."""
    from lithoscope.service.archive import ArchiveWriter
    from lithoscope.service.errors import ArchiveError

    ballast = tiny_disk / "ballast"
    outcomes = set()
    for free_kib in range(0, 96, 4):
        for leftover in tiny_disk.iterdir():
            subprocess.run(["rm", "-rf", str(leftover)], check=True)
        ballast.write_bytes(bytes(2 * 1024 * 1024 - free_kib * 1024 - 4096))
        try:
            ArchiveWriter(tiny_disk / f"s{free_kib}.zarr", session={"session_id": "x"})
            outcomes.add("created")
        except ArchiveError as exc:
            outcomes.add("refused" if "No space left on device" in str(exc) else str(exc))
    assert "refused" in outcomes
    assert outcomes <= {"created", "refused"}


def test_full_disk_alerts_keeps_what_was_archived_and_the_service_stays_up(
        tmp_path: Path, tiny_disk: Path, results_of: Callable[[str], Results]) -> None:
    ballast = tiny_disk / "ballast"  # freed at the end, as an operator would free space
    ballast.write_bytes(bytes(256 * 1024))
    serve = Serve(tmp_path, sessions=tiny_disk / "sessions",  # the fallback full as well
                  settings=f'fallback_dir = "{tiny_disk / "fallback"}"\n')
    try:
        watch = results_of(serve.results)
        quiet = np.zeros((10, 128, 128), np.uint16)
        noise = np.random.default_rng(1).integers(0, 65535, (200, 128, 128), dtype=np.uint16)

        def publish(frames: np.ndarray) -> PublishReport:
            with Publisher(serve.frames, results_endpoint=serve.results,
                           ack_timeout_s=DEADLINE_S) as pub:
                return pub.publish(ArraySource(frames), speed=None, live=False)

        before = publish(quiet)
        filling = publish(np.concatenate([quiet, noise]))  # 200 x 32 KiB > 2 MiB
        error = watch.until(event("archive_error"))
        later = publish(quiet)  # the disk is still full: refused again, service still up
        watch.until(lambda m: isinstance(m, Heartbeat)
                    and m.counters.get("received", 0) >= 230)
        ballast.unlink()
    finally:
        out_text, err = serve.stop()
    assert serve.proc.returncode == 0, err
    assert "No space left on device" in error.message  # type: ignore[union-attr]
    assert before.closed is not None
    assert filling.closed is not None
    assert later.closed is not None
    assert later.closed.frames_analysed == 10  # analysis and results carry on
    first = ArchiveReader(before.closed.archive_path)
    assert first.status == "complete"
    np.testing.assert_array_equal(first.frames[:], quiet)  # nothing archived is damaged
    full = ArchiveReader(filling.closed.archive_path)
    assert 10 <= full.frame_count == filling.closed.frames_archived < 210
    expected = np.concatenate([quiet, noise])[: full.frame_count]
    np.testing.assert_array_equal(full.frames[: full.frame_count], expected)
    # Closing needed room too; once there was some, the archive says how it ended.
    assert full.status == "interrupted"
    assert "No space left on device" in full.meta["archive_error"]


def test_unwritable_sessions_folder_alerts_and_the_service_stays_up(
        tmp_path: Path, results_of: Callable[[str], Results]) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the sessions folder should be")
    serve = Serve(tmp_path, sessions=blocker / "sessions",  # the fallback as unwritable
                  settings=f'fallback_dir = "{blocker / "fallback"}"\n')
    watch = results_of(serve.results)
    frames = noisy_frames(5, shape=(16, 16))
    for _ in range(2):
        with Publisher(serve.frames, results_endpoint=serve.results,
                       ack_timeout_s=DEADLINE_S) as pub:
            report = pub.publish(ArraySource(frames), speed=None, live=False)
        assert report.closed is not None
        assert report.closed.frames_archived == 0
        assert report.closed.frames_analysed == 5  # analysis and results go on
    error = watch.until(event("archive_error"))
    out_text, err = serve.stop()
    assert serve.proc.returncode == 0, err
    assert "Not a directory" in error.message  # type: ignore[union-attr]
    assert "Cannot create archive" in err


# -- clean shutdown ---------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_session_flushes_and_closes_the_archive(
        tmp_path: Path, results_of: Callable[[str], Results], sig: int) -> None:
    serve = Serve(tmp_path)
    watch = results_of(serve.results)
    done_frames = noisy_frames(8, shape=(16, 16), seed=1)
    with Publisher(serve.frames, results_endpoint=serve.results,
                   ack_timeout_s=DEADLINE_S) as pub:
        done = pub.publish(ArraySource(done_frames), speed=None, live=False)
    assert done.closed is not None
    frames = noisy_frames(600, shape=(32, 48))
    stop = threading.Event()
    thread, out = publish_in_thread(serve, frames, speed=1.0, live=False, fps=20.0,
                                    stop=stop, ack_timeout_s=5.0)
    watch.until(archived_at_least(len(done_frames) + 15))
    out_text, err = serve.stop(sig)
    stop.set()
    report = joined(thread, out)
    assert serve.proc.returncode == 0, err
    assert "open archives were closed" in out_text
    finished = ArchiveReader(done.closed.archive_path)
    assert finished.status == "complete"  # a session that had ended stays complete
    np.testing.assert_array_equal(finished.frames[:], done_frames)
    (path,) = set((tmp_path / "sessions").glob("*.zarr")) - {finished.path}
    reader = ArchiveReader(path)
    assert reader.status == "interrupted"
    assert reader.meta["stop_reason"] == "shutdown"
    assert reader.meta["frame_count"] == reader.frame_count >= 15
    assert not (path / "frame_log.jsonl").exists()  # everything is in the zarr tables
    np.testing.assert_array_equal(reader.frames[:], frames[: reader.frame_count])
    cluster = reader.table("cluster")
    # Measurements were flushed: every frame analysed before the signal is there.
    assert len(cluster["frame"]) == reader.meta["frames_analysed"] >= 15
    assert report.frames_sent >= reader.frame_count


# -- hostile input over a real socket ---------------------------------------------------
TOKEN = "faults-test-token-0123456789"


def _frame_parts(session: str, i: int, image: np.ndarray, **header: Any) -> list[bytes]:
    parts = [bytes(p) for p in encode(Frame(
        session_id=session, index=i, t_s=0.1 * i, acquired_at=0.0, shape=list(image.shape),
        dtype=image.dtype.name, seq=i + 2, image=image, session_token=TOKEN))]
    fields = json.loads(parts[1])
    fields.update(header)
    return [parts[0], json.dumps(fields).encode(), parts[2]]


def test_hostile_input_is_refused_counted_and_memory_stays_bounded(
        tmp_path: Path, results_of: Callable[[str], Results]) -> None:
    serve = Serve(tmp_path, settings="[limits]\nmax_side = 256\nmax_pixels = 65536\n")
    watch = results_of(serve.results)
    good = noisy_frames(8, shape=(16, 16))
    ok = [_frame_parts("hostile", i, good[i]) for i in range(8)]
    hostile = {
        "bad_header": [b"frame", b"\xff\xfe{not json", b""],
        "unknown_version": _frame_parts("hostile", 0, good[0], version=7),
        "size_mismatch": _frame_parts("hostile", 0, good[0], shape=[16, 17]),
        "bad_shape": _frame_parts("hostile", 0, good[0], shape=[-16, -16]),
        "bad_shape_absurd": _frame_parts("hostile", 0, good[0], shape=[2**40, 2**40]),
        "non_finite": _frame_parts("hostile", 0, np.full((16, 16), np.nan, np.float32)),
        "bad_dtype": _frame_parts("hostile", 0, good[0], dtype="object"),
    }
    flood = 20_000
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(serve.frames)
    huge = ctx.socket(zmq.PUSH)  # ZeroMQ drops this peer at the first oversized message
    huge.connect(serve.frames)
    try:
        baseline_kb = serve.vm_hwm_kb()
        push.send_multipart(encode(SessionStart(session_id="hostile", source="t",
                                                source_kind="t", t0_unix=0.0, live=False,
                                                session_token=TOKEN)))
        # Each bad class sits between good frames of an open session.
        for i, parts in enumerate(hostile.values()):
            push.send_multipart(ok[i])
            push.send_multipart(parts)
        oversized = bytes(64 * 2**20)  # 64 MiB claimed as one frame; the limit is ~1.5 MiB
        for _ in range(4):
            huge.send_multipart([b"frame", b"{}", oversized], copy=False)
        for _ in range(flood):
            push.send_multipart([b"frame", b"\x00garbage", b""])
        push.send_multipart(ok[7])
        push.send_multipart(encode(SessionStop(session_id="hostile", frames_sent=8, seq=10,
                                               session_token=TOKEN)))
        closed = watch.until(lambda m: getattr(m, "TYPE", None) == "session_closed")
        counters = watch.until(lambda m: isinstance(m, Heartbeat) and m.counters.get(
            "rejected", 0) >= flood + len(hostile)).counters  # type: ignore[union-attr]
        peak_kb = serve.vm_hwm_kb()
    finally:
        push.close(linger=0)
        huge.close(linger=0)
        ctx.term()
    out_text, err = serve.stop()
    assert serve.proc.returncode == 0, err
    assert "Traceback" not in err

    assert counters["rejected_bad_header"] == flood + 1
    assert counters["rejected_unknown_version"] == 1
    assert counters["rejected_size_mismatch"] == 1
    assert counters["rejected_bad_shape"] == 2
    assert counters["rejected_non_finite"] == 1
    assert counters["rejected_bad_dtype"] == 1
    assert counters["rejected"] == flood + len(hostile)  # the 64 MiB ones never got in
    # No 64 MiB message was ever allocated by the service (MAXMSGSIZE from the limits).
    assert peak_kb - baseline_kb < 32 * 1024, (baseline_kb, peak_kb)
    reader = ArchiveReader(closed.archive_path)  # type: ignore[union-attr]
    assert reader.status == "complete"
    np.testing.assert_array_equal(reader.frames[:], good)


# -- the decoder, fuzzed from valid messages outwards ------------------------------------
REASONS = {"bad_header", "unknown_version", "unknown_type", "topic_mismatch", "bad_field",
           "bad_shape", "bad_dtype", "size_mismatch", "non_finite", "bad_parts",
           "unexpected_payload", "bad_number", "bad_string", "too_deep", "too_large"}
FUZZ_LIMITS = FrameLimits(max_side=64, max_pixels=2048)
_VALID = json.loads(_frame_parts("fuzz", 0, np.zeros((4, 4), np.uint16))[1])


@settings(max_examples=600, deadline=None)
@given(
    # Each field is valid about half the time, so examples reach every check in turn.
    shape=st.one_of(st.lists(st.integers(1, 80), min_size=2, max_size=2),
                    st.one_of(st.lists(st.integers(-(2**62), 2**62), max_size=3),
                              st.text(max_size=3), st.none(), st.floats())),
    dtype=st.one_of(st.sampled_from(sorted(ALLOWED_DTYPES)),
                    st.one_of(st.sampled_from(["object", "complex128", ">u2", "float16",
                                               "bool", "", "V8"]), st.integers())),
    version=st.one_of(st.just(1), st.sampled_from([0, 2, "1", None, 1.5, True])),
    dropped=st.one_of(st.just(set()), st.sets(st.sampled_from(sorted(_VALID)), min_size=1)),
    exact_payload=st.booleans(),
    payload=st.binary(max_size=2048),
    data=st.data(),
)
def test_mutated_frame_headers_are_refused_with_a_reason_or_decoded_exactly(
        shape: Any, dtype: Any, version: Any, dropped: set[str], exact_payload: bool,
        payload: bytes, data: st.DataObject) -> None:
    header = {**_VALID, "shape": shape, "dtype": dtype, "version": version}
    for name in dropped:
        header.pop(name, None)
    if exact_payload and isinstance(shape, list) and isinstance(dtype, str) and all(
            isinstance(n, int) and 0 < n <= 64 for n in shape):
        try:
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        except TypeError:
            size = 0
        payload = data.draw(st.binary(min_size=size, max_size=size)) if size <= 2**16 else b""
    parts = [b"frame", json.dumps(header).encode(), payload]
    decoder = Decoder(limits=FUZZ_LIMITS)
    msg = decoder(parts)  # lenient: never raises
    if msg is None:
        (reason,) = decoder.rejected
        assert reason in REASONS
        hypothesis_event(reason)  # --hypothesis-show-statistics: how deep the examples got
        return
    hypothesis_event("decoded")
    assert isinstance(msg, Frame)
    assert msg.image is not None
    assert list(msg.image.shape) == msg.shape == shape
    assert msg.image.dtype.name == dtype
    assert msg.image.nbytes == len(payload)
    assert msg.image.size <= FUZZ_LIMITS.max_pixels  # memory bounded by the limits
    assert not msg.image.flags.writeable
    if msg.image.dtype.kind == "f":
        assert np.isfinite(msg.image).all()


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(1, 48), min_size=2, max_size=2),
       dtype=st.sampled_from(sorted(ALLOWED_DTYPES)), data=st.data())
def test_any_payload_of_the_right_size_decodes_bit_exact_or_is_refused_as_non_finite(
        shape: list[int], dtype: str, data: st.DataObject) -> None:
    size = shape[0] * shape[1] * np.dtype(dtype).itemsize
    payload = data.draw(st.binary(min_size=size, max_size=size))
    header = {**_VALID, "shape": shape, "dtype": dtype}
    decoder = Decoder(limits=FUZZ_LIMITS)
    msg = decoder([b"frame", json.dumps(header).encode(), payload])
    expected = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if shape[0] * shape[1] > FUZZ_LIMITS.max_pixels:
        assert dict(decoder.rejected) == {"bad_shape": 1}
    elif expected.dtype.kind == "f" and not np.isfinite(expected).all():
        assert dict(decoder.rejected) == {"non_finite": 1}
        hypothesis_event("non_finite")
    else:
        assert isinstance(msg, Frame)
        assert msg.image is not None
        np.testing.assert_array_equal(msg.image, expected)
        hypothesis_event("decoded")


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_only_the_integer_1_is_version_1(version: Any) -> None:
    decoder = Decoder()
    assert decoder([b"frame", json.dumps({**_VALID, "version": version}).encode(),
                    bytes(32)]) is None
    assert dict(decoder.rejected) == {"unknown_version": 1}


# -- replay of a file cut short ---------------------------------------------------------
def test_replay_of_a_file_cut_mid_frames_is_one_line_and_keeps_the_frames_before(
        tmp_path: Path) -> None:
    frames = noisy_frames(20, shape=(64, 64))
    whole = write_tiff_stack(tmp_path / "movie.tif", frames).read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: int(len(whole) * 0.6)])
    done = subprocess.run([*LITHOSCOPE, "replay", "cut.tif", "--archive", "cut.zarr"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S,
                          env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "cut.tif" in line
    assert "truncated" in line
    reader = ArchiveReader(tmp_path / "cut.zarr")
    assert reader.status == "interrupted"
    assert reader.meta["stop_reason"] == "error"
    assert 0 < reader.frame_count < 20
    np.testing.assert_array_equal(reader.frames[:], frames[: reader.frame_count])


def test_heartbeat_follows_the_newest_stream_not_a_stalled_one(tmp_path: Path) -> None:
    config = ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                           results_endpoint=f"ipc://{tmp_path}/results",
                           sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1)
    with WorkerThread(Worker(config)) as thread:
        worker = thread.worker
        assert worker.frames_endpoint is not None
        assert worker.results_endpoint is not None
        watch = Results(worker.results_endpoint)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(worker.frames_endpoint)
        try:
            watch.until(lambda m: isinstance(m, Heartbeat))  # subscribed for sure now
            for session_id in ("dead-publisher", "new-publisher"):
                push.send_multipart(encode(SessionStart(
                    session_id=session_id, source="t", source_kind="t", t0_unix=0.0,
                    live=True, session_token=TOKEN)))
                watch.until(lambda m, s=session_id: isinstance(m, SessionStart)
                            and m.session_id == s)
            beat = watch.until(lambda m: isinstance(m, Heartbeat))
        finally:
            push.close(linger=0)
            ctx.term()
            watch.close()
    assert beat.session_id == "new-publisher"  # type: ignore[union-attr]
    assert beat.archive_path.endswith("new-publisher.zarr")  # type: ignore[union-attr]
