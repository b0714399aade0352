"""Real-looking crystalline particles on a support, exact in their truth: the scene a
real session opens on (silicon is crystalline before lithiation, and no needle need
be in view).

:func:`render_particle_field` draws frame ``index`` of a sequence of separated
particles, as bright-field TEM shows them and as a first real movie looks:

* each particle its own darkness: diffraction contrast depends on how each crystal
  is oriented to the beam, not only on its thickness;
* inside a particle, a dark bend contour (where the lattice bends through the Bragg
  condition) and thickness fringes parallel to its facets, both moving from frame to
  frame (the specimen warms, bends and tilts under the beam);
* faceted (polygons of 4-8 sides, convex) and irregular (smoothly wobbling outline,
  no neck) shapes;
* some particles wrapped in a lighter amorphous shell (lithiated LixSi, no
  diffraction contrast), part of the particle;
* particles cut by the frame edge;
* a textured amorphous support (carbon film): grain a pixel or two across, a few
  per cent of the beam, fixed to the specimen;
* the microscope's blur and Poisson shot noise.

None of the contrast moves an outline, so the truth (``labels``: one int32 label per
particle, 0 the support) is exact in every frame. Stateless: any frame, any order.

This is a still field with a label image, for scoring segmentation one frame at a time
(``bench/realdata.py``, ``tests/service/sources/test_particles.py``). The same contrast
model in a whole experiment (a cluster, the needle, lithiation, drift; truth per frame
through :class:`~lithoscope.service.sources.sim.SimulatedSource`) is the simulator's
``crystal`` look (:mod:`.sim_crystal`; scenarios ``crystalline`` and ``no_needle``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lithoscope.service.errors import ConfigError

__all__ = ["ParticleFieldConfig", "render_particle_field"]

_PSF_SIGMA_PX = 0.8
"""Point-spread function of the microscope plus camera (Gaussian sigma, pixels)."""


@dataclass(frozen=True, slots=True)
class ParticleFieldConfig:
    """A sequence of crystalline particles on a support, no needle."""

    shape: tuple[int, int] = (512, 512)
    diameter_px: float = 60.0
    """Typical particle diameter; each particle's is drawn within +-30 % of it."""
    count: int = 12
    """Particles placed (fewer if they do not fit apart)."""
    seed: int = 0
    dose_counts: float = 200.0
    """Mean counts of a support pixel (the shot noise follows)."""
    darkness: tuple[float, float] = (0.15, 0.45)
    """Range of the particles' own darkness (1 - transmission), one draw each."""
    bend_contour_darkness: float = 0.25
    """Extra darkness at the centre of a particle's bend contour."""
    bend_contour_speed_px: float = 2.0
    """How far a bend contour moves per frame."""
    fringe_amplitude: float = 0.05
    """Thickness fringes: +- this much transmission, parallel to the outline."""
    faceted_fraction: float = 0.5
    """Fraction of particles drawn as convex polygons; the rest have irregular outlines."""
    shell_fraction: float = 0.3
    """Fraction of particles wrapped in a lighter amorphous shell."""
    support_texture: float = 0.04
    """Relative amplitude of the support's grain."""
    edge_cut: bool = True
    """Place some particles across the frame edge."""

    def __post_init__(self) -> None:
        if not (len(self.shape) == 2 and min(self.shape) >= 16):
            raise ConfigError(f"Expected a shape of at least 16x16. Got {self.shape!r}.")
        if not (math.isfinite(self.diameter_px) and 4 <= self.diameter_px
                <= min(self.shape)):
            raise ConfigError(
                "Expected 4 <= diameter_px <= the frame's short side. "
                f"Got {self.diameter_px!r}.")
        low, high = self.darkness
        if not 0 < low <= high < 1:
            raise ConfigError(
                f"Expected 0 < darkness[0] <= darkness[1] < 1. Got {self.darkness!r}.")
        for name in ("dose_counts",):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expected {name} > 0. Got {getattr(self, name)!r}.")
        for name in ("faceted_fraction", "shell_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"Expected {name} in [0, 1]. Got {getattr(self, name)!r}.")


def _outline(rng: np.random.Generator, centre: np.ndarray, radius: float,
             faceted: bool) -> np.ndarray:
    """(K, 2) float (x, y) vertices of one particle's outline."""
    if faceted:
        sides = int(rng.integers(4, 9))
        angles = rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
        angles += rng.uniform(-0.15, 0.15, sides) * 2 * np.pi / sides
        radii = radius * rng.uniform(0.9, 1.1, sides)
        points = np.column_stack([centre[1] + radii * np.cos(angles),
                                  centre[0] + radii * np.sin(angles)]).astype(np.float32)
        return cv2.convexHull(points).reshape(-1, 2).astype(np.float64)
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0, 0.12 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.column_stack([centre[1] + radius * wobble * np.cos(theta),
                            centre[0] + radius * wobble * np.sin(theta)])


@dataclass(frozen=True, slots=True)
class _Particle:
    outline: np.ndarray
    centre: np.ndarray
    radius: float
    darkness: float
    bend_angle: float
    bend_offset: float
    bend_direction: float
    shell_px: float
    fringe_period_px: float
    fringe_phase: float


def _particles(config: ParticleFieldConfig) -> list[_Particle]:
    rng = np.random.default_rng(config.seed)
    rows, cols = config.shape
    placed: list[_Particle] = []
    for attempt in range(config.count * 200):
        if len(placed) == config.count:
            break
        radius = config.diameter_px / 2 * rng.uniform(0.7, 1.3)
        if config.edge_cut and attempt % 4 == 0:
            # Across an edge: the centre within half a radius of it, inside or out.
            side = int(rng.integers(4))
            along = rng.uniform(radius, (cols if side < 2 else rows) - radius)
            across = rng.uniform(-0.5, 0.5) * radius
            point = {0: (across, along), 1: (rows - 1 - across, along),
                     2: (along, across), 3: (along, cols - 1 - across)}[side]
            centre: np.ndarray = np.asarray(point, np.float64)
        else:
            centre = rng.uniform([radius, radius], [rows - radius, cols - radius])
        # Apart by a quarter of the larger diameter: separated, as on a support.
        if any(np.hypot(*(centre - p.centre)) < (radius + p.radius) * 1.25 + 2
               for p in placed):
            continue
        faceted = rng.uniform() < config.faceted_fraction
        shell = rng.uniform() < config.shell_fraction
        placed.append(_Particle(
            outline=_outline(rng, centre, radius, faceted), centre=centre, radius=radius,
            darkness=float(rng.uniform(*config.darkness)),
            bend_angle=float(rng.uniform(0, np.pi)),
            bend_offset=float(rng.uniform(-0.6, 0.6) * radius),
            bend_direction=float(rng.choice([-1.0, 1.0])),
            shell_px=float(rng.uniform(0.12, 0.2) * radius) if shell else 0.0,
            fringe_period_px=float(max(3.0, radius / rng.uniform(2.5, 4.0))),
            fringe_phase=float(rng.uniform(0, 2 * np.pi))))
    return placed


def render_particle_field(config: ParticleFieldConfig, index: int = 0,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of the sequence: (counts as uint16, true int32 labels).

    The particles, the support and the noise are drawn from ``config.seed`` (the
    noise also from ``index``); only the bend contours and the fringes move between
    frames.
    """
    rows, cols = config.shape
    labels = np.zeros(config.shape, np.int32)
    transmission = np.ones(config.shape, np.float32)
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    for number, particle in enumerate(_particles(config), start=1):
        mask = np.zeros(config.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(particle.outline * 16).astype(np.int32)], 1,
                     lineType=cv2.LINE_8, shift=4)
        inside = mask > 0
        labels[inside] = number
        depth = cv2.distanceTransform(mask, cv2.DIST_L2, 5)[inside]
        x, y = xx[inside] - particle.centre[1], yy[inside] - particle.centre[0]
        # The bend contour: a dark band across the crystal, moving every frame.
        across = x * math.cos(particle.bend_angle) + y * math.sin(particle.bend_angle)
        offset = particle.bend_offset + particle.bend_direction \
            * config.bend_contour_speed_px * index
        offset = (offset + particle.radius) % (2 * particle.radius) - particle.radius
        width = max(1.5, particle.radius / 5)
        bend = config.bend_contour_darkness * np.exp(-((across - offset) / width) ** 2)
        # Thickness fringes: parallel to the outline, drifting inwards.
        fringe = config.fringe_amplitude * np.cos(
            2 * np.pi * depth / particle.fringe_period_px + particle.fringe_phase + 0.5 * index)
        crystal = 1.0 - particle.darkness - bend + fringe
        if particle.shell_px > 0:
            # The amorphous shell: lighter, no diffraction contrast.
            shell = depth < particle.shell_px
            crystal = np.where(shell, 1.0 - 0.6 * particle.darkness, crystal)
        transmission[inside] = np.clip(crystal, 0.03, 0.97)
    rng = np.random.default_rng(config.seed)
    grain = cv2.GaussianBlur(rng.standard_normal(config.shape).astype(np.float32), (0, 0), 1.0)
    grain = grain * np.float32(config.support_texture / max(float(grain.std()), 1e-6))
    transmission = transmission * (np.float32(1.0) + grain)
    expected = config.dose_counts * cv2.GaussianBlur(transmission, (0, 0), _PSF_SIGMA_PX)
    noise = np.random.default_rng([config.seed, index])
    counts = noise.poisson(np.maximum(expected, 0.0).astype(np.float64))
    return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16), labels
