"""Options and scenarios of the simulated experiment.

:class:`SimConfig` holds every option of :class:`~lithoscope.service.sources.sim.SimulatedSource`
(lengths in nm, times in s since frame 0), validated on construction; :data:`SCENARIOS`
names what happens in each simulated experiment (bias or not, lithiation on contact, the
imaging conditions a scenario imposes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lithoscope.service._options import options_from_dict, options_to_dict
from lithoscope.service.errors import ConfigError

__all__ = ["SCENARIOS", "Scenario", "SimConfig"]

_EDGES = ("left", "right", "top", "bottom")
"""Image edges, for the needle and the grid bar."""



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
    needle_in_view: bool = True
    """False: no needle in the field (the first minutes of a session, before the needle
    is brought in): no contact, no bias, no lithiation."""


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
        Scenario(
            "crystalline",
            "The lithiation scenario on crystalline particles as bright-field TEM shows "
            "them: diffraction contrast, moving bend contours and thickness fringes, "
            "facets, amorphous shells, a textured support, separate and edge-cut particles.",
            bias_applied=True,
            overrides=(("particle_look", "crystal"),),
        ),
        Scenario(
            "no_needle",
            "The first minutes of a session: the crystalline particles, no needle in view, "
            "nothing happens.",
            bias_applied=False,
            overrides=(("particle_look", "crystal"),),
            needle_in_view=False,
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
    """Transmission of pristine Si at the rim of a particle (disc look)."""
    particle_centre_transmission: float = 0.45
    """Transmission of pristine Si through the centre of a particle (thickest there;
    disc look)."""
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
    the amorphous lithiated shell; the core shrinks as lithium comes in (disc look; a
    crystal's core has its own diffraction contrast)."""
    grid_bar: bool = False
    """An opaque copper grid bar along ``grid_edge``, touching the cluster."""
    grid_edge: str = "opposite"
    """The edge the grid bar runs along: ``opposite`` the needle, or any other edge by
    name (``left``, ``right``, ``top``, ``bottom``; not the needle's)."""
    grid_transmission: float = 0.03
    """Transmission of the copper grid bar (opaque)."""
    particle_look: str = "disc"
    """How particles are drawn: ``disc`` (mass-thickness contrast: round, darker in the
    middle where thicker) or ``crystal`` (as bright-field TEM shows crystals: faceted or
    irregular outlines, each its own darkness, moving bend contours and thickness
    fringes, amorphous shells; a textured support and separate particles, some cut by
    the frame edge). The options below up to ``edge_particle_count`` apply to
    ``crystal`` only."""
    crystal_darkness: tuple[float, float] = (0.15, 0.45)
    """Range of each crystal's own darkness (1 - transmission), one draw per particle:
    diffraction contrast depends on how the crystal is oriented to the beam."""
    bend_contour_darkness: float = 0.25
    """Extra darkness at the centre of a crystal's bend contour (where the lattice bends
    through the Bragg condition)."""
    bend_contour_speed_nm_per_s: float = 4.0
    """How fast bend contours sweep across their crystals (the specimen warms and bends
    under the beam)."""
    fringe_amplitude: float = 0.05
    """Thickness fringes parallel to a crystal's outline: +- this much transmission."""
    faceted_fraction: float = 0.5
    """Share of crystals drawn as convex polygons; the rest have smoothly irregular
    outlines."""
    shell_fraction: float = 0.3
    """Share of crystals wrapped in a lighter amorphous shell (no diffraction contrast)
    before any lithiation; lithiation grows an amorphous shell in every particle."""
    support_texture: float = 0.04
    """Relative amplitude of the amorphous support film's grain (fixed to the specimen)."""
    separate_particle_count: int = 4
    """Particles lying apart from the cluster on the support (fewer if they do not fit)."""
    edge_particle_count: int = 2
    """Of those, how many lie across a frame edge (cut by it)."""

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
                            "stage_jump_px", "bend_contour_speed_nm_per_s")
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
        if self.particle_look not in ("disc", "crystal"):
            raise ConfigError(
                f"Expected particle_look 'disc' or 'crystal'. Got {self.particle_look!r}.")
        low, high = self.crystal_darkness
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(
                "Expected crystal_darkness as (low, high) with 0 < low <= high < 1. "
                f"Got {self.crystal_darkness!r}.")
        for name in ("faceted_fraction", "shell_fraction", "bend_contour_darkness"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"Expected {name} in 0..1. Got {getattr(self, name)!r}.")
        for name in ("fringe_amplitude", "support_texture"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ConfigError(f"Expected {name} in 0..0.5. Got {getattr(self, name)!r}.")
        if not 0 <= self.edge_particle_count <= self.separate_particle_count:
            raise ConfigError(
                "Expected 0 <= edge_particle_count <= separate_particle_count. Got "
                f"{self.edge_particle_count!r} and {self.separate_particle_count!r}.")
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


