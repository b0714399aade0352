"""CURVE: the service accepts only listed client keys; anyone else gets nothing.

Over tcp on 127.0.0.1 with CURVE forced on (the service turns it on whenever keys are
given), so the test exercises what a lab-network deployment runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.errors import ConfigError
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import Frame, Heartbeat, SessionStart, decode, encode
from lithoscope.service.publisher import Publisher
from lithoscope.service.security import ClientCurve, create_keys

from support.arrays import ArraySource, noisy_frames
from support.media import write_tiff_stack

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LITHOSCOPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A service pair, one allowed client, one intruder with a well-formed but unlisted key."""
    _, server_secret = create_keys(tmp_path / "service", "server")
    client_public, client_secret = create_keys(tmp_path / "client", "microscope-pc")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / client_public.name).write_bytes(client_public.read_bytes())
    _, intruder_secret = create_keys(tmp_path / "intruder", "laptop")
    return {"server_secret": server_secret, "server_public": tmp_path / "service/server.key",
            "allowed": allowed, "client_secret": client_secret,
            "intruder_secret": intruder_secret}


@pytest.fixture
def curve_worker(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Worker]:
    config = ServiceConfig(frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*",
                           sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1,
                           server_key=str(keys["server_secret"]),
                           client_keys=str(keys["allowed"]))
    thread = WorkerThread(Worker(config)).start()
    yield thread.worker
    thread.stop()


def _client(ctx: zmq.Context[Any], kind: int, endpoint: str,
            curve: ClientCurve | None) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def test_only_listed_clients_get_in(curve_worker: Worker, keys: dict[str, Path]) -> None:
    assert curve_worker.frames_endpoint is not None
    assert curve_worker.results_endpoint is not None
    allowed = ClientCurve.load(keys["server_public"], keys["client_secret"])
    intruder = ClientCurve.load(keys["server_public"], keys["intruder_secret"])
    ctx = zmq.Context()
    try:
        start = SessionStart(session_id="intruder", source="x", source_kind="x", t0_unix=0.0,
                             live=False, session_token="t" * 24)
        frame = Frame(session_id="intruder", index=0, t_s=0.0, acquired_at=0.0, shape=[8, 8],
                      dtype="uint8", image=np.zeros((8, 8), np.uint8), session_token="t" * 24)
        # Senders without a key, or with a key the service does not list, are refused at
        # the handshake: their frames never reach the worker.
        for curve in (None, intruder):
            push = _client(ctx, zmq.PUSH, curve_worker.frames_endpoint, curve)
            sub = _client(ctx, zmq.SUB, curve_worker.results_endpoint, curve)
            refused = []
            for sock, endpoint in ((push, curve_worker.frames_endpoint),
                                   (sub, curve_worker.results_endpoint)):
                # The monitor is attached before connecting, so no event is missed.
                monitor = sock.get_monitor_socket(zmq.EVENT_ALL)
                sock.connect(endpoint)
                if sock is push:
                    for msg in (start, frame):
                        push.send_multipart(encode(msg), flags=zmq.NOBLOCK)
                refused.append(_wait_refused(monitor))
                sock.disable_monitor()
                monitor.close(linger=0)
            assert refused == [True, True], f"curve={curve is not None}"
            # The refused subscriber hears nothing, while a listed one hears heartbeats.
            listed = _client(ctx, zmq.SUB, curve_worker.results_endpoint, allowed)
            listed.connect(curve_worker.results_endpoint)
            heartbeats = 0
            while heartbeats < 3 and listed.poll(30_000):
                heartbeats += isinstance(decode(listed.recv_multipart()), Heartbeat)
            assert heartbeats == 3
            assert not sub.poll(0)
            for sock in (push, sub, listed):
                sock.close(linger=0)

        frames = noisy_frames(5, shape=(32, 32))
        with Publisher(curve_worker.frames_endpoint, results_endpoint=curve_worker.results_endpoint,
                       curve=allowed, ack_timeout_s=60) as publisher:
            report = publisher.publish(ArraySource(frames), speed=None, live=False)
    finally:
        ctx.term()
    assert report.closed is not None
    np.testing.assert_array_equal(ArchiveReader(report.closed.archive_path).frames[:], frames)
    assert curve_worker.counters["received"] == 5
    assert list(curve_worker.closed_sessions) == [report.session_id]
    assert not curve_worker.decoder.rejected


def _wait_refused(monitor: zmq.Socket[Any], timeout_s: float = 30.0) -> bool:
    while monitor.poll(int(timeout_s * 1000)):
        if recv_monitor_message(monitor)["event"] & HANDSHAKE_FAILED:
            return True
    return False


def test_listening_beyond_loopback_needs_keys(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="needs CURVE"):
        ServiceConfig(frames_endpoint="tcp://0.0.0.0:5555", allow_remote=True)
    with pytest.raises(ConfigError, match="not on loopback"):
        ServiceConfig(frames_endpoint="tcp://0.0.0.0:5555")
    with pytest.raises(ConfigError, match="both server_key and client_keys"):
        ServiceConfig(server_key=str(keys["server_secret"]))
    ServiceConfig(frames_endpoint="tcp://0.0.0.0:5555", results_endpoint="tcp://0.0.0.0:5556",
                  allow_remote=True, server_key=str(keys["server_secret"]),
                  client_keys=str(keys["allowed"]))

    refused = run("serve", "--frames", "tcp://0.0.0.0:*", "--allow-remote", cwd=tmp_path)
    assert refused.returncode == 1
    assert "needs CURVE authentication" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_keys_command_makes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    made = run("keys", "k", "--name", "camera-pc", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    public, secret = tmp_path / "k/camera-pc.key", tmp_path / "k/camera-pc.key_secret"
    assert "public-key" in public.read_text()
    assert "secret-key" in secret.read_text()
    assert "secret-key" not in public.read_text()
    assert secret.stat().st_mode & 0o077 == 0
    again = run("keys", "k", "--name", "camera-pc", cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_public_key_given_as_the_secret_is_one_clear_line(tmp_path: Path,
                                                           keys: dict[str, Path]) -> None:
    result = run("serve", "--frames", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
                 "--server-key", str(keys["server_public"]), "--client-keys",
                 str(keys["allowed"]), "--sessions", "s", cwd=tmp_path)
    assert result.returncode == 1
    assert "holds no secret key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_and_publish_commands_with_keys(tmp_path: Path, keys: dict[str, Path]) -> None:
    serve = subprocess.Popen(
        [*LITHOSCOPE, "serve", "--frames", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
         "--sessions", "sessions", "--server-key", str(keys["server_secret"]),
         "--client-keys", str(keys["allowed"])],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "400"})
    try:
        assert serve.stdout is not None
        frames_at, results_at = re.findall(r"tcp://127\.0\.0\.1:\d+", serve.stdout.readline())
        stack = write_tiff_stack(tmp_path / "movie.tif", noisy_frames(6, shape=(32, 32)))
        publish = ["publish", str(stack), "--connect", frames_at, "--results", results_at,
                   "--speed", "max", "--server-key", str(keys["server_public"])]
        done = run(*publish, "--key", str(keys["client_secret"]), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Archived 6 frames" in done.stdout
        half = run(*publish, cwd=tmp_path)  # --server-key without --key
        assert half.returncode == 1
        assert "needs both --server-key" in half.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
