"""How right is the analysis? Every simulated scenario, scored against the exact truth.

    .venv/bin/python bench/accuracy.py [--draws 4] [--seed 0] [--size 256] [--realistic]
                                       [--pixel-size NM] [--scenarios ...] [--pipeline]
                                       [--set KEY=VALUE ...]
                                       [--json bench/results/accuracy_draws.json]
    .venv/bin/python bench/accuracy.py --fixed [--seeds 0 1] [--size 512] ...

**Random draws (default).** An analysis scored on the simulator it was tuned on learns
that simulator's constants. Each draw takes every physical parameter from its range
(:func:`lithoscope.service.sources.sim_draws.draw_sim_config`: dose 1-20 e/A^2/s,
coating 0-50 nm, tip radius, taper, needle from any edge with a grid bar opposite,
particle contrast from near-black to faint, 3-D clumps overlapping in projection, hot,
saturated and dead pixels, drift, stage jumps, flicker), seeded so that a run is
reproducible; every scenario runs on the same draws. The table gives, per scenario,
the median over the draws and the worst draw: contact and onset latencies (detection
frame minus true time), contact lost and contraction onset latencies, missed alerts,
early onsets (dated before their cause), false expansion/contraction alerts, the
median and worst relative error of A/A0 (reference: the frame before the true contact)
and the share of frames whose contact state is right. Frames go through
``SessionAnalyzer`` in this process (the same code the worker runs);
``--pipeline`` sends them through publisher, ZeroMQ, worker and archive instead.
At 256x256 px a draw takes a few seconds per scenario; ``--draws`` sets how many.

**Real-looking crystals (``--realistic``).** The same draws with the simulator's
``crystal`` look, its physics drawn too (``CRYSTAL_RANGES``: each crystal's own darkness
from faint to near-black, moving bend contours and thickness fringes, facets, amorphous
shells, a textured support, separate and edge-cut particles), on the needle scenarios and
on ``no_needle`` (the first minutes of a session: no needle in view, nothing may be
alerted and contact must never be reported).

``--set KEY=VALUE`` imposes a simulator value on every draw, to take one drawn effect
out of a run (``--set drift_px_per_frame=0``).

**Fixed (``--fixed``).** Each disc-look scenario (bias lithiation, control without
bias, chemical lithiation on contact, heavy drift, low dose) is rendered
with realistic imaging (Fresnel fringes, hot pixels, a shrinking crystalline core, a
grid bar, slow drift, flicker) and sent through ``run_local_session``: publisher ->
ZeroMQ on loopback -> worker (archive + ``SessionAnalyzer``) -> zarr archive. The
archive's cluster, particle and event tables are then scored against the simulator's
exact truth:

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

from lithoscope.service.analysis import AnalysisConfig, SessionAnalyzer
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources.base import SourceFrame
from lithoscope.service.sources.sim import SCENARIOS, SimConfig, SimulatedSource
from lithoscope.service.sources.sim_draws import draw_sim_config

DISC_SCENARIOS = [name for name, scenario in SCENARIOS.items()
                  if "particle_look" not in dict(scenario.overrides)]
"""The scenarios run by default: those that keep the caller's particle look."""
REALISTIC_SCENARIOS = ["lithiation", "control", "chemical", "no_needle"]
"""The scenarios run with ``--realistic`` (crystal look drawn from its ranges)."""

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


