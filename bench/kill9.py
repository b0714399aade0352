"""How much of a replay survives a kill -9 of the service? Frames sent vs frames on disk.

    .venv/bin/python bench/kill9.py [--fps 5] [--size 1024] [--kill-at 40]

Starts ``lithoscope serve`` in a subprocess (ipc endpoints and a sessions folder in a
temporary directory), replays the simulator at ``--fps`` frames per second of
``--size``² uint16 frames to it as a replay session (``live = false``: every frame is
analysed), and kills the service with SIGKILL ``--kill-at`` seconds after the first
frame. Then it reads the archive the service left:

* frames sent (the publisher's sends that returned) against frames on disk
  (``ArchiveReader.frame_count`` of the archive as the kill left it);
* how long a frame took from being sent to being written, from the archive's own
  frame table: ``received_at`` (stamped by the writer) minus ``acquired_at`` (stamped
  by the publisher just before sending), median and worst;
* frames analysed by then (rows in the ``cluster`` table).

Issue 13 asks that a received frame be on disk within 1 s whatever the analysis is
doing. The figure depends on the machine (analysis speed sets how far it lags).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.publisher import Publisher
from lithoscope.service.sources.base import SourceFrame
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


def run(fps: float, size: int, kill_at_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lithoscope-kill9-") as tmp:
        frames_at, results_at = f"ipc://{tmp}/frames", f"ipc://{tmp}/results"
        sessions = Path(tmp) / "sessions"
        serve = subprocess.Popen(
            [sys.executable, "-m", "lithoscope.service", "serve", "--frames", frames_at,
             "--results", results_at, "--sessions", str(sessions)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert serve.stdout is not None
        for line in serve.stdout:  # the ready signal: both endpoints bound
            if "receiving frames on" in line:
                break
        else:
            raise SystemExit("lithoscope serve did not start")
        sent = 0
        first = threading.Event()
        stop = threading.Event()

        def counted(_: SourceFrame) -> None:
            nonlocal sent
            sent += 1
            first.set()

        config = SimConfig(shape=(size, size), fps=fps, duration_s=kill_at_s + 30.0)
        with Publisher(frames_at, ack_timeout_s=1.0) as publisher:
            thread = threading.Thread(target=publisher.publish, kwargs={
                "source": SimulatedSource(config), "speed": 1.0, "live": False,
                "stop": stop, "on_frame": counted}, daemon=True)
            thread.start()
            if not first.wait(60):
                raise SystemExit("no frame was sent within 60 s")
            time.sleep(kill_at_s)  # a wall-clock interval is what is being measured
            serve.kill()
            frames_sent = sent
            serve.wait()
            stop.set()
            thread.join(30)
            publisher.close(linger_s=0)
        (path,) = sessions.glob("*.zarr")
        reader = ArchiveReader(path)
        table = reader.table("frame_table")
        delay = (table["received_at"] - table["acquired_at"])[: reader.frame_count]
        return {"frames_sent": frames_sent, "frames_on_disk": reader.frame_count,
                "frames_analysed": len(reader.table("cluster").get("frame", ())),
                "send_to_disk_median_s": float(np.median(delay)) if delay.size else np.nan,
                "send_to_disk_max_s": float(np.max(delay)) if delay.size else np.nan}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=1024, help="square frame size, px")
    parser.add_argument("--kill-at", type=float, default=40.0,
                        help="seconds after the first frame")
    args = parser.parse_args(argv)
    result = run(args.fps, args.size, args.kill_at)
    print(f"{args.size}² uint16 at {args.fps:g} fps, kill -9 at {args.kill_at:g} s: "
          f"{result['frames_sent']} frames sent, {result['frames_on_disk']} on disk, "
          f"{result['frames_analysed']} analysed; send to disk median "
          f"{result['send_to_disk_median_s']:.3f} s, worst {result['send_to_disk_max_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
