"""`serve --workers N`: the worker with measuring processes, end to end over real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.errors import ConfigError
from lithoscope.service.live.fanout import run_measurer
from lithoscope.service.live.session import run_local_session
from lithoscope.service.publisher import Publisher
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

from support.arrays import ArraySource, noisy_frames

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]

MOVIE = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=2.0, duration_s=45.0)


def _session(tmp_path: Path, name: str, **settings: object) -> ArchiveReader:
    config = ServiceConfig(sessions_dir=str(tmp_path), **settings)  # type: ignore[arg-type]
    report = run_local_session(SimulatedSource(MOVIE), config=config, speed=None, live=False,
                               archive_path=tmp_path / f"{name}.zarr")
    assert report.closed is not None
    assert report.closed.frames_archived == report.closed.frames_analysed == len(
        SimulatedSource(MOVIE))
    return ArchiveReader(tmp_path / f"{name}.zarr")


@pytest.fixture(scope="module")
def in_thread(tmp_path_factory: pytest.TempPathFactory) -> ArchiveReader:
    return _session(tmp_path_factory.mktemp("thread"), "thread")


def _same_tables(a: ArchiveReader, b: ArchiveReader) -> None:
    for name in ("cluster", "particles"):
        ta, tb = a.table(name), b.table(name)
        for column in ta:
            if column == "latency_s":
                continue
            if ta[column].dtype.kind in "fc":
                np.testing.assert_allclose(ta[column], tb[column], equal_nan=True,
                                           err_msg=f"{name}.{column}")
            else:
                np.testing.assert_array_equal(ta[column], tb[column], err_msg=f"{name}.{column}")
    assert [(e["kind"], e["frame"]) for e in a.events()] == [
        (e["kind"], e["frame"]) for e in b.events()]


def test_two_measuring_processes_archive_what_one_thread_does(in_thread: ArchiveReader,
                                                              tmp_path: Path) -> None:
    """Frames measured by two subprocesses, joined in order: the archive's tables and
    events are those of the in-thread analysis, frame for frame."""
    fanned = _session(tmp_path, "fanned", workers=2)
    np.testing.assert_array_equal(fanned.table("cluster")["frame"],
                                  np.arange(len(SimulatedSource(MOVIE))))
    _same_tables(in_thread, fanned)
    assert fanned.meta["config"]["workers"] == 2
    # The label images come back from the measuring processes too: the same images.
    for name in ("particles", "needle", "grid"):
        np.testing.assert_array_equal(in_thread.group[f"labels/{name}/0"][:],
                                      fanned.group[f"labels/{name}/0"][:], err_msg=name)


def test_a_live_session_sends_its_newest_frame_only_to_a_free_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Live, a frame queued behind another would wait while newer ones arrive: with one
    measuring process, a frame goes out only when nothing else is out. Every frame is
    archived, and those not measured are counted as skipped."""
    from lithoscope.service.live.fanout import AnalysisPool

    out_at_submit: list[int] = []
    submit = AnalysisPool.submit

    def watched(self: AnalysisPool, *args: object, **kwargs: object) -> int:
        out_at_submit.append(self.in_flight)
        return submit(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AnalysisPool, "submit", watched)
    frames = noisy_frames(40, shape=(128, 128))
    config = ServiceConfig(sessions_dir=str(tmp_path), workers=1)
    report = run_local_session(ArraySource(frames, fps=20.0), config=config, speed=1.0,
                               live=True, archive_path=tmp_path / "live.zarr")
    assert report.closed is not None
    assert report.closed.frames_archived == len(frames)
    assert 1 <= report.closed.frames_analysed == len(out_at_submit) <= len(frames)
    assert set(out_at_submit) == {0}


def test_a_measurer_on_another_host_can_do_the_work(in_thread: ArchiveReader,
                                                    tmp_path: Path) -> None:
    """No local process: a measurer that connects over tcp (as `lithoscope measure` on
    another host would) measures every frame."""
    jobs, measured = "tcp://127.0.0.1:47611", "tcp://127.0.0.1:47612"
    stop = threading.Event()
    thread = threading.Thread(target=run_measurer, args=(jobs, measured),
                              kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        remote = _session(tmp_path, "remote", measure_jobs_endpoint=jobs,
                          measure_results_endpoint=measured)
    finally:
        stop.set()
        thread.join(5)
    _same_tables(in_thread, remote)


@pytest.mark.parametrize("settings", [
    {"workers": -1},
    {"measure_jobs_endpoint": "tcp://127.0.0.1:5"},
    {"measure_jobs_endpoint": "tcp://10.1.2.3:5", "measure_results_endpoint": "tcp://10.1.2.3:6"},
])
def test_bad_scale_out_settings_are_refused(settings: dict) -> None:
    with pytest.raises(ConfigError, match="workers|measur|loopback"):
        ServiceConfig(**settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serve_with_a_measurer_joining_from_another_host(tmp_path: Path) -> None:
    """`lithoscope serve --measure-jobs tcp://... --measure-results tcp://...` with no local
    process, and `lithoscope measure` joining it (as from another host): every frame is
    measured by it, and it reports how many at Ctrl-C."""
    jobs, measured = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(2))
    frames_at, results_at = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/results"
    env = {**os.environ, "COLUMNS": "400"}
    serve = subprocess.Popen(
        [*LITHOSCOPE, "serve", "--frames", frames_at, "--results", results_at, "--sessions",
         str(tmp_path / "sessions"), "--measure-jobs", jobs, "--measure-results", measured],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    measure = subprocess.Popen([*LITHOSCOPE, "measure", "--jobs", jobs, "--results", measured],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        assert serve.stdout is not None
        for line in serve.stdout:
            if "receiving frames on" in line:
                break
        with Publisher(frames_at, results_endpoint=results_at, ack_timeout_s=90) as pub:
            report = pub.publish(ArraySource(noisy_frames(20), fps=20.0), speed=None, live=False)
        assert report.closed is not None
        assert report.closed.frames_analysed == report.closed.frames_archived == 20
        measure.send_signal(signal.SIGINT)
        out, err = measure.communicate(timeout=30)
        assert measure.returncode == 0, err
        assert "stopped after 20 frames" in out
    finally:
        for proc in (measure, serve):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
    assert serve.returncode == 0
