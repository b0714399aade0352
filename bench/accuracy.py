"""How right is the analysis? Every simulated scenario through the real pipeline, scored.

    .venv/bin/python bench/accuracy.py [--seeds 0 1] [--size 512] [--scenarios ...]
                                       [--json bench/results/accuracy.json]

Each scenario (the simulator's ``SCENARIOS``: bias lithiation, control without
bias, chemical lithiation on contact, heavy drift, low dose) is rendered with
realistic imaging (Fresnel fringes, hot pixels, a shrinking crystalline core, a
grid bar, slow drift, flicker) and sent through ``run_local_session``: publisher ->
ZeroMQ on loopback -> worker (archive + ``SessionAnalyzer``) -> zarr archive. The
archive's cluster, particle and event tables are then scored against the
simulator's exact truth:

* latencies (detection time minus true time, s) of ``contact_made``,
  ``expansion_onset``, ``contact_lost``, ``contraction_onset``; "early" counts
  expansion onsets whose change point precedes the bias/contact that causes them;
* false alerts: expansion/contraction alerts beyond one per true event, or any in
  the control;
* cluster area: median and worst relative error of A/A0 (reference: the frame
  before the true contact), and the median error of the area itself;
* particles: count error (median |found - true|, and frames exactly right); ID
  switches: a particle that stays in view is given a different track id from the
  last frame it was found in (found: a detection whose centroid lies within a
  quarter of its radius of the true visible centroid and whose area is within 25 %
  of its visible area; a frame where it is merged with a neighbour is a
  segmentation error, counted in the count columns, not a tracking one);
* D: the cluster's apparent diffusion coefficient at contact loss over the
  simulator's true value.

Targets from issue 3 are printed beside the figures. Runs at --size 512 take about
a minute per scenario and seed on two cores; ``--size 256`` is four times faster.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.session import run_local_session
from lithoscope.service.sources.base import SourceFrame
from lithoscope.service.sources.sim import SCENARIOS, SimConfig, SimulatedSource

REALISTIC = {"fresnel_fringe": 0.2, "hot_pixel_fraction": 1e-4, "core_contrast": 0.2,
             "grid_bar": True, "drift_px_per_frame": 0.3, "flicker": 0.02}
"""Imaging conditions every scenario runs under (scenarios may override some)."""

TARGETS = {"expansion_onset": 2.0, "contact_lost": 1.0, "contraction_onset": 10.0,
           "area_ratio_median_error": 0.02}


def run_one(scenario: str, seed: int, size: int) -> dict[str, Any]:
    pixel_size = 0.5 * 512 / size
    config = SimConfig(shape=(size, size), pixel_size_nm=pixel_size, seed=seed, **REALISTIC)
    source = SimulatedSource(config, scenario=scenario)
    truth: dict[int, dict[str, Any]] = {}

    def keep(frame: SourceFrame) -> None:
        assert frame.truth is not None
        truth[frame.index] = frame.truth

    with tempfile.TemporaryDirectory(prefix="lithoscope-accuracy-") as tmp:
        start = time.perf_counter()
        report = run_local_session(source, speed=None, live=False,
                                   archive_path=Path(tmp) / "a.zarr", on_frame=keep)
        wall_s = time.perf_counter() - start
        if report.closed is None or report.closed.frames_analysed != len(source):
            raise SystemExit(f"{scenario}/{seed}: not every frame analysed: {report.closed}")
        reader = ArchiveReader(Path(tmp) / "a.zarr")
        cluster = reader.table("cluster")
        particles = reader.table("particles")
        events = reader.events()
    return score(source, truth, cluster, particles, events, wall_s)


def score(source: SimulatedSource, truth: dict[int, dict[str, Any]],
          cluster: dict[str, np.ndarray], particles: dict[str, np.ndarray],
          events: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    c = source.config
    fps = c.fps
    true_events = dict(source.truth_events())
    frames = cluster["frame"].astype(int)
    order = np.argsort(frames)
    frames = frames[order]
    measured = cluster["area_px"][order].astype(float)
    true_area = np.array([truth[i]["cluster_area_px"] for i in frames], float)
    out: dict[str, Any] = {"frames": int(frames.size), "wall_s": round(wall_s, 1)}

    # Latencies: detection time (the frame the alert was raised at) minus true time.
    cause_s = (c.contact_s if source.scenario.chemical or not source.scenario.bias_applied
               else c.bias_on_s)
    kinds = ("contact_made", "expansion_onset", "contact_lost", "contraction_onset")
    for kind in kinds:
        found = [e for e in events if e["kind"] == kind]
        out[f"{kind}_latency_s"] = math.nan
        if kind in true_events and found:
            out[f"{kind}_latency_s"] = round(found[0]["frame"] / fps - true_events[kind], 2)
    onsets = [e for e in events if e["kind"] == "expansion_onset"]
    out["early_expansion_alerts"] = sum(e["t_s"] < cause_s for e in onsets)
    false = 0
    for kind in ("expansion_onset", "contraction_onset"):
        count = sum(e["kind"] == kind for e in events)
        false += max(0, count - (1 if kind in true_events else 0))
    out["false_alerts"] = false
    out["alerts"] = [f"{e['kind']}@{e['frame'] / fps:.1f}" for e in events]

    # Cluster area, relative to the frame before the true contact.
    reference = int(np.searchsorted(frames, round(c.contact_s * fps))) - 1
    reference = max(reference, 0)
    ratio_error = (measured / measured[reference]) / (true_area / true_area[reference]) - 1.0
    out["area_ratio_median_error"] = float(np.median(np.abs(ratio_error)))
    out["area_ratio_worst_error"] = float(np.max(np.abs(ratio_error)))
    out["area_median_error"] = float(np.median(np.abs(measured / true_area - 1.0)))

    # Particles: count and identity.
    rows = particles["frame"].astype(int)
    true_count = np.array([sum(a > 0 for a in truth[i]["particle_visible_area_px"])
                           for i in frames])
    found_count = np.bincount(rows, minlength=int(frames.max()) + 1)[frames]
    out["count_error_median"] = float(np.median(np.abs(found_count - true_count)))
    out["count_exact_fraction"] = float(np.mean(found_count == true_count))
    switches = 0
    last: dict[int, int] = {}
    by_frame = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[by_frame], frames)
    ends = np.searchsorted(rows[by_frame], frames, side="right")
    radius0 = np.sqrt(np.array(truth[0]["particle_area_px"]) / np.pi)
    for i, lo, hi in zip(frames, bounds, ends, strict=True):
        pick = by_frame[lo:hi]
        if pick.size == 0:
            continue
        centroids = np.column_stack([particles["centroid_row"][pick],
                                     particles["centroid_col"][pick]])
        ids = particles["track_id"][pick]
        t = truth[i]
        areas = particles["area_px"][pick]
        for k, (row, col) in enumerate(zip(t["particle_visible_centroid_row"],
                                           t["particle_visible_centroid_col"], strict=True)):
            visible = t["particle_visible_area_px"][k]
            if visible < 0.5 * np.pi * radius0[k] ** 2:
                continue  # mostly hidden: not "in view"
            distance = np.hypot(centroids[:, 0] - row, centroids[:, 1] - col)
            nearest = int(np.argmin(distance))
            if (distance[nearest] > 0.25 * radius0[k]
                    or abs(areas[nearest] / visible - 1.0) > 0.25):
                continue
            track = int(ids[nearest])
            if k in last and last[k] != track:
                switches += 1
            last[k] = track
    out["id_switches"] = switches

    # Apparent D at contact loss vs the simulator's.
    d = cluster["diffusion_coefficient_cm2_per_s"][order]
    before_loss = frames < round(c.withdraw_s * fps)
    finite = d[before_loss & np.isfinite(d)]
    estimate = float(finite[-1]) if finite.size else math.nan
    out["diffusion_estimate_cm2_per_s"] = estimate
    out["diffusion_true_cm2_per_s"] = source.diffusion_coefficient_cm2_per_s if (
        "expansion_onset" in true_events) else math.nan
    out["diffusion_ratio"] = estimate / out["diffusion_true_cm2_per_s"]
    return out


COLUMNS = [
    ("contact_made_latency_s", "contact", "{:+.2f}"),
    ("expansion_onset_latency_s", "exp.onset", "{:+.2f}"),
    ("contact_lost_latency_s", "lost", "{:+.2f}"),
    ("contraction_onset_latency_s", "contract", "{:+.2f}"),
    ("early_expansion_alerts", "early", "{:d}"),
    ("false_alerts", "false", "{:d}"),
    ("area_ratio_median_error", "A/A0 med", "{:.2%}"),
    ("area_ratio_worst_error", "A/A0 max", "{:.2%}"),
    ("area_median_error", "A med", "{:.2%}"),
    ("count_error_median", "cnt err", "{:.1f}"),
    ("count_exact_fraction", "cnt ok", "{:.0%}"),
    ("id_switches", "id sw", "{:d}"),
    ("diffusion_ratio", "D/Dtrue", "{:.2f}"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", type=int, default=512, help="square frame size, px")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS),
                        choices=list(SCENARIOS))
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)

    results = []
    header = f"{'scenario':<12}{'seed':>5}" + "".join(f"{title:>10}" for _, title, _ in COLUMNS)
    print(header)
    for scenario in args.scenarios:
        for seed in args.seeds:
            row = {"scenario": scenario, "seed": seed, **run_one(scenario, seed, args.size)}
            results.append(row)
            cells = []
            for key, _, fmt in COLUMNS:
                value = row[key]
                cells.append(f"{'-':>10}" if isinstance(value, float) and math.isnan(value)
                             else f"{fmt.format(value):>10}")
            print(f"{scenario:<12}{seed:>5}" + "".join(cells), flush=True)
    print(f"targets: expansion onset <= +{TARGETS['expansion_onset']:g} s and never early; "
          f"contact lost <= +{TARGETS['contact_lost']:g} s; contraction onset <= "
          f"+{TARGETS['contraction_onset']:g} s; no false alerts; A/A0 median error <= "
          f"{TARGETS['area_ratio_median_error']:.0%}; no ID switches", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": args.size, "seeds": args.seeds,
                                         "imaging": REALISTIC, "runs": results}, indent=2,
                                        default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
