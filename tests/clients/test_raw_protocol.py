"""docs/protocol.md is enough for a client without ZeroMQ: bash speaks ZMTP by hand."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.worker import Worker, WorkerThread

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "examples" / "raw-subscriber.sh"


@pytest.fixture
def results_port(tmp_path: Path) -> Iterator[int]:
    config = ServiceConfig(frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*", sessions_dir=str(tmp_path))
    with WorkerThread(Worker(config)) as thread:
        endpoint = thread.worker.results_endpoint
        assert endpoint is not None
        yield int(endpoint.rsplit(":", 1)[1])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_subscriber_reads_heartbeats_from_a_real_worker(results_port: int) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "127.0.0.1", str(results_port), "heartbeat",
                           "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        topic, header = line.split("\t")
        assert topic == "heartbeat"
        parsed = json.loads(header)  # > 255 bytes: the long-frame path was taken
        assert len(header) > 255
        assert parsed["version"] == 1
        assert parsed["type"] == "heartbeat"
        assert "received" in parsed["counters"]


def test_bash_subscriber_says_when_the_peer_is_not_zeromq(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" + b"x" * 64)
            conn.recv(1024)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        done = subprocess.run(["bash", str(SCRIPT), "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=30)
    finally:
        server.close()
    assert done.returncode == 1
    assert "not a ZMTP 3 peer" in done.stderr
