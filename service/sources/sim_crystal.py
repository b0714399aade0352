"""Crystalline particles as bright-field TEM shows them: the simulator's ``crystal`` look.

Silicon is crystalline before lithiation, and a first real movie shows crystals, not the
smooth grey discs of mass-thickness contrast:

* each particle its own darkness: diffraction contrast depends on how each crystal is
  oriented to the beam, not only on its thickness;
* inside a crystal, a dark bend contour (where the lattice bends through the Bragg
  condition) and thickness fringes parallel to its outline, both moving with time (the
  specimen warms, bends and tilts under the beam);
* faceted (convex polygons of 5-8 sides) and irregular (smoothly wobbling, no neck)
  outlines;
* amorphous shells (no diffraction contrast, lighter): native on some particles, and
  grown in every particle by lithiation as its crystalline core shrinks;
* a textured amorphous support film (grain a pixel or two across, fixed to the specimen).

None of the contrast moves an outline, so the truth counted on the outlines stays exact.
Each particle's look is drawn once (:func:`draw_looks`); :func:`draw_crystal` renders it
at any time, size and position; :func:`outline_points` gives the dense outline the
needle's contact geometry is computed on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .sim_config import SimConfig

_SHIFT = 4
"""Fixed-point bits for OpenCV polygon filling: sub-pixel outlines move smoothly."""
_OUTLINE_POINTS = 720
"""Points of a dense outline (contact geometry): under half a pixel apart on a
particle 100 px across."""
_SHELL_DARKNESS = 0.6
"""An amorphous shell absorbs this share of its crystal's darkness (same mass
thickness, no diffraction contrast)."""
_FRINGE_CYCLES_PER_S = 0.3
"""How fast thickness fringes drift inwards (cycles per second)."""


@dataclass(frozen=True, slots=True)
class CrystalLook:
    """One particle's look, drawn once; lengths in units of the particle's radius."""

    outline: np.ndarray
    """(K, 2) (row, col) outline around the centre, for a radius of 1."""
    darkness: float
    bend_angle: float
    bend_offset: float
    bend_direction: float
    native_shell: float
    """Thickness of the native amorphous shell (0: none)."""
    fringe_period: float
    fringe_phase: float


def _unit_outline(rng: np.random.Generator, faceted: bool) -> np.ndarray:
    """(K, 2) (row, col) outline of radius about 1 around the origin."""
    if faceted:
        sides = int(rng.integers(5, 9))
        angles = rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
        angles += rng.uniform(-0.12, 0.12, sides) * 2 * np.pi / sides
        # Vertices a little beyond the circumscribing radius, so the polygon holds the
        # disc the cluster was built from (touching neighbours stay touching).
        radii = rng.uniform(0.95, 1.05, sides) / math.cos(math.pi / sides)
        points = np.column_stack([radii * np.sin(angles), radii * np.cos(angles)])
        hull = cv2.convexHull(points[:, ::-1].astype(np.float32)).reshape(-1, 2)
        return hull[:, ::-1].astype(np.float64)
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0, 0.12 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.column_stack([wobble * np.sin(theta), wobble * np.cos(theta)])


def draw_looks(config: SimConfig, count: int) -> list[CrystalLook]:
    """The looks of ``count`` particles, from ``config.seed`` (its own random stream, so
    the rest of the scene does not depend on the look)."""
    rng = np.random.default_rng([config.seed, 0xC7])
    looks = []
    for _ in range(count):
        faceted = bool(rng.uniform() < config.faceted_fraction)
        shell = bool(rng.uniform() < config.shell_fraction)
        looks.append(CrystalLook(
            outline=_unit_outline(rng, faceted),
            darkness=float(rng.uniform(*config.crystal_darkness)),
            bend_angle=float(rng.uniform(0, np.pi)),
            bend_offset=float(rng.uniform(-0.6, 0.6)),
            bend_direction=float(rng.choice([-1.0, 1.0])),
            native_shell=float(rng.uniform(0.12, 0.2)) if shell else 0.0,
            fringe_period=float(1.0 / rng.uniform(2.5, 4.0)),
            fringe_phase=float(rng.uniform(0, 2 * np.pi))))
    return looks


def outline_points(look: CrystalLook) -> np.ndarray:
    """(``_OUTLINE_POINTS``, 2) points evenly along the closed outline (radius 1)."""
    closed = np.vstack([look.outline, look.outline[:1]])
    step = np.hypot(*np.diff(closed, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(step)])
    at = np.linspace(0.0, along[-1], _OUTLINE_POINTS, endpoint=False)
    return np.column_stack([np.interp(at, along, closed[:, 0]),
                            np.interp(at, along, closed[:, 1])])


def max_extent(look: CrystalLook) -> float:
    """The outline's farthest point from the centre (radius 1)."""
    return float(np.hypot(*look.outline.T).max())


