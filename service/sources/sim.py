"""A simulated operando lithiation experiment: the twin of a live TEM camera.

The scene is a bright-field TEM movie of a silicon nanoparticle cluster being
lithiated by a tungsten needle:

* bright vacuum with a smooth illumination gradient and a small per-frame
  brightness flicker;
* silicon particles touching each other in one connected cluster, drawn in one of
  two looks (``SimConfig.particle_look``): grey discs (mass-thickness contrast,
  slightly darker in the middle where they are thicker), or crystals as bright-field
  TEM shows them (each its own darkness, moving bend contours and thickness fringes,
  faceted or irregular outlines, amorphous shells; a textured support film and
  separate particles beside the cluster, some cut by the frame edge);
* an opaque tungsten needle entering from one edge, its tip coated with a thinner,
  lighter grey LiOx layer (the solid electrolyte). It approaches the cluster,
  touches it at ``contact_s``, a bias is applied at ``bias_on_s``, and it is
  withdrawn at ``withdraw_s`` (the ``no_needle`` scenario has no needle in view:
  the first minutes of a session);
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

The simulator is four modules behind this one: :mod:`.sim_config` (the options,
:class:`SimConfig`, and the scenarios, :data:`SCENARIOS`), :mod:`.sim_scene` (geometry
and lithiation of every frame, no pixels), :mod:`.sim_render` (one frame's pixels and
truth) and :mod:`.sim_crystal` (the crystal look). :mod:`.sim_draws` draws a config's
physics from ranges.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo

from .sim_config import SCENARIOS, Scenario, SimConfig
from .sim_render import _render
from .sim_scene import SWELLING_PER_X, _evolve, _lithiation, _Scene

__all__ = ["SCENARIOS", "Scenario", "SimConfig", "SimulatedSource"]


class SimulatedSource(SourceBase):
    """Frames of a simulated lithiation experiment, with their ground truth.

    Parameters
    ----------
    config : SimConfig, optional
        Options; defaults to ``SimConfig()``.
    scenario : str
        One of :data:`SCENARIOS` (default ``lithiation``); a scenario's overrides
        replace the config's values.

    Notes
    -----
    Frames are deterministic for a given config (including its seed): frame ``i``
    is the same whether it is rendered first, last or alone. ``t_s = index / fps``.
    The source does not pace itself; ``info.live`` is True because a publisher
    streaming it should behave as for a camera.

    Each frame's ``truth`` holds ``cluster_area_px`` (pixels of the union of the
    particles as rendered and not hidden by the needle or the grid bar: every
    particle in view, separate ones included), ``particle_count``, ``needle_contact``,
    ``phase`` (``approach``, ``contact``, ``lithiation``, ``withdrawn``; ``no_needle``
    without a needle in view), and per particle, by id: ``particle_area_px`` (its
    rendered outline within the frame, overlaps counted in both),
    ``particle_visible_area_px`` and centroids, centres, lithium content and core
    radius. Frames carry ``needle_tip_row`` / ``needle_tip_col`` metadata only with a
    needle in view.

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
        metadata: dict[str, float] = {"bias_v": self._scene.bias_v(index)}
        if self.scenario.needle_in_view:
            tip = self._scene.tip[index] + self._scene.drift[index]
            metadata.update(needle_tip_row=float(tip[0]), needle_tip_col=float(tip[1]))
        metadata["dose_rate_e_per_a2_s"] = self.config.dose_rate_e_per_a2_s
        return SourceFrame(image=image, t_s=index / self.config.fps, index=index,
                           metadata=metadata, truth=truth)

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
        if not self.scenario.needle_in_view:
            return []
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
        x_full = scene.volume_swelling / SWELLING_PER_X
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

