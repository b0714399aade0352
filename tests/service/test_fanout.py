"""Scale-out: jobs out to measuring processes over real sockets, measurements back in order."""

from __future__ import annotations

import threading
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service.analysis import AnalysisConfig, SessionAnalyzer, measure_frame
from lithoscope.service.live.fanout import (
    AnalysisPool,
    decode_job,
    decode_measurement,
    encode_job,
    encode_measurement,
    run_measurer,
)
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

SMALL = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0, duration_s=30.0)


@pytest.fixture(scope="module")
def frames() -> list:
    return list(SimulatedSource(SMALL))


def test_job_round_trip() -> None:
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    key, back, size, config = decode_job(encode_job(7, image, pixel_size_nm=0.5,
                                                    config={"binning": 2}))
    assert (key, size, config) == (7, 0.5, {"binning": 2})
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("parts", [
    [b"job", b'{"key": 1, "shape": [4, 4], "dtype": "<u2", "pixel_size_nm": null, '
             b'"config": {}}', b"\0" * 31],
    [b"job", b'{"key": 1, "shape": [-4, 4], "dtype": "<u2", "pixel_size_nm": null, '
             b'"config": {}}', b""],
    [b"nope", b"{}", b""],
])
def test_bad_jobs_are_refused(parts: list[bytes]) -> None:
    with pytest.raises(ValueError, match="job|pixels"):
        decode_job(parts)


def test_measurement_round_trip(frames: list) -> None:
    measurement = measure_frame(frames[20].image, pixel_size_nm=1.0)
    parts = [bytes(memoryview(p)) for p in encode_measurement(3, measurement, measurer="x")]
    key, back, header = decode_measurement(parts)
    assert key == 3
    assert header["measurer"] == "x"
    assert back is not None
    assert back.cluster == pytest.approx(measurement.cluster, nan_ok=True)
    for name, column in measurement.particles.items():
        np.testing.assert_array_equal(back.particles[name], column)
    np.testing.assert_array_equal(back.contacts, measurement.contacts)
    np.testing.assert_array_equal(back.drift_image, measurement.drift_image)
    assert back.drift_scale == measurement.drift_scale
    key, none, header = decode_measurement(encode_measurement(4, None, error="boom"))
    assert (key, none, header["error"]) == (4, None, "boom")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=12))
def test_measurement_decoder_fuzz(parts: list[bytes]) -> None:
    """Garbage from a measuring process is a ValueError/KeyError/TypeError, never a crash
    of another kind and never an unbounded allocation."""
    try:
        decode_measurement([b"measurement", *parts])
    except (ValueError, KeyError, TypeError):
        pass


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=16)))
def test_job_round_trip_any_frame(image: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_job(encode_job(0, image, pixel_size_nm=None,
                                                        config={}))[1], image)


def _pool(context: zmq.Context, tmp_path: Path, processes: int, **kwargs: object) -> AnalysisPool:
    return AnalysisPool(context, jobs_endpoint=f"ipc://{tmp_path}/jobs",
                        measurements_endpoint=f"ipc://{tmp_path}/measurements",
                        processes=processes, **kwargs)  # type: ignore[arg-type]


def test_two_processes_give_the_session_a_single_process_gives(frames: list,
                                                               tmp_path: Path) -> None:
    """Real subprocesses over ipc; results back in submission order, identical to
    analysing in-process."""
    context = zmq.Context()
    pool = _pool(context, tmp_path, 2, max_in_flight=6)
    joined, alone = SessionAnalyzer(), SessionAnalyzer()
    got: list = []
    try:
        pending = list(frames)
        while pending or pool.in_flight:
            while pending and pool.has_room():
                frame = pending.pop(0)
                pool.submit(frame, frame.image, pixel_size_nm=1.0, config=AnalysisConfig())
                # A live frame goes out only to a free process; a replay's may queue.
                assert pool.has_idle() == (pool.in_flight < 2)
            for outcome in pool.wait(timeout_s=60):
                assert outcome.measurement is not None, outcome.error
                got.append(outcome.tag.index)
                frame = outcome.tag
                a = joined.update_measured(outcome.measurement, t_s=frame.t_s,
                                           index=frame.index, pixel_size_nm=1.0)
                b = alone.update(frame.image, t_s=frame.t_s, index=frame.index,
                                 pixel_size_nm=1.0)
                np.testing.assert_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1]["track_id"], b[1]["track_id"])
                assert a[2] == b[2]
        assert got == [f.index for f in frames]
        assert sum(pool.measurers.values()) == len(frames)
        assert len(pool.measurers) == 2  # both processes took work
    finally:
        pool.close()
        context.term()


def test_jobs_wait_for_a_measurer_and_a_lost_one_is_given_up(frames: list,
                                                              tmp_path: Path) -> None:
    """No measurer yet: submit does not block, the job waits. A measurer that takes the
    job and vanishes without answering: given up after job_timeout_s."""
    context = zmq.Context()
    pool = _pool(context, tmp_path, 0, job_timeout_s=0.5)
    thief = context.socket(zmq.PULL)
    try:
        assert pool.has_idle()  # no local process: free while there is room
        pool.submit("lost", frames[0].image, pixel_size_nm=1.0, config=AnalysisConfig())
        assert pool.has_idle() == pool.has_room()
        assert pool.wait(timeout_s=1.0) == []  # not sent: no timeout runs
        thief.connect(pool.jobs_endpoint)
        for _ in range(100):  # the backlog goes out on the pool's next call
            pool.receive()
            if thief.poll(50):
                break
        thief.recv_multipart(zmq.NOBLOCK)
        outcomes = pool.wait(timeout_s=10)
        assert [o.tag for o in outcomes] == ["lost"]
        assert outcomes[0].measurement is None
        assert "no measurement" in str(outcomes[0].error)
        assert pool.counters["timed_out"] == 1
    finally:
        thief.close(linger=0)
        pool.close()
        context.term()


def test_a_remote_measurer_joins_over_tcp_and_a_bad_frame_is_answered(frames: list,
                                                                      tmp_path: Path) -> None:
    """A measurer started elsewhere (here: a thread) connects over tcp; a frame it cannot
    measure comes back as an error, not silence."""
    context = zmq.Context()
    pool = AnalysisPool(context, jobs_endpoint="tcp://127.0.0.1:*",
                        measurements_endpoint="tcp://127.0.0.1:*", processes=0)
    stop = threading.Event()
    thread = threading.Thread(target=run_measurer, daemon=True,
                              args=(pool.jobs_endpoint, pool.measurements_endpoint),
                              kwargs={"stop": stop})
    thread.start()
    try:
        pool.submit("good", frames[5].image, pixel_size_nm=1.0, config=AnalysisConfig())
        pool.submit("bad", np.zeros((4, 4), np.float64) * np.nan, pixel_size_nm=1.0,
                    config=AnalysisConfig())
        outcomes = []
        while len(outcomes) < 2:
            outcomes += pool.wait(timeout_s=30)
        assert [o.tag for o in outcomes] == ["good", "bad"]
        assert outcomes[0].measurement is not None
    finally:
        stop.set()
        thread.join(5)
        pool.close()
        context.term()
