"""Where one frame's analysis time goes, and before/after comparisons of it (issue 8).

    .venv/bin/python bench/profile_frame.py [--sizes 1024 2048 4096] [--frames N]
                                            [--pixel-size NM] [--particles N]
                                            [--rounds R] [--trees PATH ...] [--profile]
                                            [--json OUT.json]

On the frames of ``bench/throughput.py`` (simulated, uint16, ``--pixel-size`` nm per
pixel, 0.4 by default: the field grows with the frame as at the microscope), times
``measure_frame``,
the stateless per-frame analysis each worker process runs (``SessionAnalyzer.update``
is it plus drift, tracking, physics and alerts), in ms per frame.

``--trees`` compares source trees (each a directory holding ``service/``, ``clients/``
and ``replay/``; ``installed`` is the one this venv imports) in the same run: each
round times every tree in a fresh process, the order reversed every other round, so
the noise of a shared machine hits all of them alike. The median per tree and its ratio
to the first tree are printed. A tree for an older commit:

    mkdir -p build/base && git archive <commit> | tar -x -C build/base
    .venv/bin/python bench/profile_frame.py --trees build/base installed

``--profile`` adds, per tree, a cProfile breakdown: cumulative ms per frame of the
analysis functions (``_choose_binning``: the particle scale read off a coarse copy,
``_prepare``, ``_bin_counts``, ``_find_needle``, ``_segment``, ``_split``,
``_boundary_areas``: sub-pixel areas, ``_upsample``, ``measure_particles``,
``particle_contacts``, ``drift_image``; those a tree lacks are left out), from a separate
run (cProfile's overhead is not in the timings).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("measure_frame", "_analyze", "_choose_binning", "_prepare", "_bin_counts",
          "_find_needle", "_segment", "_split", "_boundary_areas", "_upsample",
          "measure_particles", "particle_contacts", "drift_image")
"""Functions of lithoscope.service.analysis reported by ``--profile``, when present."""
INSTALLED = "installed"


def child(frames_path: Path, pixel_size_nm: float, count: int, profile: bool) -> dict[str, Any]:
    """Time (or profile) ``measure_frame`` on the frames, in this process."""
    import lithoscope.service
    from lithoscope.service.analysis import measure_frame

    frames = np.load(frames_path)
    measure_frame(frames[0], pixel_size_nm=pixel_size_nm)  # warm-up: lazy imports, caches
    out: dict[str, Any] = {
        "imported_from": str(Path(lithoscope.service.__file__).resolve().parent)}
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(count):
            measure_frame(frames[i % len(frames)], pixel_size_nm=pixel_size_nm)
        profiler.disable()
        stats = pstats.Stats(profiler)
        found: dict[str, float] = {}
        for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
            if name in STAGES and f"{os.sep}analysis{os.sep}" in filename:
                found[name] = found.get(name, 0.0) + 1e3 * row[3] / count  # cumtime
        out["stages_ms"] = found
        return out
    times = []
    for i in range(count):
        start = time.perf_counter()
        measure_frame(frames[i % len(frames)], pixel_size_nm=pixel_size_nm)
        times.append(1e3 * (time.perf_counter() - start))
    out["ms"] = times
    return out


def link_tree(tree: str, tmp: Path, number: int) -> dict[str, str]:
    """Environment importing ``lithoscope.*`` from ``tree`` (a link tree, as ``make lint``)."""
    env = dict(os.environ)
    if tree == INSTALLED:
        return env
    root = Path(tree).resolve()
    if not (root / "service" / "__init__.py").is_file():
        raise SystemExit(f"Expected a source tree with service/__init__.py. Got {tree!r}.")
    package = tmp / f"tree{number}" / "lithoscope"
    package.mkdir(parents=True)
    for name in ("service", "clients", "replay"):
        (package / name).symlink_to(root / name, target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package.parent),
                                                      env.get("PYTHONPATH", "")]))
    return env


def run_child(env: dict[str, str], frames_path: Path, pixel_size_nm: float, count: int,
              profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(frames_path), "--pixel-size",
               repr(pixel_size_nm), "--frames", str(count)] + (["--profile"] if profile else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048])
    parser.add_argument("--frames", type=int, default=20, help="timed frames per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tree and size")
    parser.add_argument("--trees", nargs="+", default=[INSTALLED],
                        help=f"source trees to compare ('{INSTALLED}': this venv's)")
    parser.add_argument("--profile", action="store_true", help="also a cProfile breakdown")
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pixel-size", type=float, default=0.4,
                        help="nm per pixel of the rendered frames (the field grows with the "
                             "frame, the particles keep their size in nm)")
    parser.add_argument("--particles", type=int, default=8, help="particles in the cluster")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.pixel_size, args.frames, args.profile)))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import render_frames

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lithoscope-profile-") as tmp_name:
        tmp = Path(tmp_name)
        envs = [link_tree(tree, tmp, k) for k, tree in enumerate(args.trees)]
        for size in args.sizes:
            pixel_size_nm = args.pixel_size
            frames = render_frames(size, pixel_size_nm, args.particles)
            frames_path = tmp / f"frames{size}.npy"
            np.save(frames_path, frames)
            del frames
            times: list[list[float]] = [[] for _ in args.trees]
            where = [""] * len(args.trees)
            for round_number in range(args.rounds):
                order = list(range(len(args.trees)))
                if round_number % 2:
                    order.reverse()
                for k in order:
                    run = run_child(envs[k], frames_path, pixel_size_nm, args.frames, False)
                    times[k].extend(run["ms"])
                    where[k] = run["imported_from"]
            first = statistics.median(times[0])
            for k, tree in enumerate(args.trees):
                median = statistics.median(times[k])
                row: dict[str, Any] = {
                    "size": size, "tree": tree, "imported_from": where[k],
                    "frames": len(times[k]), "median_ms": median,
                    "p90_ms": float(np.percentile(times[k], 90)), "ratio": median / first}
                if args.profile:
                    row["stages_ms"] = run_child(envs[k], frames_path, pixel_size_nm,
                                                 args.frames, True)["stages_ms"]
                results.append(row)
                print(f"{size:>5}²  {tree:<24} median {median:7.1f} ms/frame  p90 "
                      f"{row['p90_ms']:7.1f}  x{row['ratio']:.2f} of {args.trees[0]}  "
                      f"({len(times[k])} frames; {where[k]})", flush=True)
                for name in STAGES:
                    if name in row.get("stages_ms", {}):
                        print(f"{'':>8}{name:<20}{row['stages_ms'][name]:8.1f} ms/frame")
            frames_path.unlink()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
