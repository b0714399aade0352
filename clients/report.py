"""A session report from an archive: the figures a paper shows, a montage, a summary.

``make_report(archive, out_dir)`` writes into ``out_dir``::

    cluster_area.png     cluster area vs time, needle contact shaded, events marked
    particle_areas.png   area of the highlighted particles vs time, events marked
    rates.png            expansion / contraction rate and apparent diffusion
                         coefficient per highlighted particle
    montage.png          the frame at each event, the analysis' outlines and track ids
    summary.md           the session, its events and the per-particle numbers, tying
                         the figures together

Particles are followed by ``track_id`` when the archive has it (the service's
tracker), otherwise linked here by nearest centroid. The montage draws the archive's
own label images (``labels/``: what the service saw, ids by track; OpenCV is imported
only here); nothing is segmented again. An event frame the service did not analyse,
or an archive recorded before labels were archived, is shown without outlines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lithoscope.service import physics
from lithoscope.service.errors import ArchiveError, ConfigError

from ._linking import CentroidLinker
from .plots import draw_cluster, draw_particles, mark_events, running_median, save_figure

__all__ = ["ParticleRates", "ReportFiles", "apparent_diffusion_cm2_per_s", "make_report"]

Progress = Callable[[int, int, str], None]
"""``(done, total, what)``: called as each step of the report starts."""


@dataclass(frozen=True)
class ParticleRates:
    """What one highlighted particle did, from its area curve."""

    particle: int
    area_start: float
    area_max: float
    area_end: float
    expansion_rate: float | None
    """Area per second while lithiating (Theil-Sen slope)."""
    contraction_rate: float | None
    """Area per second after contraction began (Theil-Sen slope)."""
    diffusion_cm2_per_s: float | None
    """Apparent diffusion coefficient from the relaxation time of the swelling."""
    lithium_x: float | None
    """Largest x in LixSi: the service's value if archived, else from the area."""


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    summary: Path
    figures: dict[str, Path] = field(default_factory=dict)
    rates: list[ParticleRates] = field(default_factory=list)


def _slope(t: np.ndarray, y: np.ndarray) -> float | None:
    value = physics.theil_sen_slope(t, y) if t.size >= 3 else math.nan
    return value if math.isfinite(value) else None


