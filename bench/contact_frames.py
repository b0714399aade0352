"""Per-frame needle contact against the truth on one random draw of the physics.

    .venv/bin/python bench/contact_frames.py [--seed 2] [--look crystal]
        [--scenario lithiation] [--every 4]

Analyses every ``--every``-th frame of the draw that ``bench/accuracy.py`` runs as
``--seed N --draws 1`` (same timing, 256x256 px at 1 nm/px), each on its own
(``analyze_frame``, no session), and prints how many frames' contact state is wrong
and at which times (``t:found``). It shows where contact is lost or found early
without the debouncing and alerts of a session, e.g. a lithiated shell pressed on the
coating (docs/analysis.md, real-looking crystals).
"""

from __future__ import annotations

import argparse

from lithoscope.service.analysis import analyze_frame
from lithoscope.service.sources.sim import SimulatedSource
from lithoscope.service.sources.sim_draws import draw_sim_config

DRAW_TIMING = {"fps": 4.0, "duration_s": 75.0, "contact_s": 10.0, "bias_on_s": 15.0,
               "withdraw_s": 45.0, "approach_distance_nm": 30.0}
"""The timing of ``bench/accuracy.py``'s random draws."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--look", choices=("disc", "crystal"), default="crystal")
    parser.add_argument("--scenario", default="lithiation")
    parser.add_argument("--every", type=int, default=4, help="analyse every n-th frame")
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be at least 1, got {args.every}")
    config = draw_sim_config(args.seed, shape=(256, 256), pixel_size_nm=1.0, look=args.look,
                             **DRAW_TIMING)
    source = SimulatedSource(config, scenario=args.scenario)
    wrong: list[str] = []
    frames = range(0, len(source), args.every)
    for k in frames:
        frame = source.render(k)
        assert frame.truth is not None
        found = bool(analyze_frame(frame.image, pixel_size_nm=1.0).cluster["needle_contact"])
        if found != bool(frame.truth["needle_contact"]):
            wrong.append(f"{frame.t_s:.2f}:{int(found)}")
    print(f"{args.look} {args.scenario} seed {args.seed}: contact wrong in "
          f"{len(wrong)}/{len(frames)} frames", " ".join(wrong))


if __name__ == "__main__":
    main()