def score_events(source: SimulatedSource, events: list[dict[str, Any]], *,
                 missed: bool) -> dict[str, Any]:
    """Alert latencies (detection frame minus true time), with ``missed`` a
    ``<kind>_missed`` flag each; expansion onsets before their cause; false onsets."""
    c = source.config
    fps = c.fps
    true_events = dict(source.truth_events())
    out: dict[str, Any] = {}
    cause_s = (c.contact_s if source.scenario.chemical or not source.scenario.bias_applied
               else c.bias_on_s)
    for kind in ("contact_made", "expansion_onset", "contact_lost", "contraction_onset"):
        found = [e for e in events if e["kind"] == kind]
        out[f"{kind}_latency_s"] = math.nan
        if kind in true_events and found:
            out[f"{kind}_latency_s"] = round(found[0]["frame"] / fps - true_events[kind], 2)
        if missed:
            out[f"{kind}_missed"] = int(kind in true_events and not found)
    onsets = [e for e in events if e["kind"] == "expansion_onset"]
    out["early_expansion_alerts"] = sum(e["t_s"] < cause_s for e in onsets)
    false = 0
    for kind in ("expansion_onset", "contraction_onset"):
        count = sum(e["kind"] == kind for e in events)
        false += max(0, count - (1 if kind in true_events else 0))
    out["false_alerts"] = false
    out["alerts"] = [f"{e['kind']}@{e['frame'] / fps:.1f}" for e in events]
    return out


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
    out.update(score_events(source, events, missed=False))

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


# ----------------------------------------------------------------------------- draws

DRAW_TIMING = {"fps": 4.0, "duration_s": 75.0, "contact_s": 10.0, "bias_on_s": 15.0,
               "withdraw_s": 45.0, "approach_distance_nm": 30.0}
"""The experiment's timing in random-draw mode: shorter than the default movie (300
frames), so that many draws fit in minutes; the physics is drawn, the timing is not."""

DRAW_TARGETS = {"expansion_onset": (0.0, 2.0), "contact_lost": (None, 1.0),
                "contraction_onset": (None, 10.0), "area_ratio_median_error": 0.02,
                "contact_right": 0.98}


