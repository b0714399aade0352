"""``lithoscope serve`` in a subprocess, for tests that stop and restart a real service."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
DEADLINE_S = 90.0


class Serve:
    """``lithoscope serve`` in a subprocess, started and waited for like a user would.

    Endpoints are ``ipc://`` under ``tmp_path``, so a service started again with the
    same ``tmp_path`` binds the same addresses.
    """

    def __init__(self, tmp_path: Path, *, settings: str = "", sessions: Path | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.frames = f"ipc://{tmp_path}/frames"
        self.results = f"ipc://{tmp_path}/results"
        self.sessions = sessions or tmp_path / "sessions"
        config = tmp_path / "serve.toml"
        config.write_text("heartbeat_s = 0.2\n" + settings)
        self.proc = subprocess.Popen(
            [*LITHOSCOPE, "serve", "--frames", self.frames, "--results", self.results,
             "--sessions", str(self.sessions), "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
            env={**os.environ, "COLUMNS": "400", "PYTHONDONTWRITEBYTECODE": "1"})
        assert self.proc.stdout is not None
        self.startup: list[str] = []
        for line in self.proc.stdout:  # the ready signal: both endpoints bound
            self.startup.append(line)
            if "receiving frames on" in line:
                break
        else:
            raise AssertionError(f"serve did not start: {self.proc.communicate()}")

    def vm_hwm_kb(self) -> int:
        """Peak resident memory of the service so far (kernel's high-water mark)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=DEADLINE_S)
        return "".join(self.startup) + out, err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=DEADLINE_S)
