"""Where the time of one frame goes: the demo's pipeline, stage by stage, in one run.

    .venv/bin/python bench/pipeline.py [--frames N] [--size PX] [--json OUT.json]

Measures, on the same simulated frames:

* ``render``: the simulator drawing frames (the camera's stand-in, not the service);
* ``analysis``: ``analyze_frame`` alone, frames in memory, single process;
* ``session``: ``SessionAnalyzer.update`` (what the worker runs: analysis plus drift,
  tracking, physics and alerts), frames in memory;
* ``archive``: ``ArchiveWriter.append_frame`` alone into a fresh store;
* ``end_to_end``: replay at ``--speed max`` through publisher -> ZeroMQ (tcp loopback)
  -> worker (archive + analysis of every frame) -> session_closed acknowledgement.

Each stage is reported as ms/frame (wall and CPU) and as a ratio to the end-to-end
figure, so the numbers can be compared across runs on a shared, noisy machine.
Throughput at camera frame sizes (1k-4k) is issue 8's ``bench/throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lithoscope.service.analysis import SessionAnalyzer, analyze_frame
from lithoscope.service.archive import ArchiveWriter
from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


class FrameListSource(SourceBase):
    """Frames rendered beforehand, so the end-to-end figure excludes the simulator."""

    def __init__(self, info: SourceInfo, frames: list[SourceFrame]) -> None:
        self._info = info
        self.frames = frames

    def __iter__(self) -> Iterator[SourceFrame]:
        return iter(self.frames)


def timed(work: Callable[[], object], frames: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_ms_per_frame": 1e3 * wall / frames, "cpu_ms_per_frame": 1e3 * cpu / frames}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=512, help="square frame size, px")
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)

    config = SimConfig(shape=(args.size, args.size))
    sim = SimulatedSource(config)
    info = sim.info
    frames: list[SourceFrame] = []
    results: dict[str, dict[str, float]] = {}

    def render() -> None:
        for frame in sim:
            frames.append(frame)
            if len(frames) == args.frames:
                break

    results["render"] = timed(render, args.frames)
    images = [f.image for f in frames]

    results["analysis"] = timed(
        lambda: [analyze_frame(im, pixel_size_nm=info.pixel_size_nm) for im in images],
        len(images))

    def session() -> None:
        analyzer = SessionAnalyzer()
        for f in frames:
            analyzer.update(f.image, t_s=f.t_s, index=f.index, pixel_size_nm=info.pixel_size_nm)

    # What the worker runs per frame: analyze_frame plus drift, tracking, physics, alerts.
    results["session"] = timed(session, len(images))

    with tempfile.TemporaryDirectory(prefix="lithoscope-bench-") as tmp:
        def archive() -> None:
            writer = ArchiveWriter(Path(tmp) / "archive.zarr", session={"session_id": "bench"})
            for i, image in enumerate(images):
                writer.append_frame(image, seq=i, index=i, t_s=i / info.fps,
                                    acquired_at=time.time())
            writer.close()

        results["archive"] = timed(archive, len(images))

        report = None

        def end_to_end() -> None:
            nonlocal report
            report = run_local_session(FrameListSource(info, frames), speed=None, live=False,
                                       archive_path=Path(tmp) / "e2e.zarr")

        results["end_to_end"] = timed(end_to_end, len(images))
        assert report is not None
        closed = report.closed
        if closed is None or closed.frames_archived != len(images):
            print(f"end-to-end lost frames: {closed}", file=sys.stderr)
            return 1

    total = results["end_to_end"]["wall_ms_per_frame"]
    print(f"{args.frames} frames of {args.size}x{args.size} {info.dtype}, "
          f"{os.cpu_count()} CPUs, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"{'stage':<12}{'wall ms/frame':>15}{'cpu ms/frame':>15}{'/ end-to-end':>14}")
    for name, row in results.items():
        row["ratio_to_end_to_end"] = row["wall_ms_per_frame"] / total
        print(f"{name:<12}{row['wall_ms_per_frame']:>15.1f}{row['cpu_ms_per_frame']:>15.1f}"
              f"{row['ratio_to_end_to_end']:>14.2f}")
    print(f"end-to-end: {1e3 / total:.1f} frames/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"frames": args.frames, "size": args.size,
                                         "stages": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
