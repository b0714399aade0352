"""The client commands as a user runs them: real subprocesses over real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lithoscope.service.cli import app

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


def publish(movie: Path, service: Service, cwd: Path) -> None:
    done = run("publish", str(movie), "--connect", service.frames, "--results", service.results,
               "--speed", "max", "--fps", "4", cwd=cwd)
    assert done.returncode == 0, done.stderr


def test_client_commands_have_help() -> None:
    for command in ("monitor",):
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
        publish(movie, service, tmp_path)
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