def draw_crystal(look: CrystalLook, config: SimConfig, *, centre: np.ndarray, radius: float,
                 core_radius: float, gain: float, t_s: float,
                 window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The particle's mask and transmission within ``window`` (row0, row1, col0, col1).

    ``core_radius`` is the crystalline core's size in the units of ``radius`` (the
    outline scaled by it bounds the core); outside it the particle is amorphous
    (native shell or lithiated), lighter by ``gain``.
    """
    r0, r1, c0, c1 = window
    shape = (r1 - r0, c1 - c0)
    origin = np.array([r0, c0], np.float64)

    def fill(scale: float) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        points = (centre - origin + look.outline * scale)[:, ::-1] * (1 << _SHIFT)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
        return mask

    mask = fill(radius)
    inside = mask.view(np.bool_)
    value = np.ones(shape, np.float32)
    if not inside.any():
        return inside, value
    core_scale = min(core_radius, radius * (1.0 - look.native_shell))
    core = fill(core_scale).view(np.bool_) & inside if core_scale > 0 else np.zeros_like(inside)
    amorphous = 1.0 - _SHELL_DARKNESS * look.darkness + gain
    value[inside] = amorphous
    if core.any():
        rows, cols = np.nonzero(core)
        y = rows + (r0 - centre[0])
        x = cols + (c0 - centre[1])
        across = x * math.cos(look.bend_angle) + y * math.sin(look.bend_angle)
        px = config.pixel_size_nm
        offset = (look.bend_offset * core_scale + look.bend_direction
                  * config.bend_contour_speed_nm_per_s / px * t_s)
        offset = (offset + core_scale) % (2 * core_scale) - core_scale
        width = max(1.5, core_scale / 5)
        bend = config.bend_contour_darkness * np.exp(-((across - offset) / width) ** 2)
        depth = cv2.distanceTransform(mask, cv2.DIST_L2, 5)[rows, cols]
        period = max(3.0, radius * look.fringe_period)
        fringe = config.fringe_amplitude * np.cos(
            2 * np.pi * (depth / period + _FRINGE_CYCLES_PER_S * t_s) + look.fringe_phase)
        value[rows, cols] = 1.0 - look.darkness - bend + fringe
    np.clip(value, 0.03, 0.97, out=value, where=inside)
    return inside, value


def support_grain(config: SimConfig, pad: int) -> np.ndarray:
    """The support film's grain, relative, ``pad`` px beyond the frame on every side
    (the film drifts with the specimen)."""
    rows, cols = config.shape
    rng = np.random.default_rng([config.seed, 0x6A])
    noise = rng.standard_normal((rows + 2 * pad, cols + 2 * pad)).astype(np.float32)
    grain: np.ndarray = cv2.GaussianBlur(noise, (0, 0), 1.0)
    scaled: np.ndarray = grain * np.float32(config.support_texture / max(float(grain.std()), 1e-6))
    return scaled


def shifted_grain(grain: np.ndarray, pad: int, shift: np.ndarray,
                  shape: tuple[int, int]) -> np.ndarray:
    """The grain under the frame when the specimen has drifted by ``shift`` (row, col)."""
    matrix = np.array([[1, 0, shift[1] - pad], [0, 1, shift[0] - pad]], np.float32)
    out: np.ndarray = cv2.warpAffine(grain, matrix, (shape[1], shape[0]),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out
