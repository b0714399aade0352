"""The worker's per-frame work outside the image analysis, stage by stage.

    .venv/bin/python bench/session_step.py [--sizes 1024 2048] [--pixel-sizes 0.4]
                                           [--particles 8 40] [--frames 300] [--fps 100]
                                           [--repeat 1] [--digest] [--profile OUT.prof]

What the analysis thread does with a frame once :func:`measure_frame` has measured it
(in a measuring process, or inline): :meth:`SessionPipeline.analyse_measured`, that is
``SessionAnalyzer.update_measured`` (drift, rejoining, tracking, physics, alerts), the
track-id label image and its ids, and ``SessionPipeline._complete`` (operando
bookkeeping, rows, the particles' and regions' outlines, the result message).

Frames come from ``bench/throughput.py``'s ``render_frames`` (simulated operando frames,
``size``² uint16, the particles keeping their size in nm); its few distinct frames are
measured once up front and cycled, one session of ``--frames`` frames at ``--fps`` per
case, so only the session's part is timed. Each stage is wrapped in a timer (inclusive
time, by call path: a stage inside another is listed under it) and reported in
ms/frame, the median over ``--repeat`` sessions. ``--digest`` prints a SHA-256 of every
output (result messages, archive rows, events, label images): two versions of the code
that print the same digest published and archived the same values. ``--profile`` runs
the first case's session under cProfile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lithoscope.service import physics, pipeline
from lithoscope.service.analysis import FrameMeasurement, SessionAnalyzer, measure_frame
from lithoscope.service.analysis import _session as session_module
from lithoscope.service.pipeline import FrameOutput, SessionPipeline, json_safe
from lithoscope.service.protocol import SessionStart


class StageTimer:
    """Inclusive wall time per call path (``"complete/region_outlines"``), summed."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(name)
            path = "/".join(self._stack)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[path] += time.perf_counter() - start
                self._stack.pop()
        return timed


def instrument(session: SessionPipeline, timer: StageTimer) -> Callable[[], None]:
    """Wrap the session's stages in ``timer``; return the function that unwraps the
    module-level ones."""
    analyzer = session.analyzer
    for owner, names in ((session, ["analyse_measured", "_complete"]),
                         (session.operando, ["update"]),
                         (analyzer, ["update_measured", "_particle_physics",
                                     "_cluster_physics", "_watched_area",
                                     "_merge_fed_onset"]),
                         (analyzer.drift, ["update_image"]),
                         (analyzer.tracker, ["update"]),
                         (analyzer.detector, ["update"])):
        for name in names:
            label = {"update": type(owner).__name__ + ".update"}.get(name, name.lstrip("_"))
            setattr(owner, name, timer.wrap(label, getattr(owner, name)))
    saved: list[tuple[Any, str, Any]] = []
    for module, names in ((pipeline, ["track_label_image", "label_track_ids",
                                      "particle_outlines", "_region_outlines"]),
                          (session_module, ["track_lut", "rejoin_split_particles",
                                            "_neighbours"]),
                          (physics, ["theil_sen_slopes", "theil_sen_slope"])):
        for name in names:
            original = getattr(module, name)
            saved.append((module, name, original))
            setattr(module, name, timer.wrap(name.lstrip("_"), original))

    def restore() -> None:
        for module, name, original in saved:
            setattr(module, name, original)
    return restore


def digest_output(h: Any, output: FrameOutput) -> None:
    """Feed everything ``output`` publishes or archives into the hash ``h``."""
    result = output.result
    h.update(json.dumps(json_safe({
        "cluster": result.cluster, "particles": result.particles,
        "outlines": result.outlines, "regions": result.regions,
        "events": [dataclasses.asdict(e) for e in output.events],
    }), sort_keys=True, default=repr).encode())
    for table, columns in output.rows:
        h.update(table.encode())
        for key in sorted(columns):
            value = columns[key]
            h.update(key.encode())
            if isinstance(value, np.ndarray) and value.dtype != object:
                h.update(value.dtype.str.encode() + value.tobytes())
            elif isinstance(value, np.ndarray):
                h.update(repr(value.tolist()).encode())
            else:
                h.update(repr(value).encode())
    if output.labels is not None:
        h.update(output.labels.particles.tobytes())
        h.update(np.asarray(output.labels.track_ids).tobytes())


def run_session(images: np.ndarray, measurements: list[FrameMeasurement], *,
                frames: int, fps: float, pixel_size_nm: float,
                timer: StageTimer | None, h: Any = None) -> SessionPipeline:
    start = SessionStart(session_id="bench", source="sim", source_kind="sim", t0_unix=0.0,
                         live=False, pixel_size_nm=pixel_size_nm, fps=fps)
    session = SessionPipeline(start)
    restore = instrument(session, timer) if timer is not None else (lambda: None)
    try:
        for i in range(frames):
            k = i % len(images)
            output = session.analyse_measured(
                measurements[k], images[k], index=i, t_s=i / fps, pixel_size_nm=None,
                exposure_s=None, metadata={}, acquired_at=0.0)
            if h is not None:
                digest_output(h, output)
    finally:
        restore()
    return session


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--pixel-sizes", type=float, nargs="+", default=[0.4])
    parser.add_argument("--particles", type=int, nargs="+", default=[8, 40])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--digest", action="store_true")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import render_frames

    for size in args.sizes:
        for pixel_size_nm in args.pixel_sizes:
            for particles in args.particles:
                images = render_frames(size, pixel_size_nm, particles)
                config = SessionAnalyzer().config
                measurements = [measure_frame(image, config=config,
                                              pixel_size_nm=pixel_size_nm)
                                for image in images]
                counts = [m.particles["label"].size for m in measurements]
                case = f"{size}² {pixel_size_nm} nm/px {particles} particles"
                kwargs: dict[str, Any] = {"frames": args.frames, "fps": args.fps,
                                          "pixel_size_nm": pixel_size_nm}
                if args.profile is not None:
                    profile = cProfile.Profile()
                    profile.runcall(run_session, images, measurements, timer=None, **kwargs)
                    profile.dump_stats(args.profile)
                    print(f"{case}: profile in {args.profile}")
                    return 0
                if args.digest:
                    h = hashlib.sha256()
                    run_session(images, measurements, timer=None, h=h, **kwargs)
                    print(f"{case}: digest {h.hexdigest()}")
                runs: dict[str, list[float]] = defaultdict(list)
                tracks = 0
                for _ in range(args.repeat):
                    timer = StageTimer()
                    session = run_session(images, measurements, timer=timer, **kwargs)
                    tracks = session.analyzer.tracker.track_count
                    for path, total in timer.totals.items():
                        runs[path].append(1e3 * total / args.frames)
                print(f"{case} (measured: {min(counts)}-{max(counts)} particles a frame, "
                      f"{tracks} track ids), {args.frames} frames at {args.fps:g} frames/s, "
                      "ms/frame:")
                for path in sorted(runs):
                    depth = path.count("/")
                    name = path.rsplit("/", 1)[-1]
                    print(f"  {'  ' * depth}{name:<{36 - 2 * depth}} "
                          f"{statistics.median(runs[path]):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
