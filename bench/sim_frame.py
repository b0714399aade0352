"""One simulated frame as an 8-bit PNG, as a viewer would show it (for the docs).

    .venv/bin/python bench/sim_frame.py --scenario crystalline --t 40 \
        --out docs/images/sim_crystalline.png

Renders frame ``round(t * fps)`` of a scenario with the simulator's defaults (or
``--seed``) and writes it with the grey scale a viewer would pick: black at zero counts,
white a little above the vacuum's median, so the vacuum reads light grey and the support's
grain, the shot noise and the contrast inside the particles stay visible.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lithoscope.service.sources.sim import SCENARIOS, SimConfig, SimulatedSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="crystalline", choices=list(SCENARIOS))
    parser.add_argument("--t", type=float, default=40.0, help="experiment time, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    source = SimulatedSource(SimConfig(seed=args.seed), scenario=args.scenario)
    index = min(round(args.t * source.config.fps), len(source) - 1)
    image = source.render(index).image.astype(np.float32)
    white = 1.15 * float(np.median(image))
    grey = np.clip(image / white * 255.0, 0, 255).astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), grey):
        raise SystemExit(f"Could not write {args.out}.")
    print(f"{args.out}: {args.scenario}, seed {args.seed}, frame {index} "
          f"(t = {index / source.config.fps:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
