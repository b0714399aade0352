"""Simulated experiments drawn at random from physical ranges, not from one parameter set.

One simulated movie has one value of every physical constant (coating thickness, tip
shape, particle contrast, camera defects); a real session may have any other.
:func:`draw_sim_config` draws each physical assumption of
:class:`~lithoscope.service.sources.sim.SimConfig` from the range a real operando session
can show (:data:`PHYSICAL_RANGES`; with the crystal look also :data:`CRYSTAL_RANGES`), so
that a benchmark over many draws scores the analysis on what it measures from the image
rather than on what it was told. Every effect stays exact in the simulator's truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from lithoscope.service.errors import ConfigError

from .sim import SCENARIOS, SimConfig, SimulatedSource

__all__ = ["CRYSTAL_RANGES", "PHYSICAL_RANGES", "draw_sim_config"]

PHYSICAL_RANGES: Mapping[str, tuple[float, float]] = {
    "dose_rate_e_per_a2_s": (1.0, 20.0),
    "flicker": (0.0, 0.05),
    "illumination_gradient": (0.0, 0.3),
    "fresnel_fringe": (0.0, 0.3),
    "hot_pixel_fraction": (0.0, 2e-4),
    "dead_pixel_fraction": (0.0, 1e-4),
    "drift_px_per_frame": (0.0, 1.0),
    "stage_jumps": (0, 2),
    "stage_jump_nm": (1.0, 4.0),
    "particle_count": (5, 10),
    "particle_diameter_low_nm": (20.0, 35.0),
    "particle_diameter_spread_nm": (5.0, 25.0),
    "particle_centre_transmission": (0.15, 0.65),
    "particle_rim_excess": (0.08, 0.2),
    "particle_overlap": (0.6, 0.95),
    "core_contrast": (0.0, 0.25),
    "needle_angle_deg": (-25.0, 25.0),
    "needle_tip_radius_nm": (5.0, 60.0),  # at most 7.3 % of the field (see _TIP_SHARE)
    "needle_taper_deg": (4.0, 20.0),
    "needle_transmission": (0.0, 0.12),
    "needle_layer_nm": (0.0, 50.0),
    "needle_layer_length_tip_radii": (2.0, 8.0),
    "layer_transmission": (0.55, 0.85),
    "grid_transmission": (0.0, 0.08),
}
"""The range each physical parameter is drawn from (uniformly; counts as integers,
both ends included). ``particle_rim_excess``: how much lighter a particle's rim is
than its centre; ``stage_jump_nm``: length of a stage jump; ``particle_overlap``: the
neighbours' centre distance over the sum of their radii (below 1 they overlap in
projection, a 3-D clump), with non-neighbours allowed 0.15 closer;
``needle_layer_length_tip_radii``: how far back the LiOx layer covers the needle.
The needle enters from any edge and a grid bar (in 3 draws of 4) runs along the
opposite one, so a bar lies along every edge in some draws (a bar beside the needle's
path puts the needle along or behind it, which a microscopist avoids); a third of the
draws have saturated hot pixels."""

CRYSTAL_RANGES: Mapping[str, tuple[float, float]] = {
    "crystal_darkness_low": (0.1, 0.5),
    "crystal_darkness_spread": (0.1, 0.35),
    "bend_contour_darkness": (0.1, 0.35),
    "bend_contour_speed_nm_per_s": (0.0, 10.0),
    "fringe_amplitude": (0.0, 0.08),
    "faceted_fraction": (0.2, 0.8),
    "shell_fraction": (0.0, 0.5),
    "support_texture": (0.01, 0.06),
    "separate_particle_count": (0, 6),
    "edge_particle_count": (0, 3),
}
"""The ranges of the ``crystal`` look (``look="crystal"``): each crystal's darkness is
drawn between ``crystal_darkness_low`` and that plus ``crystal_darkness_spread``, from
faint to near-black with its bend contour; no more edge-cut particles than separate
ones. Drawn from their own random stream, so a seed's other physics is the same with
either look."""

_TIP_SHARE = 0.073
"""The widest tip's radius as a share of the field of view (60 nm of 820 nm)."""
_NEEDLE_IN_VIEW = 2.5
"""The needle's apex is at least this many coated tip radii into the frame at the
start: a tip barely in view is a dark half-disc in a grey band, which no analysis can
tell from a cut particle with a shell (a field too small for the coating and the
approach)."""
_TRIES = 32
"""Draws of the cluster's size before giving up (a big cluster may not fit)."""


