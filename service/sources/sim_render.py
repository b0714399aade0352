"""One frame of the simulated experiment: pixels and exact truth from a :class:`_Scene`.

The image model: transmission of each object (particles, the needle and its LiOx layer,
the grid bar), the microscope's blur, optional Fresnel fringes, the illumination and its
flicker, shot noise at the configured dose, the camera's gain, offset and defective
pixels. The truth is counted on the same masks the transmission is drawn from.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .sim_crystal import draw_crystal, max_extent, shifted_grain
from .sim_scene import SWELLING_PER_X, _Scene

# Constants of the optics and the camera, the same in every simulated session.
_PSF_SIGMA_PX = 0.8
"""Point-spread function of the microscope plus camera (Gaussian sigma, pixels)."""
_LITHIATED_TRANSMISSION_GAIN = 0.10
"""How much lighter a fully lithiated particle is (LixSi is less dense than Si)."""
_FRINGE_SIGMA_PX = 1.5
"""Width of the Fresnel fringe (the defocus spread), Gaussian sigma in pixels."""
_SATURATED_COUNTS = 65535
"""What a saturated pixel of the uint16 camera reads."""
_EXACT_POISSON_BELOW = 20.0
"""Pixels expecting fewer electrons than this get exact Poisson draws (there the normal
approximation's missing skew would show), the rest the normal approximation
N(lambda, lambda), which is much cheaper to draw."""

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
        gain = _LITHIATED_TRANSMISSION_GAIN * x
        if scene.looks:
            look = scene.looks[i]
            reach = radius * max_extent(look) + 1.0
            r0, r1 = max(0, math.floor(rc - reach)), min(rows, math.ceil(rc + reach) + 1)
            c0, c1 = max(0, math.floor(cc - reach)), min(cols, math.ceil(cc + reach) + 1)
            if r1 <= r0 or c1 <= c0:
                areas.append(0)
                continue
            inside, value = draw_crystal(
                look, config, centre=np.array([rc, cc]), radius=float(radius),
                core_radius=float(core_radii[i]), gain=gain, t_s=float(scene.times_s[index]),
                window=(r0, r1, c0, c1))
        else:
            r0, r1 = max(0, math.floor(rc - radius)), min(rows, math.ceil(rc + radius) + 1)
            c0, c1 = max(0, math.floor(cc - radius)), min(cols, math.ceil(cc + radius) + 1)
            d2 = ((np.arange(r0, r1, dtype=np.float32) - rc) ** 2)[:, None] + (
                (np.arange(c0, c1, dtype=np.float32) - cc) ** 2
            )[None, :]
            inside = d2 <= radius * radius
            dome = np.sqrt(np.clip(1.0 - d2 / (radius * radius), 0.0, 1.0))
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

    if scene.grain is not None:
        # The support film lies under the particles; the needle and the grid bar are
        # off it (and drawn over it).
        transmission *= 1.0 + shifted_grain(scene.grain, scene.grain_pad, shift, (rows, cols))
    needle = np.zeros((rows, cols), np.uint8)
    if scene.scenario.needle_in_view:
        _draw_needle(transmission, scene, index, core=config.needle_transmission,
                     layer=config.layer_transmission)
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
    x_li = scene.volume_swelling * lithium / SWELLING_PER_X
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