def run_draw(scenario: str, seed: int, size: int, pixel_size_nm: float,
             pipeline: bool, look: str = "disc",
             imposed: dict[str, Any] | None = None,
             analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """One random draw of the physics through the analysis, scored; ``imposed``
    SimConfig values replace the drawn ones (to take one effect out); ``analysis``
    AnalysisConfig values replace the defaults (in process only)."""
    config = draw_sim_config(seed, shape=(size, size), pixel_size_nm=pixel_size_nm,
                             look=look, **{**DRAW_TIMING, **(imposed or {})})
    source = SimulatedSource(config, scenario=scenario)
    truth: dict[int, dict[str, Any]] = {}
    start = time.perf_counter()
    if pipeline:
        def keep(frame: SourceFrame) -> None:
            assert frame.truth is not None
            truth[frame.index] = frame.truth

        with tempfile.TemporaryDirectory(prefix="lithoscope-accuracy-") as tmp:
            report = run_local_session(source, speed=None, live=False,
                                       archive_path=Path(tmp) / "a.zarr", on_frame=keep)
            if report.closed is None or report.closed.frames_analysed != len(source):
                raise SystemExit(f"{scenario}/{seed}: not every frame analysed")
            reader = ArchiveReader(Path(tmp) / "a.zarr")
            cluster = reader.table("cluster")
            events = reader.events()
    else:
        analyzer = SessionAnalyzer(AnalysisConfig(**(analysis or {})))
        rows: dict[str, list[Any]] = {"frame": [], "area_px": [], "needle_contact": []}
        events = []
        for frame in source:
            assert frame.truth is not None
            truth[frame.index] = frame.truth
            values, _, alerts = analyzer.update(frame.image, t_s=frame.t_s, index=frame.index,
                                                pixel_size_nm=pixel_size_nm)
            rows["frame"].append(frame.index)
            rows["area_px"].append(values["area_px"])
            rows["needle_contact"].append(values["needle_contact"])
            events += [{"kind": a.kind.value, "frame": a.frame, "t_s": a.t_s} for a in alerts]
        cluster = {name: np.asarray(values) for name, values in rows.items()}
    wall_s = time.perf_counter() - start
    return score_draw(source, truth, cluster, events, wall_s)


def score_draw(source: SimulatedSource, truth: dict[int, dict[str, Any]],
               cluster: dict[str, np.ndarray], events: list[dict[str, Any]],
               wall_s: float) -> dict[str, Any]:
    """Latencies, false alerts, A/A0 error and contact state of one draw."""
    c = source.config
    fps = c.fps
    order = np.argsort(cluster["frame"])
    frames = cluster["frame"][order].astype(int)
    measured = cluster["area_px"][order].astype(float)
    contact = cluster["needle_contact"][order].astype(bool)
    true_area = np.array([truth[i]["cluster_area_px"] for i in frames], float)
    true_contact = np.array([truth[i]["needle_contact"] for i in frames], bool)
    out: dict[str, Any] = {"frames": int(frames.size), "wall_s": round(wall_s, 1)}
    out.update(score_events(source, events, missed=True))
    reference = max(int(np.searchsorted(frames, round(c.contact_s * fps))) - 1, 0)
    ratio_error = (measured / measured[reference]) / (true_area / true_area[reference]) - 1.0
    out["area_ratio_median_error"] = float(np.median(np.abs(ratio_error)))
    out["area_ratio_worst_error"] = float(np.max(np.abs(ratio_error)))
    out["contact_right"] = float(np.mean(contact == true_contact))
    out["physics"] = {
        "dose_rate_e_per_a2_s": round(c.dose_rate_e_per_a2_s, 2),
        "needle_edge": c.needle_edge, "needle_tip_radius_nm": round(c.needle_tip_radius_nm, 1),
        "needle_layer_nm": round(c.needle_layer_nm, 1), "grid_bar": c.grid_bar,
        "particle_centre_transmission": round(c.particle_centre_transmission, 2),
        "particle_overlap": round(c.particle_overlap, 2),
        "drift_px_per_frame": round(c.drift_px_per_frame, 2),
        "hot_pixels_saturate": c.hot_pixels_saturate}
    return out


DRAW_COLUMNS = [
    # key, title, format, worst: "max" (largest is worst), "min", "abs" (farthest from 0)
    ("contact_made_latency_s", "contact", "{:+.2f}", "abs"),
    ("expansion_onset_latency_s", "onset", "{:+.2f}", "abs"),
    ("contact_lost_latency_s", "lost", "{:+.2f}", "abs"),
    ("contraction_onset_latency_s", "contract", "{:+.2f}", "abs"),
    ("missed", "missed", "{:d}", "sum"),
    ("early_expansion_alerts", "early", "{:d}", "sum"),
    ("false_alerts", "false", "{:d}", "sum"),
    ("area_ratio_median_error", "A/A0 med", "{:.2%}", "max"),
    ("area_ratio_worst_error", "A/A0 max", "{:.2%}", "max"),
    ("contact_right", "contact ok", "{:.1%}", "min"),
]


def summarise(runs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Median and worst cells of one scenario's draws (counts: total)."""
    median_cells, worst_cells = [], []
    for key, _, fmt, worst in DRAW_COLUMNS:
        if key == "missed":
            values = np.array([sum(v for k, v in r.items() if k.endswith("_missed"))
                               for r in runs], float)
        else:
            values = np.array([r[key] for r in runs], float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            median_cells.append("-")
            worst_cells.append("-")
            continue
        if worst == "sum":
            median_cells.append(fmt.format(int(np.median(finite))))
            worst_cells.append(fmt.format(int(finite.sum())))
            continue
        median = float(np.median(finite))
        if worst == "abs":
            pick = float(finite[np.argmax(np.abs(finite))])
        else:
            pick = float(finite.max() if worst == "max" else finite.min())
        median_cells.append(fmt.format(median))
        worst_cells.append(fmt.format(pick))
    return median_cells, worst_cells


def main_draws(args: argparse.Namespace) -> int:
    size = args.size
    pixel_size = args.pixel_size if args.pixel_size else 0.5 * 512 / size
    seeds = [args.seed + k for k in range(args.draws)]
    look = "crystal" if args.realistic else "disc"
    print(f"{args.draws} random draws per scenario (seeds {seeds[0]}..{seeds[-1]}), "
          + (f"imposed {args.set}, " if args.set else "")
          + (f"analysis {args.analysis}, " if args.analysis else "")
          + f"{look} look, {size}x{size} px at {pixel_size:g} nm/px, {DRAW_TIMING['fps']:g} fps, "
          f"{round(DRAW_TIMING['duration_s'] * DRAW_TIMING['fps'])} frames each", flush=True)
    header = f"{'scenario':<12}{'':>7}" + "".join(f"{t:>11}" for _, t, _, _ in DRAW_COLUMNS)
    print(header, flush=True)
    results = []
    for scenario in args.scenarios:
        runs = []
        for seed in seeds:
            row = {"scenario": scenario, "seed": seed,
                   **run_draw(scenario, seed, size, pixel_size, args.pipeline, look,
                              args.set, args.analysis)}
            runs.append(row)
            if args.verbose:
                print(f"  {scenario} seed {seed}: " + ", ".join(
                    f"{k}={row[k]}" for k, *_ in DRAW_COLUMNS if k in row)
                    + f" alerts={row['alerts']} physics={row['physics']}", flush=True)
        results += runs
        median, worst = summarise(runs)
        print(f"{scenario:<12}{'median':>7}" + "".join(f"{c:>11}" for c in median))
        print(f"{'':<12}{'worst':>7}" + "".join(f"{c:>11}" for c in worst), flush=True)
    print("targets: expansion onset 0..+2 s after truth (never early); contact lost <= +1 s; "
          "contraction onset <= +10 s; no missed or false alert (none in the control); "
          "A/A0 median error <= 2 %; contact state right in >= 98 % of frames. "
          "worst: the draw farthest from target (missed, early, false: totals)",
          file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": size, "pixel_size_nm": pixel_size,
                                         "look": look, "imposed": args.set,
                                         "analysis": args.analysis,
                                         "draws": args.draws, "seed": args.seed,
                                         "timing": DRAW_TIMING, "runs": results},
                                        indent=2, default=float))
    return 0


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"Expected KEY=VALUE. Got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixed", action="store_true",
                        help="one fixed set of imaging conditions per seed (the old bench)")
    parser.add_argument("--draws", type=int, default=4,
                        help="random draws of the physics per scenario (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="first draw's seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="seeds of --fixed")
    parser.add_argument("--size", type=int, default=None,
                        help="square frame size, px (default 256 for draws, 512 --fixed)")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="nm/px (default: the field of 512 px at 0.5 nm/px)")
    parser.add_argument("--pipeline", action="store_true",
                        help="draws through publisher, ZeroMQ, worker and archive")
    parser.add_argument("--verbose", action="store_true", help="one line per draw")
    parser.add_argument("--realistic", action="store_true",
                        help="draws of real-looking crystals (the simulator's crystal look)")
    parser.add_argument("--scenarios", nargs="+", default=None, choices=list(SCENARIOS),
                        help="default: the disc-look scenarios; with --realistic "
                        f"{', '.join(REALISTIC_SCENARIOS)}")
    parser.add_argument("--set", type=_setting, action="append", default=[],
                        metavar="KEY=VALUE", help="impose a SimConfig value on every draw "
                        "(JSON value; repeatable), e.g. drift_px_per_frame=0")
    parser.add_argument("--analysis", type=_setting, action="append", default=[],
                        metavar="KEY=VALUE", help="an AnalysisConfig value instead of its "
                        "default (JSON value; repeatable; not with --pipeline), e.g. "
                        "max_analysis_pixel_nm=2")
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    args.set = dict(args.set)
    args.analysis = dict(args.analysis)
    if args.analysis and (args.pipeline or args.fixed):
        parser.error("Expected --analysis with in-process random draws, not with "
                     "--pipeline or --fixed.")
    if args.draws < 1:
        parser.error(f"Expected --draws >= 1. Got {args.draws}.")
    if args.fixed and args.realistic:
        parser.error("Expected --realistic with random draws, not with --fixed.")
    if args.fixed and args.set:
        parser.error("Expected --set with random draws, not with --fixed.")
    if args.scenarios is None:
        args.scenarios = REALISTIC_SCENARIOS if args.realistic else DISC_SCENARIOS
    if not args.fixed:
        args.size = args.size or 256
        return main_draws(args)
    args.size = args.size or 512

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
