"""A simulated operando lithiation experiment: the twin of a live TEM camera.

The scene is a bright-field TEM movie of a silicon nanoparticle cluster being
lithiated by a tungsten needle:

* bright vacuum with a smooth illumination gradient and a small per-frame
  brightness flicker;
* silicon particles as grey discs (mass-thickness contrast, slightly darker in
  the middle where they are thicker) touching each other in one connected cluster;
* an opaque tungsten needle entering from one edge, its tip coated with a thinner,
  lighter grey LiOx layer (the solid electrolyte). It approaches the cluster,
  touches it at ``contact_s``, a bias is applied at ``bias_on_s``, and it is
  withdrawn at ``withdraw_s``;
* lithiation makes the particles swell: the touched particle first, its
  neighbours later and less (lithium diffuses through the contact network), the
  whole cluster contracting again after the needle is withdrawn;
* Poisson shot noise at the configured electron dose;
* optional imaging defects, each exact in the truth because none of them moves a
  particle boundary: Fresnel fringes at edges (defocus), slow stage drift (the
  specimen, needle and grid move together under a fixed beam), hot pixels, a darker
  crystalline core shrinking inside the lighter lithiated shell, and an opaque
  copper grid bar along the edge opposite the needle, which the cluster hangs from.

Lithium enters through the particle touching the needle once the bias passes
``onset_bias_v`` (or on contact, without bias, in the ``chemical`` scenario), flows
between touching particles down the difference in lithium content, and drains into
particles out of view after the needle is withdrawn.

The geometry and the lithiation state of every frame are computed in closed form
at construction, so frames can be rendered in any order
(:meth:`SimulatedSource.render`), and every frame carries its exact ground truth
(``SourceFrame.truth``). The simulator never sleeps: the publisher paces frames.

The image model is organised so that the physics can grow (particles pushing each
other apart, thickness maps) by replacing :class:`_Scene` or :func:`_render`
without touching the source interface.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lithoscope.service._options import options_from_dict, options_to_dict
from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo

__all__ = ["SCENARIOS", "Scenario", "SimConfig", "SimulatedSource"]


# Image-formation constants. They are not options because the next image model
# (thickness maps, Fresnel fringes) replaces them with physics rather than knobs.
_PSF_SIGMA_PX = 0.8
"""Point-spread function of the microscope plus camera (Gaussian sigma, pixels)."""
_LITHIATED_TRANSMISSION_GAIN = 0.10
"""How much lighter a fully lithiated particle is (LixSi is less dense than Si)."""
_CONTACT_OVERLAP_PX = 1.0
"""While in contact, the layer presses this far into the particle, so they touch."""
_SNAP_GAP_NM = 4.0
"""On withdrawal the needle snaps free: the gap jumps to this before it grows."""
_FRINGE_SIGMA_PX = 1.5
"""Width of the Fresnel fringe (the defocus spread), Gaussian sigma in pixels."""
_HOT_PIXEL_GAIN = (3.0, 12.0)
"""Hot pixels read this many times the vacuum level (uniform range), unless they
saturate (``hot_pixels_saturate``)."""
_SATURATED_COUNTS = 65535
"""What a saturated pixel of the uint16 camera reads."""
_EDGES = ("left", "right", "top", "bottom")
"""Image edges, for the needle and the grid bar."""
_SWELLING_PER_X = 2.8 / 3.75
"""Relative volume increase per Li per Si: Li15Si4 (x = 3.75) is +280 % (Obrovac and
Krause 2007); used only to report the truth's lithium content x."""
_EXACT_POISSON_BELOW = 20.0
"""Pixels expecting fewer electrons than this get exact Poisson draws, the rest the
normal approximation N(lambda, lambda), which costs a seventh of the time."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """What happens in a simulated experiment, beyond the timing in :class:`SimConfig`."""

    name: str
    description: str
    bias_applied: bool
    """Whether the bias is switched on at ``bias_on_s`` (and lithiation happens)."""
    chemical: bool = False
    """Lithiation starts on contact with the needle's lithium, without bias."""
    overrides: tuple[tuple[str, Any], ...] = ()
    """Config values the scenario imposes (imaging conditions), over the caller's."""


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "lithiation",
            "Needle approaches, touches, bias on, particles swell, needle withdrawn, "
            "cluster contracts.",
            bias_applied=True,
        ),
        Scenario(
            "control",
            "Needle approaches, touches and is withdrawn without bias: nothing swells.",
            bias_applied=False,
        ),
        Scenario(
            "chemical",
            "No bias: the needle's fresh lithium lithiates the cluster on contact; "
            "withdrawn, the cluster contracts.",
            bias_applied=False,
            chemical=True,
        ),
        Scenario(
            "heavy_drift",
            "The lithiation scenario under stage drift of up to 3 px/frame.",
            bias_applied=True,
            overrides=(("drift_px_per_frame", 3.0), ("drift_amplitude_nm", 12.0)),
        ),
        Scenario(
            "low_dose",
            "The lithiation scenario at 2 e/A^2/s (noisy frames).",
            bias_applied=True,
            overrides=(("dose_rate_e_per_a2_s", 2.0),),
        ),
    )
}
"""The known scenarios, by name."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Options of the simulated experiment. Lengths in nm, times in s since frame 0."""

    shape: tuple[int, int] = (512, 512)
    """Frame size (rows, cols)."""
    fps: float = 4.0
    """Frames per second; also sets the exposure time (1 / fps)."""
    duration_s: float = 120.0
    """Length of the movie; ``round(duration_s * fps)`` frames."""
    pixel_size_nm: float = 0.5
    """Size of one pixel in the specimen plane."""
    seed: int = 0
    """Seed of every random choice (cluster layout, illumination, noise)."""
    dose_rate_e_per_a2_s: float = 10.0
    """Electron dose rate; with the exposure and pixel area it sets the shot noise."""
    counts_per_electron: float = 4.0
    """Camera gain: counts recorded per incident electron."""
    dark_level_counts: float = 0.0
    """Camera offset added to every pixel (the analysis' ``dark_level_counts``)."""
    illumination_gradient: float = 0.15
    """Peak-to-peak relative variation of the illumination across the field."""
    flicker: float = 0.01
    """Relative standard deviation of the frame-to-frame beam brightness."""
    particle_count: int = 8
    """Number of silicon particles in the cluster."""
    particle_diameter_nm: tuple[float, float] = (25.0, 55.0)
    """Range of pristine particle diameters (drawn uniformly)."""
    needle_edge: str = "left"
    """Image edge the needle enters from: ``left``, ``right``, ``top`` or ``bottom``."""
    needle_angle_deg: float = 0.0
    """Tilt of the needle axis away from the edge normal (-30..30)."""
    needle_tip_radius_nm: float = 6.0
    """Radius of curvature of the tungsten tip."""
    needle_taper_deg: float = 12.0
    """Half-angle of the conical needle shaft."""
    needle_layer_nm: float = 2.0
    """Thickness of the LiOx layer at the tip apex."""
    needle_layer_length_nm: float = 0.0
    """How far back from the apex the LiOx layer covers the needle at its full
    thickness (then it ends). 0: it thins from the apex to nothing three tip radii back."""
    needle_transmission: float = 0.06
    """Bright-field transmission of the tungsten needle (nearly opaque)."""
    layer_transmission: float = 0.78
    """Transmission of the LiOx layer on the needle (low-Z: light grey)."""
    particle_edge_transmission: float = 0.62
    """Transmission of pristine Si at the rim of a particle."""
    particle_centre_transmission: float = 0.45
    """Transmission of pristine Si through the centre of a particle (thickest there)."""
    particle_overlap: float = 0.95
    """Neighbouring particle centres sit at this fraction of the sum of their radii
    (below 1: they overlap in projection, as in a 3-D clump)."""
    min_particle_separation: float = 0.8
    """Non-neighbours may not come closer than this fraction of the sum of their radii."""
    overlap_darkening: bool = False
    """Where particles overlap in projection their absorptions add (the transmission is
    the product: a 3-D clump is darker where two overlap); False: the darker one shows."""
    approach_distance_nm: float = 40.0
    """Gap between needle and cluster at t = 0; closed at constant speed by ``contact_s``."""
    withdraw_speed_nm_per_s: float = 20.0
    """Speed of the needle moving back out after ``withdraw_s``."""
    contact_s: float = 15.0
    """When the needle (its LiOx layer) touches the cluster."""
    bias_on_s: float = 20.0
    """When the bias is switched on (scenarios that apply one)."""
    bias_v: float = -2.0
    """Bias on the needle while it is on; 0 V before ``bias_on_s`` and after ``withdraw_s``."""
    withdraw_s: float = 80.0
    """When the needle is pulled back; contact is lost at this instant."""
    lithiation_delay_s: float = 0.5
    """Delay between bias on and the first swelling (ions cross the LiOx layer)."""
    lithiation_rate_per_s: float = 0.1
    """Rate at which the touched particle fills with lithium (first-order, 1 - exp)."""
    diffusion_rate_per_s: float = 0.04
    """Rate of lithium exchange between touching particles (diffusion on the contact graph)."""
    delithiation_rate_per_s: float = 0.1
    """Rate at which lithium drains from every particle once the needle is withdrawn."""
    max_area_swelling: float = 1.0
    """Relative increase of projected area of a fully lithiated particle (1.0: doubles)."""
    onset_bias_v: float = 0.5
    """Lithium enters under bias only when ``|bias_v|`` reaches this."""
    diffusion_coefficient_cm2_per_s: float | None = None
    """If set, the touched particle fills at ``pi^2 D / r0^2`` (the slowest mode of
    diffusion into a sphere of its pristine radius) instead of ``lithiation_rate_per_s``."""
    fresnel_fringe: float = 0.0
    """Amplitude of the Fresnel fringes at edges, relative to the edge's contrast (0: in
    focus; 0.3: a visible bright halo outside, dark band inside)."""
    drift_px_per_frame: float = 0.0
    """Peak speed of the stage drift (the specimen, needle and grid move together)."""
    drift_amplitude_nm: float = 10.0
    """How far the drift wanders from the start along each axis (it is a slow,
    smooth back-and-forth, so that the cluster stays in view)."""
    hot_pixel_fraction: float = 0.0
    """Fraction of camera pixels that read several times the vacuum level, always."""
    hot_pixels_saturate: bool = False
    """Hot pixels read the camera's full scale (single saturated pixels)."""
    dead_pixel_fraction: float = 0.0
    """Fraction of camera pixels that read the dark level, always."""
    stage_jumps: int = 0
    """Sudden stage jumps during the movie (at random frames, random directions)."""
    stage_jump_px: float = 0.0
    """Length of each stage jump, pixels."""
    core_contrast: float = 0.0
    """How much darker (relative transmission) the unlithiated crystalline core is than
    the amorphous lithiated shell; the core shrinks as lithium comes in."""
    grid_bar: bool = False
    """An opaque copper grid bar along ``grid_edge``, touching the cluster."""
    grid_edge: str = "opposite"
    """The edge the grid bar runs along: ``opposite`` the needle, or any other edge by
    name (``left``, ``right``, ``top``, ``bottom``; not the needle's)."""
    grid_transmission: float = 0.03
    """Transmission of the copper grid bar (opaque)."""

    def __post_init__(self) -> None:
        rows, cols = self.shape
        if rows < 16 or cols < 16:
            raise ConfigError(f"Expected a shape of at least 16x16 pixels. Got {self.shape}.")
        _check_positive(self, "fps", "duration_s", "pixel_size_nm", "dose_rate_e_per_a2_s",
                        "counts_per_electron", "needle_tip_radius_nm",
                        "withdraw_speed_nm_per_s")
        _check_non_negative(self, "dark_level_counts", "illumination_gradient", "flicker",
                            "needle_layer_nm", "approach_distance_nm", "lithiation_delay_s",
                            "lithiation_rate_per_s", "diffusion_rate_per_s",
                            "delithiation_rate_per_s", "max_area_swelling", "contact_s",
                            "onset_bias_v", "fresnel_fringe", "drift_px_per_frame",
                            "drift_amplitude_nm", "hot_pixel_fraction", "core_contrast",
                            "needle_layer_length_nm", "dead_pixel_fraction", "stage_jumps",
                            "stage_jump_px")
        for name in ("hot_pixel_fraction", "dead_pixel_fraction"):
            if getattr(self, name) > 0.01:
                raise ConfigError(f"Expected {name} <= 0.01. Got {getattr(self, name)!r}.")
        for name in ("needle_transmission", "layer_transmission", "grid_transmission",
                     "particle_edge_transmission", "particle_centre_transmission"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"Expected {name} in 0..1. Got {value!r}.")
        if not 0.3 <= self.min_particle_separation <= self.particle_overlap <= 1.0:
            raise ConfigError(
                "Expected 0.3 <= min_particle_separation <= particle_overlap <= 1. Got "
                f"{self.min_particle_separation!r} and {self.particle_overlap!r}."
            )
        if self.core_contrast >= 1:
            raise ConfigError(f"Expected core_contrast < 1. Got {self.core_contrast!r}.")
        d = self.diffusion_coefficient_cm2_per_s
        if d is not None and not d > 0:
            raise ConfigError(f"Expected diffusion_coefficient_cm2_per_s > 0. Got {d!r}.")
        if self.particle_count < 1:
            raise ConfigError(f"Expected particle_count >= 1. Got {self.particle_count}.")
        low, high = self.particle_diameter_nm
        if not 0 < low <= high:
            raise ConfigError(
                f"Expected particle_diameter_nm as (low, high) with 0 < low <= high. "
                f"Got {self.particle_diameter_nm}."
            )
        if self.needle_edge not in _EDGES:
            raise ConfigError(
                f"Expected needle_edge one of {', '.join(_EDGES)}. Got {self.needle_edge!r}.")
        if self.grid_edge not in ("opposite", *_EDGES) or self.grid_edge == self.needle_edge:
            raise ConfigError(
                f"Expected grid_edge 'opposite' or an edge other than the needle's "
                f"({self.needle_edge}). Got {self.grid_edge!r}.")
        if not -30.0 <= self.needle_angle_deg <= 30.0:
            raise ConfigError(f"Expected needle_angle_deg in -30..30. Got {self.needle_angle_deg}.")
        if not 0.0 < self.needle_taper_deg < 45.0:
            raise ConfigError(f"Expected needle_taper_deg in (0, 45). Got {self.needle_taper_deg}.")
        if not self.contact_s <= self.bias_on_s <= self.withdraw_s:
            raise ConfigError(
                "Expected contact_s <= bias_on_s <= withdraw_s. "
                f"Got {self.contact_s}, {self.bias_on_s}, {self.withdraw_s}."
            )

    @property
    def frame_count(self) -> int:
        """Number of frames in the movie."""
        return round(self.duration_s * self.fps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        """Build from plain values (TOML, JSON, CLI); a ConfigError names a bad key."""
        return options_from_dict(cls, data, what="simulator")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values; inverse of :meth:`from_dict`."""
        return options_to_dict(self)


def _check_positive(config: SimConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ConfigError(f"Expected {name} > 0. Got {value!r}.")


def _check_non_negative(config: SimConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ConfigError(f"Expected {name} >= 0. Got {value!r}.")


# --------------------------------------------------------------------------- scene


def _place_cluster(
    config: SimConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random compact cluster of touching discs, in pixels, relative to its centroid.

    Returns centres (n, 2) as (row, col), radii (n,), and the contact graph as a
    boolean adjacency matrix (n, n). Each new particle touches a random existing
    one; of a few candidate places, the one nearest the centroid wins, which keeps
    the cluster compact (TEM clusters are clumps, not long chains).
    """
    n = config.particle_count
    low, high = config.particle_diameter_nm
    radii = rng.uniform(low, high, n) / 2.0 / config.pixel_size_nm
    centres = np.zeros((n, 2))
    for i in range(1, n):
        best: np.ndarray | None = None
        best_distance = math.inf
        for _ in range(64):
            j = int(rng.integers(i))
            angle = rng.uniform(0.0, 2.0 * math.pi)
            candidate = centres[j] + config.particle_overlap * (radii[i] + radii[j]) * np.array(
                [math.sin(angle), math.cos(angle)]
            )
            gaps = np.hypot(*(centres[:i] - candidate).T)
            if np.any(gaps < config.min_particle_separation * (radii[:i] + radii[i])):
                continue
            distance = float(np.hypot(*(candidate - centres[:i].mean(axis=0))))
            if distance < best_distance:
                best, best_distance = candidate, distance
        if best is None:  # pragma: no cover - 64 random tries all rejected
            raise ConfigError("Could not place the particles; reduce particle_count.")
        centres[i] = best
    gaps = np.hypot(
        centres[:, None, 0] - centres[None, :, 0], centres[:, None, 1] - centres[None, :, 1]
    )
    adjacency = gaps <= (radii[:, None] + radii[None, :]) * (1.0 + 1e-9)
    np.fill_diagonal(adjacency, False)
    return centres - centres.mean(axis=0), radii, adjacency


def _push_apart(centres: np.ndarray, radii: np.ndarray, radii_t: np.ndarray,
                adjacency: np.ndarray, anchor: int, *, iterations: int = 200,
                tolerance_px: float = 0.05) -> np.ndarray:
    """Centres per frame as the particles swell: touching pairs keep their overlap.

    Two touching particles stay at the same fraction of the sum of their radii apart
    as when pristine; any other pair is kept at least that far apart (a swelling
    particle shoves a neighbour it reaches rather than growing through it). Solved
    by Jacobi-style position-based relaxation (Mueller et al., J. Vis. Commun. Image
    Represent. 18 (2007) 109) from the previous frame's positions, again only when a
    radius has changed by more than ``tolerance_px``. ``anchor`` (the particle the
    needle presses on) stays put: the rest of the cluster moves away from it.
    Without this, centres fixed while radii grew by a quarter left neighbours
    overlapping by a third of their diameters, a harder scene than a real clump.
    """
    n = centres.shape[0]
    out = np.empty((radii_t.shape[0], n, 2))
    position = centres.astype(float).copy()
    sums0 = radii[:, None] + radii[None, :]
    distance0 = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    fraction = np.minimum(distance0 / np.maximum(sums0, 1e-12), 1.0)
    movable = np.ones(n)
    movable[anchor] = 0.0
    share = movable[:, None] / np.maximum(movable[:, None] + movable[None, :], 1e-12)
    np.fill_diagonal(adjacency := adjacency.copy(), False)
    solved = np.full(n, -np.inf)
    for t in range(radii_t.shape[0]):
        r = radii_t[t]
        if np.max(np.abs(r - solved)) > tolerance_px:
            solved = r
            target = fraction * (r[:, None] + r[None, :])
            for _ in range(iterations):
                delta = position[None, :, :] - position[:, None, :]  # i -> j
                distance = np.hypot(delta[..., 0], delta[..., 1])
                np.fill_diagonal(distance, np.inf)
                active = adjacency | (distance < target)
                error = np.divide(distance - target, distance, out=np.zeros_like(distance),
                                  where=active)
                count = np.maximum(active.sum(axis=1), 1)[:, None]
                move = ((share * error)[..., None] * delta).sum(axis=1) / count
                position += move
                if np.abs(move).max() < 0.01:
                    break
        out[t] = position
    return out


def _lithiation_start_s(config: SimConfig, scenario: Scenario) -> float | None:
    """When lithium first enters the touched particle, or None if it never does."""
    if scenario.chemical:
        start_s = config.contact_s + config.lithiation_delay_s
    elif scenario.bias_applied and abs(config.bias_v) >= config.onset_bias_v:
        start_s = config.bias_on_s + config.lithiation_delay_s
    else:
        return None
    return start_s if start_s < config.withdraw_s else None


def _lithiation(
    config: SimConfig,
    scenario: Scenario,
    adjacency: np.ndarray,
    source: int,
    times_s: np.ndarray,
    rate_per_s: float,
) -> np.ndarray:
    """Lithium fraction (0..1) of every particle at every time, shape (len(times_s), n).

    The touched particle fills at ``rate_per_s`` towards 1 while the needle feeds it;
    lithium diffuses between touching particles at ``diffusion_rate_per_s`` (a graph
    Laplacian: the flow between two particles is proportional to the difference of
    their lithium content); after withdrawal it drains from all of them (into
    particles out of view). Each phase is a linear system ``dx/dt = M x + b`` with
    symmetric ``M``, solved exactly through its eigendecomposition, so any frame time
    costs the same.
    """
    n = adjacency.shape[0]
    x = np.zeros((times_s.size, n))
    start_s = _lithiation_start_s(config, scenario)
    if start_s is None:
        return x
    laplacian = np.diag(adjacency.sum(axis=1)).astype(float) - adjacency
    stop_s = max(config.withdraw_s, start_s)
    charge = -config.diffusion_rate_per_s * laplacian
    charge[source, source] -= rate_per_s
    feed = np.zeros(n)
    feed[source] = rate_per_s
    drain = -config.diffusion_rate_per_s * laplacian - config.delithiation_rate_per_s * np.eye(n)
    state_at_stop = _evolve(charge, feed, np.zeros(n), np.array([stop_s - start_s]))[0]
    charging = (times_s >= start_s) & (times_s < stop_s)
    draining = times_s >= stop_s
    x[charging] = _evolve(charge, feed, np.zeros(n), times_s[charging] - start_s)
    x[draining] = _evolve(drain, np.zeros(n), state_at_stop, times_s[draining] - stop_s)
    return np.clip(x, 0.0, 1.0)


def _evolve(
    matrix: np.ndarray, feed: np.ndarray, x0: np.ndarray, dt_s: np.ndarray
) -> np.ndarray:
    """Exact solution of ``dx/dt = matrix @ x + feed`` (matrix symmetric) at times ``dt_s``."""
    eigenvalues, vectors = np.linalg.eigh(matrix)
    steady = -np.linalg.lstsq(matrix, feed, rcond=None)[0]
    modes = vectors.T @ (x0 - steady)
    state: np.ndarray = steady + (np.exp(np.outer(dt_s, eigenvalues)) * modes) @ vectors.T
    return state


def _grid_side(config: SimConfig) -> tuple[int, int]:
    """The grid bar's axis (0 rows, 1 cols) and side (+1 the far end of it, -1 index 0)."""
    edge = config.grid_edge
    if edge == "opposite":
        edge = {"left": "right", "right": "left", "top": "bottom",
                "bottom": "top"}[config.needle_edge]
    return {"left": (1, -1), "right": (1, 1), "top": (0, -1), "bottom": (0, 1)}[edge]


class _Scene:
    """Geometry of the experiment at every frame, precomputed; no pixels here."""

    def __init__(self, config: SimConfig, scenario: Scenario) -> None:
        self.config = config
        self.scenario = scenario
        rng = np.random.default_rng(config.seed)
        rows, cols = config.shape
        px = config.pixel_size_nm
        offsets, self.radii_px, self.adjacency = _place_cluster(config, rng)

        angle = math.radians(config.needle_angle_deg)
        inward = {"left": (0.0, 1.0), "right": (0.0, -1.0), "top": (1.0, 0.0),
                  "bottom": (-1.0, 0.0)}[config.needle_edge]
        # The edge normal (pointing into the frame) turned by the needle's tilt.
        self.axis = np.array([inward[0] * math.cos(angle) + inward[1] * math.sin(angle),
                              inward[1] * math.cos(angle) - inward[0] * math.sin(angle)])
        normal = np.array([-self.axis[1], self.axis[0]])
        self.grid_dim, self.grid_sign = _grid_side(config)

        # The cluster sits at the far side from the needle, centred across its axis,
        # sized for its most swollen state so that it never leaves the field.
        # Swelling particles push each other apart (see _push_apart): the whole
        # cluster grows by up to the radius factor.
        grow = math.sqrt(1.0 + config.max_area_swelling)
        swollen = self.radii_px * grow
        spread = offsets.mean(axis=0) + (offsets - offsets.mean(axis=0)) * grow
        low = np.minimum((offsets - swollen[:, None]).min(axis=0),
                         (spread - swollen[:, None]).min(axis=0))
        high = np.maximum((offsets + swollen[:, None]).max(axis=0),
                          (spread + swollen[:, None]).max(axis=0))
        self.drift_amplitude_px = (config.drift_amplitude_nm / px
                                   if config.drift_px_per_frame > 0 else 0.0)
        self.wander_px = self.drift_amplitude_px + config.stage_jumps * config.stage_jump_px
        margin = 0.04 * np.array([rows, cols]) + self.wander_px
        room = np.array([rows, cols]) - 2 * margin - (high - low)
        if np.any(room < 0):
            raise ConfigError(
                f"The cluster ({high[0] - low[0]:.0f}x{high[1] - low[1]:.0f} px when swollen) "
                f"does not fit in a {rows}x{cols} frame at {px} nm/px. Reduce particle_count "
                "or particle_diameter_nm, or enlarge shape."
            )
        # Far along the needle's axis, centred across it; beside a grid bar on a side
        # edge, a fifth of the room from it (it hangs from the bar).
        inward_dim = 1 if config.needle_edge in ("left", "right") else 0
        place = np.full(2, 0.5)
        place[inward_dim] = 1.0 if inward[inward_dim] > 0 else 0.0
        if config.grid_bar and self.grid_dim != inward_dim:
            place[self.grid_dim] = 0.8 if self.grid_sign > 0 else 0.2
        shift = margin - low + room * place
        self.centres = offsets + shift
        self.normal = normal

        # The needle aims at the foremost particle's centre; with a wide tip another
        # particle beside it may be met first: the one whose surface the coated tip
        # (a disc) reaches first moving along the axis is the one touched.
        tip_radius_px = config.needle_tip_radius_nm / px
        layer_px = config.needle_layer_nm / px
        front = int(np.argmin(self.centres @ self.axis - self.radii_px))
        self.aim = self.centres[front] - self.axis * float(self.centres[front] @ self.axis)
        lateral = np.abs((self.centres - self.centres[front]) @ normal)
        self.lateral_px = lateral
        reach_radius = tip_radius_px + layer_px + self.radii_px
        met = lateral < reach_radius
        along_at_contact = np.where(
            met, self.centres @ self.axis - np.sqrt(np.clip(reach_radius**2 - lateral**2, 0, None)),
            np.inf)
        self.source = int(np.argmin(along_at_contact))
        if config.diffusion_coefficient_cm2_per_s is not None:
            radius_cm = self.radii_px[self.source] * px * 1e-7
            self.rate_per_s = math.pi**2 * config.diffusion_coefficient_cm2_per_s / radius_cm**2
        else:
            self.rate_per_s = config.lithiation_rate_per_s
        self.diffusion_coefficient_cm2_per_s = (
            self.rate_per_s * (self.radii_px[self.source] * px * 1e-7) ** 2 / math.pi**2
        )
        """The apparent D of the touched particle: its filling rate read through the
        slowest mode of diffusion into a sphere, ``k = pi^2 D / r0^2`` (Crank 1975, 6.3)."""

        # The copper grid bar along its edge, its inner edge pressed 1 px into the
        # pristine particle nearest that edge: the cluster hangs from it.
        self.grid_start_px = math.inf
        if config.grid_bar:
            d, sign = self.grid_dim, self.grid_sign
            far = float((sign * self.centres[:, d] + self.radii_px).max())
            self.grid_start_px = sign * (far - 1.0)
            width = (config.shape[d] - self.grid_start_px if sign > 0 else self.grid_start_px)
            if width - self.wander_px < 8:
                raise ConfigError("No room for the grid bar beside the cluster; enlarge shape.")

        times_s = np.arange(config.frame_count) / config.fps
        self.times_s = times_s
        self.lithium_start_s = _lithiation_start_s(config, scenario)
        self.lithium = _lithiation(config, scenario, self.adjacency, self.source, times_s,
                                   self.rate_per_s)
        # Volume grows linearly with the lithium content (Obrovac and Krause 2007), so
        # the radius as its cube root; max_area_swelling is reached when full.
        self.volume_swelling = (1.0 + config.max_area_swelling) ** 1.5 - 1.0
        self.radii_t = self.radii_px * np.cbrt(1.0 + self.volume_swelling * self.lithium)
        self.centres_t = _push_apart(self.centres, self.radii_px, self.radii_t,
                                     self.adjacency, self.source)
        """Particle centres per frame (frames, n, 2): swelling pushes neighbours apart."""

        # Gap between the LiOx layer and the particle surface (negative: pressed in).
        approach_px = config.approach_distance_nm / px
        gap = np.full(times_s.shape, -_CONTACT_OVERLAP_PX)
        if config.contact_s > 0:
            before = times_s < config.contact_s
            gap[before] = approach_px * (1.0 - times_s[before] / config.contact_s)
        after = times_s >= config.withdraw_s
        gap[after] = np.minimum(
            approach_px,
            (_SNAP_GAP_NM + config.withdraw_speed_nm_per_s * (times_s[after] - config.withdraw_s))
            / px,
        )
        self.gap_px = gap
        self.contact = (times_s >= config.contact_s) & (times_s < config.withdraw_s)

        # Foremost point of the metal (the tip apex), per frame: the coated tip disc
        # touches the source particle (radius as swollen, position as pushed) at the
        # gap, on the aiming line.
        source_centre = self.centres_t[:, self.source]
        h = float(self.lateral_px[self.source])
        touching = np.sqrt(np.clip((tip_radius_px + layer_px + self.radii_t[:, self.source])**2
                                   - h * h, 0.0, None))
        along = source_centre @ self.axis - touching - gap
        self.tip = self.aim + self.axis * (along + tip_radius_px)[:, None]
        self.tip_radius_px = tip_radius_px
        self.layer_px = layer_px
        self.layer_length_px = config.needle_layer_length_nm / px
        self.taper = math.tan(math.radians(config.needle_taper_deg))

        # Smooth illumination: a tilt plus a gentle off-centre vignette, peak-to-peak
        # about `illumination_gradient`.
        r = (np.arange(rows, dtype=np.float32) - rows / 2) / max(rows, cols)
        c = (np.arange(cols, dtype=np.float32) - cols / 2) / max(rows, cols)
        phi = rng.uniform(0.0, 2.0 * math.pi)
        centre = rng.uniform(-0.2, 0.2, 2)
        tilt = math.cos(phi) * r[:, None] + math.sin(phi) * c[None, :]
        vignette = (r[:, None] - centre[0]) ** 2 + (c[None, :] - centre[1]) ** 2
        pattern = tilt - vignette
        pattern = (pattern - pattern.mean()) / max(float(np.ptp(pattern)), 1e-12)
        electrons = config.dose_rate_e_per_a2_s / config.fps * (10.0 * px) ** 2
        self.electrons = electrons
        self.illumination = (electrons * (1.0 + config.illumination_gradient * pattern)).astype(
            np.float32
        )

        # Stage drift: a smooth back-and-forth of the whole specimen under the beam, two
        # incommensurate sines whose combined speed peaks at drift_px_per_frame.
        self.drift = np.zeros((times_s.size, 2))
        if config.drift_px_per_frame > 0:
            amplitude = self.drift_amplitude_px
            omega = config.drift_px_per_frame / amplitude * np.array([0.8, 0.6])
            signs = np.where(rng.random(2) < 0.5, -1.0, 1.0)
            frames = np.arange(times_s.size, dtype=float)
            self.drift = amplitude * signs * np.sin(np.outer(frames, omega))
        # Stage jumps: the whole specimen steps at random frames and stays there.
        if config.stage_jumps and config.stage_jump_px > 0 and times_s.size > 1:
            at = rng.integers(1, times_s.size, config.stage_jumps)
            theta = rng.uniform(0.0, 2.0 * math.pi, config.stage_jumps)
            for frame, direction in zip(at, theta, strict=True):
                self.drift[frame:] += config.stage_jump_px * np.array(
                    [math.sin(direction), math.cos(direction)])

        # Hot pixels: fixed to the camera, not the specimen.
        count = round(config.hot_pixel_fraction * rows * cols)
        self.hot_pixels = rng.choice(rows * cols, size=count, replace=False)
        self.hot_gain = rng.uniform(*_HOT_PIXEL_GAIN, size=count).astype(np.float32)
        dead = round(config.dead_pixel_fraction * rows * cols)
        self.dead_pixels = (rng.choice(rows * cols, size=dead, replace=False) if dead
                            else np.zeros(0, np.int64))

    def phase(self, index: int) -> str:
        t_s = self.times_s[index]
        c = self.config
        if t_s < c.contact_s:
            return "approach"
        if t_s >= c.withdraw_s:
            return "withdrawn"
        if self.scenario.bias_applied and t_s >= c.bias_on_s:
            return "lithiation"
        if self.lithium_start_s is not None and t_s >= self.lithium_start_s:
            return "lithiation"
        return "contact"

    def bias_v(self, index: int) -> float:
        t_s = self.times_s[index]
        c = self.config
        on = self.scenario.bias_applied and c.bias_on_s <= t_s < c.withdraw_s
        return float(c.bias_v) if on else 0.0


# --------------------------------------------------------------------------- render


_SHIFT = 4
"""Fixed-point bits for OpenCV drawing: sub-pixel needle positions move smoothly."""


def _points(points: np.ndarray) -> np.ndarray:
    """(row, col) float points -> OpenCV's (x, y) fixed-point int32 polygon."""
    return np.round(points[:, ::-1] * (1 << _SHIFT)).astype(np.int32)


def _draw_needle(target: np.ndarray, scene: _Scene, index: int, *, core: float,
                 layer: float) -> None:
    """Draw the LiOx layer, then the metal over it, with the given fill values."""
    axis, normal = scene.axis, scene.normal
    rho, thick, taper = scene.tip_radius_px, scene.layer_px, scene.taper
    centre = scene.tip[index] + scene.drift[index] - axis * rho
    far = 2.0 * sum(target.shape)
    back = centre - axis * far
    shaft = np.array([centre + normal * rho, back + normal * (rho + far * taper),
                      back - normal * (rho + far * taper), centre - normal * rho])
    if thick > 0:
        length = scene.layer_length_px
        if length > 0:
            # An even layer over the tip and back along the shaft for `length`.
            rear = centre - axis * length
            wide = rho + length * taper + thick
        else:
            # Thickest at the apex, thinning to nothing three tip radii back.
            length = 3.0 * rho
            rear = centre - axis * length
            wide = rho + length * taper
        coat = np.array([centre + normal * (rho + thick), rear + normal * wide,
                         rear - normal * wide, centre - normal * (rho + thick)])
        cv2.fillPoly(target, [_points(coat)], layer, cv2.LINE_8, _SHIFT)
        cv2.circle(target, tuple(int(v) for v in _points(centre[None])[0]),
                   round((rho + thick) * (1 << _SHIFT)), layer, -1, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(target, [_points(shaft)], core, cv2.LINE_8, _SHIFT)
    cv2.circle(target, tuple(int(v) for v in _points(centre[None])[0]),
               round(rho * (1 << _SHIFT)), core, -1, cv2.LINE_8, _SHIFT)


def _render(scene: _Scene, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One noisy uint16 frame and its ground truth."""
    config = scene.config
    rows, cols = config.shape
    rng = np.random.default_rng([config.seed, index])
    transmission = np.ones((rows, cols), np.float32)
    particles = np.zeros((rows, cols), np.bool_)
    owner = np.zeros((rows, cols), np.int16)
    darkest_own = np.ones((rows, cols), np.float32)
    areas: list[int] = []
    lithium = scene.lithium[index]
    shift = scene.drift[index]
    centres = scene.centres_t[index] + shift
    core_radii = scene.radii_px * np.cbrt(np.clip(1.0 - lithium, 0.0, 1.0))
    for i, ((rc, cc), radius, x) in enumerate(
        zip(centres, scene.radii_t[index], lithium, strict=True)
    ):
        r0, r1 = max(0, math.floor(rc - radius)), min(rows, math.ceil(rc + radius) + 1)
        c0, c1 = max(0, math.floor(cc - radius)), min(cols, math.ceil(cc + radius) + 1)
        d2 = ((np.arange(r0, r1, dtype=np.float32) - rc) ** 2)[:, None] + (
            (np.arange(c0, c1, dtype=np.float32) - cc) ** 2
        )[None, :]
        inside = d2 <= radius * radius
        dome = np.sqrt(np.clip(1.0 - d2 / (radius * radius), 0.0, 1.0))
        gain = _LITHIATED_TRANSMISSION_GAIN * x
        edge = min(config.particle_edge_transmission + gain, 1.0)
        centre_value = min(config.particle_centre_transmission + gain, 1.0)
        value = edge - (edge - centre_value) * dome
        if config.core_contrast > 0 and core_radii[i] > 0:
            # The crystalline core diffracts more strongly: darker in bright field.
            value = np.where(d2 <= core_radii[i] ** 2,
                             value * np.float32(1.0 - config.core_contrast), value)
        window = transmission[r0:r1, c0:c1]
        darkest = darkest_own[r0:r1, c0:c1]
        # Where particles overlap, the pixel belongs to the darker one; it shows the
        # darker one, or with overlap_darkening both (absorptions add).
        np.copyto(owner[r0:r1, c0:c1], np.int16(i + 1), where=inside & (value < darkest))
        np.minimum(darkest, np.where(inside, value, 1.0), out=darkest)
        if config.overlap_darkening:
            np.multiply(window, np.where(inside, value, 1.0), out=window)
        else:
            np.minimum(window, np.where(inside, value, 1.0), out=window)
        particles[r0:r1, c0:c1] |= inside
        areas.append(int(np.count_nonzero(inside)))

    _draw_needle(transmission, scene, index, core=config.needle_transmission,
                 layer=config.layer_transmission)
    needle = np.zeros((rows, cols), np.uint8)
    _draw_needle(needle, scene, index, core=1, layer=1)
    hidden = needle.view(np.bool_)
    if config.grid_bar:
        start = scene.grid_start_px + shift[scene.grid_dim]
        if scene.grid_sign > 0:
            bar = slice(max(0, math.ceil(start)), None)
        else:
            bar = slice(0, max(0, math.floor(start) + 1))
        region = (slice(None), bar) if scene.grid_dim == 1 else (bar, slice(None))
        transmission[region] = config.grid_transmission
        hidden[region] = True
    visible = particles & ~hidden
    owner[~visible] = 0

    blurred = cv2.GaussianBlur(transmission, (0, 0), _PSF_SIGMA_PX)
    if config.fresnel_fringe > 0:
        # Defocus: the edge contrast is amplified against a wider blur of itself, a
        # bright fringe outside every dark edge and a dark one inside.
        wide = cv2.GaussianBlur(blurred, (0, 0), _FRINGE_SIGMA_PX)
        cv2.addWeighted(blurred, 1.0 + config.fresnel_fringe, wide, -config.fresnel_fringe,
                        0.0, dst=blurred)
        np.maximum(blurred, 0.0, out=blurred)
    brightness = 1.0 + config.flicker * float(rng.standard_normal())
    expected = blurred
    np.multiply(blurred, scene.illumination, out=expected)
    np.multiply(expected, np.float32(max(brightness, 0.0)), out=expected)
    electrons = rng.standard_normal((rows, cols), dtype=np.float32)
    electrons *= np.sqrt(expected)
    electrons += expected
    dim = expected < _EXACT_POISSON_BELOW
    electrons[dim] = rng.poisson(expected[dim])
    counts = electrons
    counts *= np.float32(config.counts_per_electron)
    counts += np.float32(config.dark_level_counts + 0.5)  # +0.5: round, not truncate
    if scene.hot_pixels.size:
        counts.reshape(-1)[scene.hot_pixels] = (
            np.float32(_SATURATED_COUNTS) if config.hot_pixels_saturate else
            scene.hot_gain * np.float32(scene.electrons * config.counts_per_electron)
            + np.float32(config.dark_level_counts))
    if scene.dead_pixels.size:
        counts.reshape(-1)[scene.dead_pixels] = np.float32(config.dark_level_counts)
    image = np.clip(counts, 0, 65535).astype(np.uint16)

    rr, cc = np.nonzero(owner)
    who = owner[rr, cc]
    n = len(areas) + 1
    visible_areas = np.bincount(who, minlength=n)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        visible_row = np.bincount(who, weights=rr, minlength=n)[1:] / visible_areas
        visible_col = np.bincount(who, weights=cc, minlength=n)[1:] / visible_areas
    x_li = scene.volume_swelling * lithium / _SWELLING_PER_X
    truth = {
        "cluster_area_px": int(np.count_nonzero(visible)),
        "particle_count": len(areas),
        "needle_contact": bool(scene.contact[index]),
        "phase": scene.phase(index),
        "particle_area_px": areas,
        "particle_visible_area_px": [int(a) for a in visible_areas],
        "particle_centre_row": [float(v) for v in centres[:, 0]],
        "particle_centre_col": [float(v) for v in centres[:, 1]],
        "particle_visible_centroid_row": [float(v) for v in visible_row],
        "particle_visible_centroid_col": [float(v) for v in visible_col],
        "particle_lithium_x": [round(float(v), 6) for v in x_li],
        "particle_core_radius_px": [round(float(v), 4) for v in core_radii],
        "drift_row_px": float(shift[0]),
        "drift_col_px": float(shift[1]),
    }
    return image, truth


# --------------------------------------------------------------------------- source


class SimulatedSource(SourceBase):
    """Frames of a simulated lithiation experiment, with their ground truth.

    Parameters
    ----------
    config : SimConfig, optional
        Options; defaults to ``SimConfig()``.
    scenario : str
        One of :data:`SCENARIOS`: ``lithiation`` (default) or ``control``.

    Notes
    -----
    Frames are deterministic for a given config (including its seed): frame ``i``
    is the same whether it is rendered first, last or alone. ``t_s = index / fps``.
    The source does not pace itself; ``info.live`` is True because a publisher
    streaming it should behave as for a camera.

    Each frame's ``truth`` holds ``cluster_area_px`` (pixels of the union of the
    particle discs as rendered, i.e. not hidden by the needle), ``particle_count``,
    ``needle_contact``, ``phase`` (``approach``, ``contact``, ``lithiation``,
    ``withdrawn``) and ``particle_area_px`` (the rendered disc of each particle, by
    particle id, overlaps counted in both).

    Examples
    --------
    >>> from lithoscope.service.sources.sim import SimConfig, SimulatedSource
    >>> with SimulatedSource(SimConfig(duration_s=2.0), scenario="control") as source:
    ...     frames = list(source)
    >>> len(frames), frames[0].image.dtype.name
    (8, 'uint16')
    """

    def __init__(self, config: SimConfig | None = None, *, scenario: str = "lithiation") -> None:
        if scenario not in SCENARIOS:
            raise ConfigError(
                f"Unknown scenario {scenario!r}. Expected one of {', '.join(SCENARIOS)}."
            )
        self.scenario = SCENARIOS[scenario]
        config = config if config is not None else SimConfig()
        if self.scenario.overrides:
            config = dataclasses.replace(config, **dict(self.scenario.overrides))
        self.config = config
        self._scene = _Scene(self.config, self.scenario)
        self._closed = False
        self._info = SourceInfo(
            name=f"sim:{scenario}",
            kind="sim",
            shape=self.config.shape,
            dtype="uint16",
            frame_count=self.config.frame_count,
            fps=self.config.fps,
            pixel_size_nm=self.config.pixel_size_nm,
            live=True,
            metadata={"scenario": scenario, "config": self.config.to_dict()},
        )

    def __len__(self) -> int:
        return self.config.frame_count

    def __iter__(self) -> Iterator[SourceFrame]:
        for index in range(self.config.frame_count):
            yield self.render(index)

    def render(self, index: int) -> SourceFrame:
        """Render frame ``index`` (0 <= index < frame_count), in any order.

        Raises
        ------
        SourceError
            If the source is closed.
        IndexError
            If ``index`` is out of range.
        """
        if self._closed:
            raise SourceError("The simulator is closed.")
        if not 0 <= index < self.config.frame_count:
            raise IndexError(f"Frame {index} out of range 0..{self.config.frame_count - 1}.")
        image, truth = _render(self._scene, index)
        tip = self._scene.tip[index] + self._scene.drift[index]
        return SourceFrame(
            image=image,
            t_s=index / self.config.fps,
            index=index,
            metadata={
                "bias_v": self._scene.bias_v(index),
                "needle_tip_row": float(tip[0]),
                "needle_tip_col": float(tip[1]),
                "dose_rate_e_per_a2_s": self.config.dose_rate_e_per_a2_s,
            },
            truth=truth,
        )

    @property
    def diffusion_coefficient_cm2_per_s(self) -> float:
        """The true apparent diffusion coefficient of the touched particle.

        Its filling rate ``k`` read through the slowest mode of diffusion into a sphere
        of its pristine radius ``r0``: ``D = k r0^2 / pi^2`` (Crank, *The Mathematics of
        Diffusion*, 2nd ed. 1975, eq. 6.20), the model the analysis inverts.
        """
        return float(self._scene.diffusion_coefficient_cm2_per_s)

    @property
    def touched_particle(self) -> int:
        """Index (into the truth's particle lists) of the particle the needle touches."""
        return self._scene.source

    def truth_events(self) -> list[tuple[str, float]]:
        """The physical events of the scenario as ``(event kind, t_s)``, in time order.

        Kinds are :class:`lithoscope.service.protocol.EventKind` values:
        ``contact_made``, ``expansion_onset`` (first swelling: after the bias passes
        its onset and the lithiation delay, or after contact in the chemical
        scenario), ``contact_lost`` and ``contraction_onset`` (lithium starts
        draining at withdrawal). Events after the end of the movie are left out.
        """
        c = self.config
        events = [("contact_made", c.contact_s)]
        onset = self._scene.lithium_start_s
        if onset is not None:
            events.append(("expansion_onset", onset))
        events.append(("contact_lost", c.withdraw_s))
        if onset is not None:
            events.append(("contraction_onset", c.withdraw_s))
        return sorted(((kind, t_s) for kind, t_s in events if t_s < c.duration_s),
                      key=lambda e: e[1])

    def lithium_atoms(self, t_s: np.ndarray) -> np.ndarray:
        """Lithium atoms in each particle at times ``t_s``, shape (len(t_s), n).

        A particle's Si atoms are those of a sphere of its pristine radius at
        49.94 atoms/nm^3 (:data:`lithoscope.service.operando.echem.SILICON_ATOMS_PER_NM3`), and
        it holds ``x`` Li per Si (the truth's ``particle_lithium_x``).
        """
        scene = self._scene
        times = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        fraction = _lithiation(self.config, self.scenario, scene.adjacency, scene.source,
                               times, scene.rate_per_s)
        atoms: np.ndarray = fraction * self._atoms_per_fraction()
        return atoms

    def _atoms_per_fraction(self) -> np.ndarray:
        from lithoscope.service.operando.echem import silicon_atoms

        scene = self._scene
        x_full = scene.volume_swelling / _SWELLING_PER_X
        atoms: np.ndarray = np.asarray(silicon_atoms(scene.radii_px * self.config.pixel_size_nm))
        scaled: np.ndarray = atoms * x_full
        return scaled

    def lithiation_current_a(self, t_s: np.ndarray) -> np.ndarray:
        """The current that carries the lithium entering the cluster: ``I = -e dN/dt``.

        Exact, from the lithiation model's own rate equation ``dx/dt = M x + b`` while
        the needle feeds the cluster, and zero otherwise (after withdrawal the lithium
        drains into particles out of view without any current: it only moves).
        Negative: cathodic, lithiating, as EC-Lab signs a reduction.

        The particles exchange lithium *fractions* on the contact graph, so between
        particles of unequal size the exchange itself changes the atom count a little;
        the current is defined from the atom count, so it is the lithium the cluster
        gained, whatever the exchange did.
        """
        from lithoscope.service.operando.echem import ELEMENTARY_CHARGE_C

        c = self.config
        scene = self._scene
        times = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        out = np.zeros(times.size)
        start = scene.lithium_start_s
        if start is None:
            return out
        charging = (times >= start) & (times < c.withdraw_s)
        if not charging.any():
            return out
        n = scene.adjacency.shape[0]
        laplacian = np.diag(scene.adjacency.sum(axis=1)).astype(float) - scene.adjacency
        matrix = -c.diffusion_rate_per_s * laplacian
        matrix[scene.source, scene.source] -= scene.rate_per_s
        feed = np.zeros(n)
        feed[scene.source] = scene.rate_per_s
        x = _evolve(matrix, feed, np.zeros(n), times[charging] - start)
        rate = x @ matrix.T + feed
        out[charging] = -ELEMENTARY_CHARGE_C * (rate @ self._atoms_per_fraction())
        return out

    def bias_at(self, t_s: np.ndarray) -> np.ndarray:
        """The needle's bias at any times (not only frame times), V."""
        c = self.config
        times = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
        on = self.scenario.bias_applied & (times >= c.bias_on_s) & (times < c.withdraw_s)
        return np.where(on, float(c.bias_v), 0.0)

    def close(self) -> None:
        """Mark the source closed; rendering afterwards raises SourceError."""
        self._closed = True
