"""The client commands as a user runs them: real subprocesses over real sockets."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from typer.testing import CliRunner

from lithoscope.service.cli import app
from lithoscope.service.protocol import Event, Message, Result, SessionClosed, encode

from support.arrays import noisy_frames
from support.media import write_tiff_stack

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
ENV = {**os.environ, "COLUMNS": "120", "LINES": "60"}
runner = CliRunner()


def free_tcp_endpoint() -> str:
    """A loopback port nobody listens on yet (for a client started before its service)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LITHOSCOPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


class Service:
    """``lithoscope serve`` in a subprocess; ready once it prints its endpoints."""

    def __init__(self, tmp_path: Path, results: str = "tcp://127.0.0.1:*") -> None:
        self.process = subprocess.Popen(
            [*LITHOSCOPE, "serve", "--frames", "tcp://127.0.0.1:*", "--results", results,
             "--sessions", str(tmp_path / "sessions")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**ENV, "COLUMNS": "300"})
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = re.findall(r"tcp://127\.0\.0\.1:\d+", line)
            if len(found) == 2:
                self.frames, self.results = found
                break
        else:
            pytest.fail(f"serve did not start: {self.process.stderr.read()}")  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=30)


@pytest.fixture
def movie(tmp_path: Path) -> Path:
    return write_tiff_stack(tmp_path / "movie.tif", noisy_frames(12, shape=(48, 64)))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.stop()


def publish(movie: Path, service: Service, cwd: Path, *, speed: str = "max") -> None:
    done = run("publish", str(movie), "--connect", service.frames, "--results", service.results,
               "--speed", speed, "--fps", "4", cwd=cwd)
    assert done.returncode == 0, done.stderr


def test_client_commands_have_help() -> None:
    for command in ("monitor", "log", "forward", "plot", "report"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_monitor_waits_for_a_service_started_after_it(tmp_path: Path, movie: Path) -> None:
    endpoint = free_tcp_endpoint()
    monitor = subprocess.Popen([*LITHOSCOPE, "monitor", "--connect", endpoint, "--exit-on-close"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    service = Service(tmp_path, results=endpoint)
    try:
        # In real time (3 s): a monitor that connects after the session_start went by
        # still learns the source from the heartbeats.
        publish(movie, service, tmp_path, speed="1")
        out, err = monitor.communicate(timeout=60)
    finally:
        if monitor.poll() is None:
            monitor.kill()
        service.stop()
    assert monitor.returncode == 0, err
    assert "session closed (end_of_source): 12 frames archived" in out
    assert f"connected to {endpoint}" in out
    assert "movie.tif (replay)" in out


def test_monitor_refuses_a_bad_endpoint_in_one_line(tmp_path: Path) -> None:
    done = run("monitor", "--connect", "localhost:5556", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_log_writes_csv_of_a_published_session(tmp_path: Path, movie: Path,
                                               service: Service) -> None:
    logger = subprocess.Popen(
        [*LITHOSCOPE, "log", "--connect", service.results, "--out", "logs", "--exit-on-close"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert logger.stdout is not None
        assert "Logging" in logger.stdout.readline()
        publish(movie, service, tmp_path)
        out, err = logger.communicate(timeout=60)
    finally:
        if logger.poll() is None:
            logger.kill()
    assert logger.returncode == 0, err
    assert "Logged 12 frame rows" in out
    (cluster,) = (tmp_path / "logs").glob("*-cluster.csv")
    with cluster.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(12))


class FakeService:
    """A results stream driven by the test, to feed a client command in a subprocess."""

    def __init__(self) -> None:
        self.context: zmq.Context[object] = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.seq = 0

    def send(self, msg: Message) -> None:
        self.seq += 1
        self.socket.send_multipart(encode(msg), copy=False)

    def until(self, process: subprocess.Popen[str], done: object, msg: Message) -> None:
        """Resend ``msg`` until ``done()`` is true: a subscriber joins when it joins."""
        deadline = time.monotonic() + 60
        while not done():  # type: ignore[operator]
            assert process.poll() is None or done(), process.communicate()  # type: ignore[operator]
            assert time.monotonic() < deadline, "the client never received the message"
            self.send(msg)
            time.sleep(0.05)  # pacing a retry loop, not waiting for start-up

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def fake_service() -> Iterator[FakeService]:
    s = FakeService()
    yield s
    s.close()


CLOSED = SessionClosed(session_id="s", archive_path="x.zarr", frames_archived=1,
                       frames_analysed=1, frames_dropped=0, reason="end_of_source")


def test_forward_runs_a_command_per_chosen_event(tmp_path: Path,
                                                 fake_service: FakeService) -> None:
    hook = tmp_path / "hook.py"
    hook.write_text("import os, sys\nopen(sys.argv[1], 'a').write("
                    "os.environ['LITHOSCOPE_EVENT_KIND'] + '\\n')\n")
    calls = tmp_path / "calls.txt"
    forward = subprocess.Popen(
        [*LITHOSCOPE, "forward", "--connect", fake_service.endpoint, "--kinds", "contact_lost",
         "--run", f"{sys.executable} {hook} {calls}", "--exit-on-close"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        fake_service.until(forward, lambda: calls.exists(), Event(
            session_id="s", kind="contact_lost", t_s=80.0, frame=320, message="withdrawn"))
        fake_service.send(Event(session_id="s", kind="frames_dropped", t_s=81.0, frame=321))
        fake_service.until(forward, lambda: forward.poll() is not None, CLOSED)
        out, err = forward.communicate(timeout=30)
    finally:
        if forward.poll() is None:
            forward.kill()
    assert forward.returncode == 0, err
    assert set(calls.read_text().split()) == {"contact_lost"}
    assert "contact_lost" in out
    assert "ok" in out
    assert "frames_dropped" not in out


def test_forward_refuses_unknown_kinds_in_one_line(tmp_path: Path) -> None:
    done = run("forward", "--kinds", "touchdown", "--run", "true", cwd=tmp_path)
    assert done.returncode == 1
    assert "Expected event kinds" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_plot_keeps_a_png_of_the_stream(tmp_path: Path, fake_service: FakeService) -> None:
    png = tmp_path / "areas.png"
    plot = subprocess.Popen(
        [*LITHOSCOPE, "plot", "--connect", fake_service.endpoint, "--out", str(png),
         "--every", "0.1", "--exit-on-close"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    frame = 0

    def next_result() -> Result:
        nonlocal frame
        frame += 1
        return Result(session_id="s", index=frame, t_s=frame / 4, latency_s=0.01,
                      cluster={"area_px": 1000 + frame, "area_nm2": 250.0 + frame,
                               "needle_contact": True},
                      particles={"label": [1], "area_nm2": [100.0 + frame],
                                 "centroid_row": [5.0], "centroid_col": [5.0]})

    try:
        deadline = time.monotonic() + 60
        while not png.exists():
            assert time.monotonic() < deadline
            assert plot.poll() is None, plot.communicate()
            fake_service.send(next_result())
            time.sleep(0.05)  # pacing the stream
        fake_service.until(plot, lambda: plot.poll() is not None, CLOSED)
        out, err = plot.communicate(timeout=30)
    finally:
        if plot.poll() is None:
            plot.kill()
    assert plot.returncode == 0, err
    assert f"Wrote {png}" in out.replace("\n", "")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plot_refuses_a_non_png_target(tmp_path: Path) -> None:
    done = run("plot", "--out", "areas.jpg", cwd=tmp_path)
    assert done.returncode == 1
    assert ".png" in done.stderr