def apparent_diffusion_cm2_per_s(t_s: np.ndarray, area_nm2: np.ndarray) -> float | None:
    """D from the swelling of one particle, as ``lithoscope.service.physics`` defines it.

    The approach of the area to its final value is fitted as an exponential
    (Kezdy-Swinbourne, lag a sixth of the phase) and read as the slowest mode of
    diffusion into a sphere of the particle's initial equivalent radius:
    ``D = r0^2 / (pi^2 tau)``.

    References
    ----------
    J. Crank, *The Mathematics of Diffusion*, 2nd ed., Oxford (1975), section 6.3.
    """
    if t_s.size < 6:
        return None
    tau = physics.relaxation_time_s(t_s, area_nm2, lag_s=float(t_s[-1] - t_s[0]) / 6)
    start = float(np.median(area_nm2[: max(3, t_s.size // 20)]))
    value = physics.diffusion_coefficient_cm2_per_s(tau, math.sqrt(max(start, 0.0) / math.pi))
    return value if math.isfinite(value) else None


def _first(events: Sequence[Mapping[str, Any]], kind: str, after: float = -math.inf
           ) -> float | None:
    times = [float(e["t_s"]) for e in events if e["kind"] == kind and e["t_s"] >= after]
    return min(times) if times else None


@dataclass(frozen=True)
class _Phases:
    lithiation_t_s: float | None
    withdrawal_t_s: float | None
    contraction_t_s: float | None


def _phases(events: Sequence[Mapping[str, Any]]) -> _Phases:
    start = _first(events, "expansion_onset")
    if start is None:
        start = _first(events, "contact_made")
    withdrawal = _first(events, "contact_lost", after=start if start is not None else -math.inf)
    contraction = _first(events, "contraction_onset",
                         after=withdrawal if withdrawal is not None else -math.inf)
    return _Phases(start, withdrawal, contraction if contraction is not None else withdrawal)


def _tracks(particles: Mapping[str, np.ndarray], area: np.ndarray, max_step_px: float
            ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], bool]:
    """id -> (t_s, area, row index into the particles table) and whether ids are the
    service's."""
    n = area.size
    if n == 0:
        return {}, False
    frames = particles["frame"]
    if "track_id" in particles:
        ids = np.asarray(particles["track_id"], np.int64)
        by_service = True
    else:
        ids = np.empty(n, np.int64)
        linker = CentroidLinker(max_step_px=max_step_px)
        boundaries = np.flatnonzero(np.diff(frames)) + 1
        for chunk in np.split(np.arange(n), boundaries):
            ids[chunk] = linker.update(particles["centroid_row"][chunk],
                                       particles["centroid_col"][chunk])
        by_service = False
    t = particles["t_s"]
    out = {}
    for pid in np.unique(ids[ids >= 0]):
        rows = np.flatnonzero(ids == pid)
        out[int(pid)] = (t[rows], area[rows], rows)
    return out, by_service


def _rates(tracks: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
           phases: _Phases, particles: Mapping[str, np.ndarray], *, nm: bool
           ) -> list[ParticleRates]:
    li = particles.get("lithium_x")
    out = []
    for pid, (t, a, rows) in tracks.items():
        start = phases.lithiation_t_s if phases.lithiation_t_s is not None else t[0]
        stop = phases.withdrawal_t_s if phases.withdrawal_t_s is not None else t[-1]
        grow = (t >= start) & (t <= stop)
        shrink = t >= phases.contraction_t_s if phases.contraction_t_s is not None else None
        diffusion = apparent_diffusion_cm2_per_s(t[grow], a[grow]) if nm else None
        li_values = None if li is None else np.asarray(li, float)[rows]
        if li_values is not None and np.isfinite(li_values).any():
            li_x: float | None = float(np.nanmax(li_values))
        else:  # the archive predates Li content: the same relation, from the areas
            li_x = _li_from_areas(t, a, start)
        out.append(ParticleRates(
            particle=pid, area_start=float(a[0]), area_max=float(a.max()), area_end=float(a[-1]),
            expansion_rate=_slope(t[grow], a[grow]),
            contraction_rate=None if shrink is None else _slope(t[shrink], a[shrink]),
            diffusion_cm2_per_s=diffusion, lithium_x=li_x))
    return out


_MAX_CREDIBLE_X = 4.4
"""Li22Si5, the most lithium-rich Li-Si phase: beyond it an area ratio is a merged pair."""


def _li_from_areas(t: np.ndarray, a: np.ndarray, lithiation_t_s: float) -> float | None:
    """x in LixSi from the largest area against the area before lithiation; None when
    the particle was not seen before lithiation or the ratio is not physical (two
    particles segmented as one)."""
    before = a[t < lithiation_t_s]
    if before.size < 3:
        return None
    baseline = float(np.median(before))
    ratio = float(running_median(a, 9).max()) / baseline if baseline > 0 else math.nan
    x = float(physics.lithium_content_x(physics.volume_ratio(ratio)))
    return x if math.isfinite(x) and -0.5 <= x <= _MAX_CREDIBLE_X else None


def _highlighted(tracks: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 count: int) -> list[int]:
    """The particles followed through most of the session, in id order.

    Ranking by swelling instead would favour segmentation accidents (two particles
    merged for a frame look like one that doubled).
    """
    longest = sorted(tracks, key=lambda pid: (-tracks[pid][0].size, pid))[:count]
    return sorted(longest)


def _rates_figure(rates: Sequence[ParticleRates], unit: str, label: str) -> Figure:
    fig = Figure(figsize=(9, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    x = np.arange(len(rates))
    names = [f"{label} {r.particle}" for r in rates]

    def values(attr: str) -> np.ndarray:
        return np.array([getattr(r, attr) if getattr(r, attr) is not None else np.nan
                         for r in rates], float)

    top.bar(x - 0.2, values("expansion_rate"), 0.4, label="expansion (lithiation)",
            color="tab:orange")
    top.bar(x + 0.2, values("contraction_rate"), 0.4, label="contraction (after withdrawal)",
            color="tab:purple")
    top.axhline(0, color="black", linewidth=0.8)
    top.set_ylabel(f"rate ({unit}/s)")
    top.set_xticks(x, names)
    top.legend(fontsize="small")
    top.grid(alpha=0.3, axis="y")
    d = values("diffusion_cm2_per_s")
    bottom.bar(x, d, 0.5, color="tab:blue")
    bottom.set_ylabel("apparent D (cm²/s)")
    bottom.set_xticks(x, names)
    bottom.grid(alpha=0.3, axis="y")
    if not np.isfinite(d).any():
        bottom.text(0.5, 0.5, "needs a pixel size and a swelling that levels off",
                    ha="center",
                    va="center", transform=bottom.transAxes)
    return fig


# -- montage -----------------------------------------------------------------------

_TILE_WIDTH = 360


def _operando_figure(t: np.ndarray, area: np.ndarray, unit: str, contact: Any,
                     operando: Mapping[str, np.ndarray],
                     events: Sequence[Mapping[str, Any]]) -> Figure:
    """Area above bias, current, lithium and dose on one time axis: what was done to the
    cell and the sample, under what the particles did (as a current trace is shown
    under the areas of a lithiation at fixed bias)."""
    fig = Figure(figsize=(9, 10), layout="constrained")
    axes = fig.subplots(5, 1, sharex=True)
    draw_cluster(axes[0], t, area, unit=unit, contact=contact, events=events)
    axes[0].set_xlabel("")
    ot = np.asarray(operando["t_s"], float)

    def column(name: str) -> np.ndarray:
        return np.asarray(operando.get(name, np.full(ot.size, np.nan)), float)

    axes[1].plot(ot, column("bias_v"), color="tab:red")
    axes[1].set_ylabel("bias (V)")
    axes[2].plot(ot, 1e9 * column("current_a"), color="tab:blue")
    axes[2].set_ylabel("current (nA)")
    from_charge, visible = column("lithium_from_charge"), column("lithium_visible")
    sigma = column("lithium_visible_sigma")
    axes[3].plot(ot, from_charge, color="black", label="Li from charge passed")
    axes[3].plot(ot, visible, color="tab:orange", label="Li in view (volume)")
    axes[3].fill_between(ot, visible - sigma, visible + sigma, color="tab:orange", alpha=0.2)
    axes[3].set_ylabel("Li atoms")
    axes[3].legend(loc="best", fontsize="small")
    axes[4].plot(ot, column("dose_e_per_a2"), color="tab:purple")
    axes[4].set_ylabel("dose (e/Å²)")
    axes[4].set_xlabel("time (s)")
    for ax in axes[1:]:
        mark_events(ax, events)
        ax.grid(alpha=0.3)
    return fig


def _to_uint8(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1, 99))
    scaled = (image.astype(np.float32) - low) / max(float(high - low), 1e-6)
    out: np.ndarray = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return out


def _tile(image: np.ndarray, labels: Mapping[str, np.ndarray] | None, caption: str
          ) -> np.ndarray:
    import cv2

    from lithoscope.service.analysis import draw_labels, put_text

    rgb = cv2.cvtColor(_to_uint8(image), cv2.COLOR_GRAY2BGR)
    scale = _TILE_WIDTH / rgb.shape[1]
    rgb = cv2.resize(rgb, (_TILE_WIDTH, max(int(round(rgb.shape[0] * scale)), 1)),
                     interpolation=cv2.INTER_AREA)
    if labels is not None:
        size = (rgb.shape[1], rgb.shape[0])
        small = {name: cv2.resize(np.asarray(value, np.float32 if name == "particles"
                                             else np.uint8), size,
                                  interpolation=cv2.INTER_NEAREST)
                 for name, value in labels.items()}
        draw_labels(rgb, {"particles": small["particles"].astype(np.uint32),
                          "needle": small["needle"] > 0, "grid": small["grid"] > 0},
                    text_scale=0.5)
    else:
        caption += "  (no labels)"
    band = np.zeros((24, _TILE_WIDTH, 3), np.uint8)
    put_text(band, caption, (6, 17), 0.45, (255, 255, 255))
    return np.vstack([band, rgb])


def _montage(tiles: Sequence[np.ndarray], columns: int = 3) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    padded += [np.zeros_like(padded[0])] * (-len(padded) % columns)
    rows = [np.hstack(padded[i:i + columns]) for i in range(0, len(padded), columns)]
    return np.vstack(rows)


# -- the report ----------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def make_report(archive: str | Path, out_dir: str | Path, *, on_progress: Progress | None = None,
                highlight: int = 6, max_montage: int = 12) -> ReportFiles:
    """Write the figures, the montage and summary.md for one archived session.

    Raises
    ------
    ArchiveError
        If ``archive`` is not a readable lithoscope archive.
    ConfigError
        If ``out_dir`` cannot be created.
    """
    from lithoscope.service.archive import ArchiveReader

    reader = ArchiveReader(archive)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot create {out}: {exc.strerror or exc}.") from None
    events = reader.events()
    montage_events = [e for e in events if e["frame"] >= 0][:max_montage]
    total = 5 + len(montage_events)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if on_progress is not None:
            on_progress(done, total, what)
        done += 1

    step("reading tables")
    summary = reader.summary()
    cluster = reader.table("cluster")
    particles = reader.table("particles")
    pixel_size = reader.pixel_size_nm
    nm = pixel_size is not None and "area_nm2" in cluster and bool(
        np.isfinite(cluster["area_nm2"]).any())
    unit = "nm²" if nm else "px"
    area_column = "area_nm2" if nm else "area_px"
    t_cluster = cluster.get("t_s", np.zeros(0))
    particle_area = np.asarray(particles.get(area_column, np.zeros(0)), float)
    diameters = particles.get("equivalent_diameter_nm", np.zeros(0))
    typical_px = (float(np.nanmedian(diameters)) / pixel_size
                  if pixel_size and diameters.size and np.isfinite(diameters).any() else 40.0)
    tracks, by_service = _tracks(particles, particle_area, max_step_px=0.5 * typical_px)
    label = "track" if by_service else "particle"
    chosen = _highlighted(tracks, highlight)
    phases = _phases(events)
    rates = [r for r in _rates({pid: tracks[pid] for pid in chosen}, phases, particles, nm=nm)]
    figures: dict[str, Path] = {}

    step("plotting cluster area")
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    draw_cluster(fig.subplots(), t_cluster, np.asarray(cluster.get(area_column, []), float),
                 unit=unit, contact=cluster.get("needle_contact"), events=events)
    figures["cluster_area"] = save_figure(fig, out / "cluster_area.png")

    step("plotting particle areas")
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    draw_particles(fig.subplots(), {pid: tracks[pid][:2] for pid in chosen}, unit=unit,
                   events=events, label=label)
    figures["particle_areas"] = save_figure(fig, out / "particle_areas.png")

    step("plotting rates")
    figures["rates"] = save_figure(_rates_figure(rates, unit, label), out / "rates.png")

    operando = reader.table("operando")
    if operando.get("t_s") is not None and operando["t_s"].size:
        figures["operando"] = save_figure(
            _operando_figure(t_cluster, np.asarray(cluster.get(area_column, []), float), unit,
                             cluster.get("needle_contact"), operando, events),
            out / "operando.png")

    if montage_events:
        import cv2

        from lithoscope.service.archive import read_labels

        positions = {int(i): p for p, i in enumerate(reader.table("frame_table")["index"]
                                                     [: reader.frame_count])}
        tiles = []
        for e in montage_events:
            step(f"montage: frame {e['frame']} ({e['kind']})")
            position = positions.get(int(e["frame"]))
            if position is None:
                continue
            image = reader.frame(position)
            tiles.append(_tile(image, read_labels(reader.group, position),
                               f"t = {e['t_s']:.1f} s  frame {e['frame']}  {e['kind']}"))
        if tiles:
            path = out / "montage.png"
            if not cv2.imwrite(str(path), _montage(tiles)):
                raise ConfigError(f"Cannot write {path}.")
            figures["montage"] = path

    step("writing summary.md")
    summary_path = out / "summary.md"
    summary_path.write_text(_summary_markdown(summary, events, rates, figures, unit=unit,
                                              label=label, phases=phases, by_service=by_service))
    if on_progress is not None:
        on_progress(total, total, "done")
    return ReportFiles(out_dir=out, summary=summary_path, figures=figures, rates=rates)


def _summary_markdown(s: Mapping[str, Any], events: Sequence[Mapping[str, Any]],
                      rates: Sequence[ParticleRates], figures: Mapping[str, Path], *,
                      unit: str, label: str, phases: _Phases, by_service: bool) -> str:
    cluster = s["cluster"]
    areas = [c["area_px"] for c in cluster]
    lines = [
        f"# Session {s['session_id']}",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{s['source']}` |",
        f"| archive | `{s['path']}` ({s['size_bytes'] / 1e6:.1f} MB, {s['status']}) |",
        f"| frames | {s['frames']} archived, {s['frames_analysed']} analysed, "
        f"{s['shape']} {s['dtype']} |",
        f"| duration | {s['duration_s']:.1f} s of experiment time |",
        f"| pixel size | {s['pixel_size_nm'] or 'unknown'} nm |",
        f"| started | {s['started_at']} (lithoscope {s['software_version']}) |",
    ]
    if areas:
        change = 100 * (max(areas) / areas[0] - 1) if areas[0] else float("nan")
        lines.append(f"| cluster area | {areas[0]} px at start, {max(areas)} px at most "
                     f"({change:+.1f} %), {areas[-1]} px at end |")
    for name, t in (("lithiation from", phases.lithiation_t_s),
                    ("needle withdrawn at", phases.withdrawal_t_s),
                    ("contraction from", phases.contraction_t_s)):
        if t is not None:
            lines.append(f"| {name} | t = {t:.1f} s |")
    lines += ["", "## Cluster", "",
              "Total particle area; green shading while the needle touches the cluster, "
              "dashed lines at the events.", "",
              "![cluster area](cluster_area.png)", "",
              "## Particles", "",
              ("Particles followed by the service's tracker (`track_id`)." if by_service else
               "The archive has no tracking ids: particles were linked here by nearest "
               "centroid between frames."),
              "The particles followed through most of the session are shown (raw values faint, "
              "a 9-frame running median bold).", "",
              "![particle areas](particle_areas.png)", "",
              "![rates](rates.png)", "",
              f"| {label} | area at start ({unit}) | max | end | expansion ({unit}/s) | "
              f"contraction ({unit}/s) | apparent D (cm²/s) | Li x |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rates:
        d_cm = r.diffusion_cm2_per_s
        lines.append(f"| {r.particle} | {_fmt(r.area_start, ',.0f')} | {_fmt(r.area_max, ',.0f')} "
                     f"| {_fmt(r.area_end, ',.0f')} | {_fmt(r.expansion_rate, '+.2f')} "
                     f"| {_fmt(r.contraction_rate, '+.2f')} | {_fmt(d_cm, '.2e')} "
                     f"| {_fmt(r.lithium_x, '.2f')} |")
    lines += ["",
              "Rates are Theil-Sen slopes (robust to a mis-segmented frame) of the area "
              "during lithiation (from expansion onset, or contact, to withdrawal) and after "
              "contraction onset. The apparent diffusion coefficient reads the swelling as "
              "diffusion into a sphere: D = r0²/(π² τ), τ from a Kezdy-Swinbourne fit of "
              "the approach to the final area (Crank 1975). Li x is the service's value when "
              "archived, else x = ((A/A0)^1.5 - 1)/0.747 from the largest area against the "
              "area before lithiation (lithoscope.service.physics), left out when the "
              "particle was not seen before or x would pass 4.4 (Li22Si5: two particles "
              "segmented as one).", ""]
    if "operando" in figures:
        lines += ["## Electrochemistry, lithium and dose", "",
                  "The cluster area above the bias, the current, the lithium bookkeeping "
                  "(charge passed as Li atoms against the Li in view from the particles' "
                  "volume, shaded ±1σ of the boundary uncertainty) and the cumulative electron "
                  "dose of the field (docs/analysis.md, operando context).", "",
                  "![operando](operando.png)", ""]
    lines += ["## Events", ""]
    if "montage" in figures:
        lines += ["Each event's frame, with the particle outlines (amber), the needle (blue) "
                  "and the ids used above:", "", "![events](montage.png)", ""]
    if events:
        lines += ["| t (s) | frame | event | message |", "|---:|---:|---|---|"]
        lines += [f"| {e['t_s']:.2f} | {e['frame']} | {e['kind']} | "
                  f"{str(e['message']).replace('|', '/')} |" for e in events]
    else:
        lines.append("No events.")
    return "\n".join(lines) + "\n"


def check_archive(path: str | Path) -> None:
    """Fail early, in one line, for a path that is not an archive (before any work)."""
    if not Path(path).exists():
        raise ArchiveError(f"{path} does not exist.")
