"""Soak: a live stream at the target rate for a long time, then what was lost and what grew.

    .venv/bin/python bench/soak.py [--minutes 30] [--fps 4] [--size 512]
                                   [--interval 10] [--json OUT.json] [--keep DIR]

Runs the real deployment: ``lithoscope serve`` in its own process (tcp loopback), a
publisher in this one streaming simulated frames in real time as a live camera would
(``live``: the worker archives every frame and may skip analysing some), and a
subscriber on the results stream. Every ``--interval`` seconds it records the frames
offered and archived so far, the service's resident memory (``/proc/PID/status``) and
the acquisition-to-result latency of that interval. At the end it stops the session,
waits for the service to confirm the archive is closed, re-reads the archive and
reports frames offered / archived / lost (the exit status is 1 if any was lost), the
RSS trend after warm-up (MB per hour, least squares over the last two thirds, so
start-up allocations do not count) and latency over time.

The frames are a pool rendered once by the simulator and cycled, so the soak measures
the service, not the simulator. Not part of ``make test``: it takes as long as asked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.protocol import Heartbeat, Result, decode
from lithoscope.service.publisher import Publisher, PublishReport
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


class CycledSource(SourceBase):
    """An endless live stream built from a few rendered frames (index and time go on)."""

    def __init__(self, pool: list[SourceFrame], info: SourceInfo, fps: float) -> None:
        self.pool = pool
        self.fps = fps
        self._info = SourceInfo(name=f"soak:{info.name}", kind="sim", shape=info.shape,
                                dtype=info.dtype, frame_count=None, fps=fps,
                                pixel_size_nm=info.pixel_size_nm, live=True)

    def __iter__(self) -> Iterator[SourceFrame]:
        index = 0
        while True:
            item = self.pool[index % len(self.pool)]
            yield SourceFrame(image=item.image, t_s=index / self.fps, index=index,
                              metadata=dict(item.metadata))
            index += 1


def _ms(value: float | None) -> str:
    return f"{value:12.1f}" if value is not None else f"{'-':>12}"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid``: VmRSS, or its RssAnon (heap, arenas, Python's
    obmalloc, thread stacks) or RssFile (mapped libraries) part."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(field + r":\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def start_service(sessions: Path) -> tuple[subprocess.Popen[str], str, str]:
    serve = subprocess.Popen(
        [sys.executable, "-m", "lithoscope.service", "serve", "--frames", "tcp://127.0.0.1:*",
         "--results", "tcp://127.0.0.1:*", "--sessions", str(sessions)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "400"})
    assert serve.stdout is not None
    for line in serve.stdout:
        if "receiving frames on" in line:
            frames_at, results_at = re.findall(r"tcp://127\.0\.0\.1:\d+", line)
            return serve, frames_at, results_at
    raise SystemExit(f"lithoscope serve did not start (exit {serve.wait()})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=4.0,
                        help="target frame rate (default: the simulated camera's)")
    parser.add_argument("--size", type=int, default=512, help="square frame size, px")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--pool", type=int, default=32, help="distinct frames rendered")
    parser.add_argument("--json", type=Path, help="also write the report here (JSON)")
    parser.add_argument("--keep", type=Path, help="keep the archive in this folder")
    args = parser.parse_args(argv)

    sim = SimulatedSource(SimConfig(shape=(args.size, args.size)))
    pool = []
    for item in sim:  # frames across the whole experiment: contact, swelling, ...
        if item.index % max(1, (sim.info.frame_count or 1) // args.pool) == 0:
            pool.append(item)
        if len(pool) == args.pool:
            break
    source = CycledSource(pool, sim.info, args.fps)
    offered_target = round(args.minutes * 60 * args.fps)

    tmp = tempfile.TemporaryDirectory(prefix="lithoscope-soak-")
    sessions = args.keep or Path(tmp.name)
    serve, frames_at, results_at = start_service(sessions)
    offered = 0
    report: dict[str, Any] = {}
    publish_done: dict[str, PublishReport] = {}

    def on_frame(_: SourceFrame) -> None:
        nonlocal offered
        offered += 1

    def publish() -> None:
        with Publisher(frames_at, results_endpoint=results_at, ack_timeout_s=300) as pub:
            publish_done["report"] = pub.publish(source, speed=1.0, max_frames=offered_target,
                                                 on_frame=on_frame)

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sub.setsockopt(zmq.SUBSCRIBE, b"result")
    sub.connect(results_at)
    samples: list[dict[str, Any]] = []
    latencies_all: list[float] = []
    print(f"soak: {args.minutes:g} min at {args.fps:g} fps, {args.size}x{args.size} "
          f"{sim.info.dtype}, {offered_target} frames; service pid {serve.pid}", flush=True)
    print(f"{'t_min':>6}{'offered':>9}{'archived':>10}{'analysed':>10}{'rss_mb':>9}"
          f"{'lat_p50_ms':>12}{'lat_p99_ms':>12}", flush=True)
    publisher = threading.Thread(target=publish, daemon=True)
    t0 = time.monotonic()
    publisher.start()
    counters: dict[str, int] = {}
    try:
        next_sample = t0 + args.interval
        latencies: list[float] = []
        while publisher.is_alive() or sub.poll(0):
            if sub.poll(200):
                msg = decode(sub.recv_multipart())
                if isinstance(msg, Heartbeat):
                    counters = msg.counters
                elif isinstance(msg, Result):
                    latencies.append(msg.latency_s)
            now = time.monotonic()
            if now >= next_sample or not publisher.is_alive():
                lat = np.asarray(latencies) * 1e3
                sample = {"t_s": now - t0, "offered": offered,
                          "archived": counters.get("archived", 0),
                          "analysed": counters.get("analysed", 0), "rss_mb": rss_mb(serve.pid),
                          "rss_anon_mb": rss_mb(serve.pid, "RssAnon"),
                          "rss_file_mb": rss_mb(serve.pid, "RssFile"),
                          "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                          "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else None}
                samples.append(sample)
                latencies_all.extend(latencies)
                latencies = []
                print(f"{sample['t_s'] / 60:6.1f}{offered:9d}{sample['archived']:10d}"
                      f"{sample['analysed']:10d}{sample['rss_mb']:9.1f}"
                      f"{_ms(sample['latency_p50_ms'])}{_ms(sample['latency_p99_ms'])}",
                      flush=True)
                next_sample += args.interval
        publisher.join()
    finally:
        sub.close(linger=0)
        ctx.term()
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=120)

    pub_report = publish_done.get("report")
    closed = pub_report.closed if pub_report else None
    if closed is None:
        print("soak: the service did not confirm the archive was closed", file=sys.stderr)
        return 1
    reader = ArchiveReader(closed.archive_path)
    seq = reader.table("frame_table")["seq"][: reader.frame_count]
    contiguous = bool(np.all(np.diff(seq) == 1))
    sent = pub_report.frames_sent if pub_report else offered
    warm = [s for s in samples if s["t_s"] >= samples[-1]["t_s"] / 3]
    # Over minutes a trend is allocator noise (collections, chunk caches); it means
    # something only over a long run.
    slope = (float(np.polyfit([s["t_s"] / 3600 for s in warm], [s["rss_mb"] for s in warm], 1)[0])
             if len(warm) >= 2 and args.minutes >= 10 else float("nan"))
    lat = np.asarray(latencies_all) * 1e3
    report = {
        "minutes": args.minutes, "fps": args.fps, "size": args.size, "cpus": os.cpu_count(),
        "frames_offered": sent, "frames_archived": reader.frame_count,
        "frames_lost": sent - reader.frame_count, "archive_seq_contiguous": contiguous,
        "frames_analysed": closed.frames_analysed,
        "frames_skipped": reader.meta.get("frames_skipped"),
        "archive_status": reader.status, "archive_bytes": reader.summary()["size_bytes"],
        "late_frames": pub_report.late_frames if pub_report else None,
        "rss_mb_first": samples[0]["rss_mb"], "rss_mb_last": samples[-1]["rss_mb"],
        "rss_mb_max": max(s["rss_mb"] for s in samples),
        "rss_slope_mb_per_h_after_warmup": slope if np.isfinite(slope) else None,
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "samples": samples,
    }
    print(f"\nframes offered {sent}, archived {reader.frame_count}, lost "
          f"{report['frames_lost']} (archive {reader.status}, seq contiguous: {contiguous}); "
          f"analysed {closed.frames_analysed}, skipped {report['frames_skipped']}")
    print(f"service RSS {report['rss_mb_first']:.0f} -> {report['rss_mb_last']:.0f} MB "
          f"(max {report['rss_mb_max']:.0f}; trend over the last two thirds "
          + (f"{slope:+.1f} MB/h)" if np.isfinite(slope) else "needs a run of 10 min or more)"))
    if lat.size:
        print(f"latency p50 {report['latency_p50_ms']:.1f} ms, p99 "
              f"{report['latency_p99_ms']:.1f} ms over the run")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    tmp.cleanup()
    return 0 if report["frames_lost"] == 0 and contiguous else 1


if __name__ == "__main__":
    raise SystemExit(main())
