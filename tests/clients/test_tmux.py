"""The monitor in a real terminal: tmux runs it, capture-pane reads what a person sees."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.arrays import noisy_frames
from support.media import write_tiff_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]


class Terminal:
    """One tmux server of our own (its own socket), one window of a fixed size."""

    def __init__(self, cwd: Path) -> None:
        self.socket = f"lithoscope-test-{secrets.token_hex(4)}"
        self.cwd = cwd

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout

    def start(self, command: list[str]) -> None:
        # rich would take COLUMNS/LINES inherited from the test run over the real size.
        line = f"env -u COLUMNS -u LINES {shlex.join(command)}; echo EXITED-$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", "110", "-y", "50", "-c",
                  str(self.cwd), line)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, condition: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if condition(text):
                return text
            time.sleep(0.25)  # polling the screen, not waiting for start-up
        pytest.fail(f"never saw {what}; the screen was:\n{text}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    t = Terminal(tmp_path)
    yield t
    t.close()


def test_demo_shows_the_live_monitor_in_a_terminal(terminal: Terminal) -> None:
    terminal.start([*LITHOSCOPE, "demo", "--speed", "10", "--sessions", "runs"])
    live = terminal.wait_for(lambda s: "lithoscope monitor" in s and "contact_made" in s,
                             180, "the monitor with the first contact")
    assert "● connected to the demo's own worker" in live
    assert "needle contact  MADE since t = " in live
    assert "bias" in live
    assert re.search(r"received \d+ +analysed \d+ +archived \d+", live)
    done = terminal.wait_for(lambda s: "EXITED-" in s, 300, "the demo's end")
    assert "EXITED-0" in done
    assert "contact_lost" in done
    assert "frames archived │ 480" in done


def test_monitor_waits_connects_and_survives_a_service_restart(
        terminal: Terminal, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        results = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    terminal.start([*LITHOSCOPE, "monitor", "--connect", results])
    terminal.wait_for(lambda s: f"waiting for a service at {results}" in s, 60, "waiting")

    def serve() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [*LITHOSCOPE, "serve", "--frames", "tcp://127.0.0.1:*", "--results", results,
             "--sessions", str(tmp_path / "sessions")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "300"})
        assert process.stdout is not None
        for line in process.stdout:
            found = re.findall(r"tcp://127\.0\.0\.1:\d+", line)
            if len(found) == 2:
                return process, found[0]
        pytest.fail("serve did not start")

    service, frames = serve()
    try:
        terminal.wait_for(lambda s: f"● connected to {results}" in s, 60, "connected")
        movie = write_tiff_stack(tmp_path / "movie.tif", noisy_frames(8, shape=(48, 64)))
        subprocess.run([*LITHOSCOPE, "publish", str(movie), "--connect", frames, "--results",
                        results, "--speed", "max", "--fps", "4"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
        terminal.wait_for(lambda s: "session closed (end_of_source): 8 frames archived" in s,
                          60, "the closed session")
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=30)
    terminal.wait_for(lambda s: "connection lost" in s and "reconnecting" in s, 60,
                      "the lost connection")
    service, _ = serve()
    try:
        terminal.wait_for(lambda s: f"● connected to {results}" in s and "restarted" in s, 60,
                          "the reconnection")
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=30)
    terminal.tmux("send-keys", "-t", "t", "C-c", "")
    done = terminal.wait_for(lambda s: "EXITED-" in s, 30, "the monitor's exit on Ctrl-C")
    assert "EXITED-0" in done
    assert "Traceback" not in done
