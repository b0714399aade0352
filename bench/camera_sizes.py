"""Per-frame analysis at the camera sizes a real session uses, over random draws.

    .venv/bin/python bench/camera_sizes.py [--cameras 1024:0.8 2048:0.4 256:1.0]
                                           [--draws 4] [--seed 0] [--scenario lithiation]

A whole movie at 2048x2048 px takes minutes per draw, so this samples frames of each
drawn experiment (:func:`lithoscope.service.sources.sim_draws.draw_sim_config`, the
timing of ``bench/accuracy.py``): before contact, in contact before and during the
swelling, and after withdrawal; each is analysed alone (``analyze_frame``) and scored
against the simulator's truth: the cluster area's error, its A/A0 error against the
first sampled frame, the contact state, the needle found, and the time per frame. The
table gives per camera the median and the worst over all sampled frames of all draws.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lithoscope.service.analysis import analyze_frame
from lithoscope.service.sources.sim import SCENARIOS, SimulatedSource
from lithoscope.service.sources.sim_draws import draw_sim_config

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import DRAW_TIMING  # noqa: E402  (the same experiment as the accuracy bench)

TIMES_S = (5.0, 9.0, 12.0, 20.0, 30.0, 44.0, 46.0, 60.0)
"""Sampled frame times: approach, just before contact, in contact, swelling, just
before and after withdrawal, contraction."""


def run_camera(size: int, pixel_size_nm: float, seeds: list[int],
               scenario: str) -> dict[str, float]:
    area_errors, ratio_errors, contact_right, needle_found, seconds = [], [], [], [], []
    for seed in seeds:
        config = draw_sim_config(seed, shape=(size, size), pixel_size_nm=pixel_size_nm,
                                 **DRAW_TIMING)
        source = SimulatedSource(config, scenario=scenario)
        first: tuple[float, float] | None = None
        for t_s in TIMES_S:
            frame = source.render(round(t_s * config.fps))
            assert frame.truth is not None
            start = time.perf_counter()
            result = analyze_frame(frame.image, pixel_size_nm=pixel_size_nm)
            seconds.append(time.perf_counter() - start)
            measured = float(result.cluster["area_px"])
            true = float(frame.truth["cluster_area_px"])
            area_errors.append(measured / true - 1.0)
            if first is None:
                first = (measured, true)
            ratio_errors.append((measured / first[0]) / (true / first[1]) - 1.0)
            contact_right.append(result.cluster["needle_contact"]
                                 == frame.truth["needle_contact"])
            needle_found.append(result.cluster["needle_area_px"] > 0)
    area = np.abs(area_errors)
    ratio = np.abs(ratio_errors)
    return {"area_median": float(np.median(area)), "area_worst": float(area.max()),
            "ratio_median": float(np.median(ratio)), "ratio_worst": float(ratio.max()),
            "contact_right": float(np.mean(contact_right)),
            "needle_found": float(np.mean(needle_found)),
            "ms_per_frame": 1e3 * float(np.median(seconds)), "frames": len(seconds)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", nargs="+", default=["1024:0.8", "2048:0.4", "256:1.0"],
                        help="SIZE:NM_PER_PX of square frames")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="lithiation", choices=list(SCENARIOS))
    args = parser.parse_args(argv)
    seeds = [args.seed + k for k in range(args.draws)]
    print(f"{args.draws} draws (seeds {seeds[0]}..{seeds[-1]}), {args.scenario}, frames at "
          f"{', '.join(f'{t:g}' for t in TIMES_S)} s")
    print(f"{'camera':<14}{'A med':>8}{'A max':>8}{'A/A0 med':>10}{'A/A0 max':>10}"
          f"{'contact':>9}{'needle':>8}{'ms/frame':>10}")
    for camera in args.cameras:
        size_text, _, pixel_text = camera.partition(":")
        size, pixel_size = int(size_text), float(pixel_text)
        r = run_camera(size, pixel_size, seeds, args.scenario)
        print(f"{f'{size}² {pixel_size:g} nm':<14}{r['area_median']:>8.2%}{r['area_worst']:>8.2%}"
              f"{r['ratio_median']:>10.2%}{r['ratio_worst']:>10.2%}{r['contact_right']:>9.0%}"
              f"{r['needle_found']:>8.0%}{r['ms_per_frame']:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
