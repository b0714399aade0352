"""The simulated experiment's geometry and lithiation at every frame, in closed form.

:class:`_Scene` places the particle cluster, the needle and the grid bar, solves the
lithium content of every particle at every frame time (a linear system on the cluster's
contact graph, solved exactly), moves the particles apart as they swell, and fixes the
stage drift, stage jumps and camera defects. No pixels here: :mod:`.sim_render` draws a
frame from it.
"""

from __future__ import annotations

import math

import numpy as np

from lithoscope.service.errors import ConfigError

from .sim_config import Scenario, SimConfig
from .sim_crystal import CrystalLook, draw_looks, max_extent, outline_points, support_grain

_CONTACT_OVERLAP_PX = 1.0
"""While in contact, the layer presses this far into the particle, so they touch."""
_SNAP_GAP_NM = 4.0
"""On withdrawal the needle snaps free: the gap jumps to this before it grows."""
_HOT_PIXEL_GAIN = (3.0, 12.0)
"""Hot pixels read this many times the vacuum level (uniform range), unless they
saturate (``hot_pixels_saturate``)."""
SWELLING_PER_X = 2.8 / 3.75
"""Relative volume increase per Li per Si: Li15Si4 (x = 3.75) is +280 % (Obrovac and
Krause 2007); used only to report the truth's lithium content x."""



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
    needle presses on) stays put: the rest of the cluster moves away from it. With
    fixed centres, neighbours whose radii grow by a quarter would overlap by a third
    of their diameters, which no real clump shows.
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
    if not scenario.needle_in_view:
        return None
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
        n = config.particle_count
        self.looks: list[CrystalLook] = []
        self.outlines: list[np.ndarray] = []
        if config.particle_look == "crystal":
            self.looks = draw_looks(config, n + config.separate_particle_count)
            self.outlines = [outline_points(look) for look in self.looks]
            along_at_contact = np.array([
                _first_touch(self.centres[i] + self.radii_px[i] * self.outlines[i],
                             self.axis, normal, self.aim, tip_radius_px + layer_px)
                for i in range(n)])
        else:
            reach_radius = tip_radius_px + layer_px + self.radii_px
            met = lateral < reach_radius
            along_at_contact = np.where(
                met, self.centres @ self.axis
                - np.sqrt(np.clip(reach_radius**2 - lateral**2, 0, None)), np.inf)
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
        self.contact = ((times_s >= config.contact_s) & (times_s < config.withdraw_s)
                        & scenario.needle_in_view)

        # Foremost point of the metal (the tip apex), per frame: the coated tip disc
        # touches the source particle (radius as swollen, position as pushed) at the
        # gap, on the aiming line.
        source_centre = self.centres_t[:, self.source]
        h = float(self.lateral_px[self.source])
        if self.looks:
            # The coated tip meets the crystal's outline, not its disc.
            outline = (source_centre[:, None, :] + self.radii_t[:, self.source, None, None]
                       * self.outlines[self.source][None])
            along = _first_touch(outline, self.axis, normal, self.aim,
                                 tip_radius_px + layer_px) - gap
        else:
            touching = np.sqrt(np.clip(
                (tip_radius_px + layer_px + self.radii_t[:, self.source])**2 - h * h,
                0.0, None))
            along = source_centre @ self.axis - touching - gap
        self.tip = self.aim + self.axis * (along + tip_radius_px)[:, None]
        self.tip_radius_px = tip_radius_px
        self.layer_px = layer_px
        self.layer_length_px = config.needle_layer_length_nm / px
        self.taper = math.tan(math.radians(config.needle_taper_deg))
        self.grain: np.ndarray | None = None
        self.grain_pad = 0
        if self.looks:
            self._add_separate_particles(scenario)
            if config.support_texture > 0:
                self.grain_pad = math.ceil(self.wander_px) + 2
                self.grain = support_grain(config, self.grain_pad)

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

    def _add_separate_particles(self, scenario: Scenario) -> None:
        """Particles lying apart on the support, some across a frame edge: clear of the
        cluster at its most swollen, of the needle at its farthest in and of the grid
        bar; they never touch anything, so they never lithiate."""
        config = self.config
        rng = np.random.default_rng([config.seed, 0x5E9])
        rows, cols = config.shape
        n = config.particle_count
        # Clear of the cluster in every frame: its particles' widest reach.
        reach = self.radii_t.max(axis=0) * np.array(
            [max_extent(look) for look in self.looks[:n]])
        placed: list[tuple[np.ndarray, float, float]] = []
        tip = self.tip[int(np.argmax(self.tip @ self.axis))] - self.axis * self.tip_radius_px
        wanted = config.separate_particle_count
        edge_wanted = config.edge_particle_count
        low, high = config.particle_diameter_nm
        for _ in range(200 * wanted):
            if len(placed) == wanted:
                break
            radius = float(rng.uniform(low, high)) / 2.0 / config.pixel_size_nm
            extent = radius * max_extent(self.looks[n + len(placed)])
            if len(placed) < edge_wanted:
                # Across an edge: the centre within half a radius of it, inside or out.
                side = int(rng.integers(4))
                along = rng.uniform(extent, (cols if side < 2 else rows) - extent)
                across = rng.uniform(-0.5, 0.5) * radius
                point = {0: (across, along), 1: (rows - 1 - across, along),
                         2: (along, across), 3: (along, cols - 1 - across)}[side]
                centre = np.asarray(point, np.float64)
            else:
                centre = rng.uniform([extent, extent], [rows - extent, cols - extent])
            margin = extent + 4.0
            if np.any(np.hypot(*(self.centres_t - centre).transpose(2, 0, 1)) < reach + margin):
                continue
            if any(np.hypot(*(centre - c)) < e + margin for c, _, e in placed):
                continue
            if scenario.needle_in_view and not self._clear_of_needle(tip, centre, margin):
                continue
            if config.grid_bar:
                d, sign = self.grid_dim, self.grid_sign
                if sign * centre[d] + margin + self.wander_px > sign * self.grid_start_px:
                    continue
            placed.append((centre, radius, extent))
        frames = self.times_s.size
        for centre, radius, _ in placed:
            self.centres = np.vstack([self.centres, centre])
            self.radii_px = np.append(self.radii_px, radius)
            self.radii_t = np.hstack([self.radii_t, np.full((frames, 1), radius)])
            self.centres_t = np.concatenate(
                [self.centres_t, np.broadcast_to(centre, (frames, 1, 2))], axis=1)
            self.lithium = np.hstack([self.lithium, np.zeros((frames, 1))])
        self.looks = self.looks[:self.radii_px.size]
        self.outlines = self.outlines[:self.radii_px.size]
        total = self.radii_px.size
        adjacency = np.zeros((total, total), bool)
        adjacency[:n, :n] = self.adjacency
        self.adjacency = adjacency

    def _clear_of_needle(self, tip_centre: np.ndarray, point: np.ndarray,
                         margin: float) -> bool:
        """Whether a disc of radius ``margin`` at ``point`` is clear of the coated needle
        whose tip circle is centred at ``tip_centre``."""
        reach = self.tip_radius_px + self.layer_px + margin
        u = float((point - tip_centre) @ self.axis)
        v = abs(float((point - tip_centre) @ self.normal))
        if u >= 0:
            return math.hypot(u, v) > reach
        return v > reach * math.sqrt(1.0 + self.taper**2) + abs(u) * self.taper

    def phase(self, index: int) -> str:
        t_s = self.times_s[index]
        c = self.config
        if not self.scenario.needle_in_view:
            return "no_needle"
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




def _first_touch(points: np.ndarray, axis: np.ndarray, normal: np.ndarray, aim: np.ndarray,
                 reach: float) -> np.ndarray:
    """Where along ``axis`` a disc of radius ``reach`` moving along ``aim + s axis`` first
    meets any of ``points`` (..., K, 2): the smallest ``s`` (inf if it passes them by)."""
    lateral = np.abs((points - aim) @ normal)
    along = points @ axis - np.sqrt(np.clip(reach**2 - lateral**2, 0.0, None))
    result: np.ndarray = np.where(lateral < reach, along, np.inf).min(axis=-1)
    return result
