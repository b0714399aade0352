"""The movies of bench/accuracy.py: its imaging conditions, its ID switches."""

from __future__ import annotations

from typing import Any

import numpy as np

from lithoscope.service.analysis import SessionAnalyzer
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

REALISTIC: dict[str, Any] = {"fresnel_fringe": 0.2, "hot_pixel_fraction": 1e-4,
                             "core_contrast": 0.2, "grid_bar": True,
                             "drift_px_per_frame": 0.3, "flicker": 0.02}
"""The imaging conditions of bench/accuracy.py."""


def id_switches(scenario: str, *, seed: int, size: int, frames: range) -> list[str]:
    """Analyse ``frames`` of a benchmark movie (``size``² at 0.5 nm/px for 512²) with a
    fresh SessionAnalyzer; the ID switches, as ``"frame k: particle i, id a -> b"``.

    A switch as bench/accuracy.py counts it: a particle that stays in view (at least
    half its pristine area visible) is found (a detection within a quarter of its
    radius of its visible centroid and within 25 % of its visible area) with a track
    id other than the one it had when last found.
    """
    pixel_size_nm = 0.5 * 512 / size
    source = SimulatedSource(SimConfig(shape=(size, size), pixel_size_nm=pixel_size_nm,
                                       seed=seed, **REALISTIC), scenario=scenario)
    radius0 = np.sqrt(np.array(source.render(0).truth["particle_area_px"]) / np.pi)
    analyzer = SessionAnalyzer()
    last: dict[int, int] = {}
    switches = []
    for index in frames:
        frame = source.render(index)
        truth = frame.truth
        assert truth is not None
        _, particles, _ = analyzer.update(frame.image, t_s=frame.t_s, index=index,
                                          pixel_size_nm=pixel_size_nm)
        if not particles["track_id"].size:
            continue
        for k, (row, col) in enumerate(zip(truth["particle_visible_centroid_row"],
                                           truth["particle_visible_centroid_col"], strict=True)):
            visible = truth["particle_visible_area_px"][k]
            if visible < 0.5 * np.pi * radius0[k] ** 2:
                continue
            distance = np.hypot(particles["centroid_row"] - row, particles["centroid_col"] - col)
            nearest = int(np.argmin(distance))
            if (distance[nearest] > 0.25 * radius0[k]
                    or abs(particles["area_px"][nearest] / visible - 1.0) > 0.25):
                continue
            track = int(particles["track_id"][nearest])
            if k in last and last[k] != track:
                switches.append(f"frame {index}: particle {k}, id {last[k]} -> {track}")
            last[k] = track
    return switches