def draw_sim_config(seed: int, *, shape: tuple[int, int] = (512, 512),
                    pixel_size_nm: float = 0.5, look: str = "disc",
                    **fixed: Any) -> SimConfig:
    """A :class:`SimConfig` whose physics is drawn from :data:`PHYSICAL_RANGES`.

    Parameters
    ----------
    seed : int
        Seed of the draw (and of the simulator): the same seed gives the same config.
    shape, pixel_size_nm
        The camera: frame size and pixel size.
    look : str
        ``disc`` or ``crystal`` (:attr:`SimConfig.particle_look`); with ``crystal`` the
        crystals' physics is drawn from :data:`CRYSTAL_RANGES` too.
    **fixed
        Any other :class:`SimConfig` values to impose (timing, for instance); they
        override the draw.

    Raises
    ------
    ConfigError
        If no drawn cluster fits in the frame (a frame far too small for 20 nm
        particles), or ``fixed`` holds an unknown or invalid option.
    """
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(fixed) - known)
    if unknown:
        raise ConfigError(f"Unknown simulator option {unknown[0]!r}. Expected one of "
                          f"{', '.join(sorted(known))}.")
    if look not in ("disc", "crystal"):
        raise ConfigError(f"Expected look 'disc' or 'crystal'. Got {look!r}.")
    rng = np.random.default_rng([seed, 0x5EED])
    crystal = _draw_crystal(np.random.default_rng([seed, 0xC7])) if look == "crystal" else {}
    error: ConfigError | None = None
    for attempt in range(_TRIES):
        values = _draw(rng, attempt, shape, pixel_size_nm)
        values.update(crystal)
        values.update(shape=tuple(shape), pixel_size_nm=float(pixel_size_nm), seed=int(seed))
        values["stage_jump_px"] = values.pop("stage_jump_nm") / pixel_size_nm
        values.update(fixed)
        try:
            config = SimConfig.from_dict(values)
            # The scene checks the fit (cluster, grid bar) for every scenario alike.
            source = SimulatedSource(dataclasses.replace(config, duration_s=1.0 / config.fps),
                                     scenario=next(iter(SCENARIOS)))
        except ConfigError as exc:
            error = exc
            continue
        if _needle_in_view(source) < _NEEDLE_IN_VIEW * (
                config.needle_tip_radius_nm + config.needle_layer_nm) / pixel_size_nm:
            error = ConfigError("the needle's coated tip is not in view")
            continue
        return config
    raise ConfigError(f"No drawn simulation fits a {shape} frame at {pixel_size_nm} nm/px: "
                      f"{error}")


def _needle_in_view(source: SimulatedSource) -> float:
    """How far (px) the needle's apex reaches into the frame at the start, from its edge."""
    rows, cols = source.config.shape
    tip = source.render(0).metadata
    row, col = float(tip["needle_tip_row"]), float(tip["needle_tip_col"])
    return {"left": col, "right": cols - col, "top": row,
            "bottom": rows - row}[source.config.needle_edge]


def _uniform(rng: np.random.Generator, name: str) -> float:
    low, high = PHYSICAL_RANGES[name]
    return float(rng.uniform(low, high))


def _integer(rng: np.random.Generator, name: str) -> int:
    low, high = PHYSICAL_RANGES[name]
    return int(rng.integers(int(low), int(high) + 1))


def _draw(rng: np.random.Generator, attempt: int, shape: tuple[int, int],
          pixel_size_nm: float) -> dict[str, Any]:
    edges = ("left", "right", "top", "bottom")
    needle_edge = edges[int(rng.integers(4))]
    grid_bar = bool(rng.random() < 0.75)
    centre = _uniform(rng, "particle_centre_transmission")
    overlap = _uniform(rng, "particle_overlap")
    low = _uniform(rng, "particle_diameter_low_nm")
    # Later attempts shrink the cluster until it fits.
    count = max(3, _integer(rng, "particle_count") - attempt // 4)
    # A tip is a few percent of a real field across (60 nm in 820 nm): in a smaller
    # simulated field it is kept to that share, or the needle is a blob in the corner.
    low_tip, high_tip = PHYSICAL_RANGES["needle_tip_radius_nm"]
    field_nm = min(shape) * pixel_size_nm
    tip_radius = float(rng.uniform(low_tip, max(low_tip, min(high_tip, _TIP_SHARE * field_nm))))
    values: dict[str, Any] = {
        name: _uniform(rng, name) for name in (
            "dose_rate_e_per_a2_s", "flicker", "illumination_gradient", "fresnel_fringe",
            "hot_pixel_fraction", "dead_pixel_fraction", "drift_px_per_frame",
            "core_contrast", "needle_angle_deg", "needle_taper_deg", "needle_transmission",
            "needle_layer_nm", "layer_transmission", "grid_transmission", "stage_jump_nm")
    }
    values.update(
        hot_pixels_saturate=bool(rng.random() < 1 / 3),
        stage_jumps=_integer(rng, "stage_jumps"),
        particle_count=count,
        particle_diameter_nm=(low, low + _uniform(rng, "particle_diameter_spread_nm")),
        particle_centre_transmission=centre,
        particle_edge_transmission=min(centre + _uniform(rng, "particle_rim_excess"), 0.85),
        particle_overlap=overlap,
        min_particle_separation=max(0.3, overlap - 0.15),
        overlap_darkening=True,
        needle_edge=needle_edge,
        needle_tip_radius_nm=tip_radius,
        needle_layer_length_nm=tip_radius * _uniform(rng, "needle_layer_length_tip_radii"),
        grid_bar=grid_bar,
    )
    return values


def _draw_crystal(rng: np.random.Generator) -> dict[str, Any]:
    low, high = CRYSTAL_RANGES["crystal_darkness_low"]
    dark_low = float(rng.uniform(low, high))
    low, high = CRYSTAL_RANGES["crystal_darkness_spread"]
    dark_high = min(0.85, dark_low + float(rng.uniform(low, high)))
    values: dict[str, Any] = {
        name: float(rng.uniform(*CRYSTAL_RANGES[name])) for name in (
            "bend_contour_darkness", "bend_contour_speed_nm_per_s", "fringe_amplitude",
            "faceted_fraction", "shell_fraction", "support_texture")}
    low, high = CRYSTAL_RANGES["separate_particle_count"]
    separate = int(rng.integers(int(low), int(high) + 1))
    low, high = CRYSTAL_RANGES["edge_particle_count"]
    edge = int(rng.integers(int(low), int(high) + 1))
    values.update(particle_look="crystal", crystal_darkness=(dark_low, dark_high),
                  separate_particle_count=separate, edge_particle_count=min(edge, separate))
    return values
