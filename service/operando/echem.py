"""Electrochemistry beside the frames: alignment, charge, and the lithium bookkeeping.

Pure functions and one small stateful trace, no I/O:

* :func:`align_samples` puts a potentiostat's samples on frame times (linear
  interpolation; the instrument's clock mapped to the camera's by a configured offset,
  done by the caller);
* :func:`cumulative_charge_c` integrates the current (trapezoids);
* :class:`EchemBacklog` holds batches for sessions not open yet, within a byte budget;
* :class:`EchemTrace` keeps a session's samples as they arrive (out of order batches
  allowed) and answers "bias, current and charge at t";
* :func:`silicon_atoms` and :func:`visible_lithium` turn the analysis' per-particle
  volume expansion into a number of lithium atoms, with a propagated uncertainty.

The charge passed counts lithium *offered* to the cluster (every electron through the
external circuit is one Li\\ :sup:`+` reduced, if the current is all Faradaic and all
of it lithiates silicon); the volume expansion counts lithium *taken up* by the
particles in view. Their difference is what went elsewhere: side reactions, particles
out of view, or (after the needle lets go) lithium redistributing out of the field.
docs/analysis.md states the assumptions and the uncertainty.

References
----------
M. N. Obrovac and L. J. Krause, J. Electrochem. Soc. 154 (2007) A103 (volume linear in x).
CODATA 2018: elementary charge 1.602176634e-19 C (exact). Silicon: 2.329 g/cm^3,
28.0855 g/mol (CRC Handbook), i.e. 49.94 atoms/nm^3.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from .. import physics
from ..protocol import Echem

__all__ = [
    "ELEMENTARY_CHARGE_C",
    "EchemBacklog",
    "SILICON_ATOMS_PER_NM3",
    "EchemTrace",
    "align_samples",
    "cumulative_charge_c",
    "echem_message_bytes",
    "lithium_terms",
    "silicon_atoms",
    "visible_lithium",
]

ELEMENTARY_CHARGE_C = 1.602176634e-19
SILICON_ATOMS_PER_NM3 = 2.329 / 28.0855 * 6.02214076e23 * 1e-21
"""Atoms of crystalline Si per nm^3 (density / molar mass * Avogadro), 49.94."""


def align_samples(t_frames: np.ndarray, t_samples: np.ndarray, values: np.ndarray,
                  ) -> np.ndarray:
    """Values of a sampled signal at frame times, by linear interpolation.

    Samples need not be sorted; NaN samples are ignored. Frames outside the sampled
    span get NaN rather than the edge value: a bias from before the log started is
    unknown, not equal to its first reading.

    Parameters
    ----------
    t_frames : 1-D ndarray
        Frame times (s, camera clock).
    t_samples, values : 1-D ndarray
        Sample times (s, already on the camera clock) and values.
    """
    t = np.asarray(t_samples, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    out = np.full(np.shape(t_frames), np.nan)
    keep = np.isfinite(t) & np.isfinite(v)
    if not keep.any():
        return out
    t, v = t[keep], v[keep]
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    frames = np.asarray(t_frames, dtype=np.float64)
    inside = (frames >= t[0]) & (frames <= t[-1])
    out[inside] = np.interp(frames[inside], t, v)
    return out


def cumulative_charge_c(t_s: np.ndarray, current_a: np.ndarray) -> np.ndarray:
    """Charge passed since the first sample, C: the trapezoidal integral of the current.

    NaN currents count as zero (a gap in the log is not a current); ``t_s`` sorted.
    """
    t = np.asarray(t_s, dtype=np.float64)
    i = np.nan_to_num(np.asarray(current_a, dtype=np.float64))
    if t.size < 2:
        return np.zeros(t.size)
    steps = np.diff(t) * (i[1:] + i[:-1]) / 2.0
    return np.concatenate([[0.0], np.cumsum(steps)])


def echem_message_bytes(msg: Echem) -> int:
    """Memory a decoded echem batch holds, bytes (an upper estimate): each of its three
    columns is a list of Python floats, 8 bytes of list slot plus a 24-byte float
    object per sample, beside its strings."""
    text = len(msg.source) + len(msg.session_id or "")
    return 32 * (len(msg.t_unix) + len(msg.bias_v) + len(msg.current_a)) + 4 * text + 256


class EchemBacklog:
    """Echem batches that arrived before their session was open, oldest first.

    A potentiostat is usually started before the camera, so its first batches wait
    here for the session they belong to. The backlog is bounded in bytes (estimated by
    :func:`echem_message_bytes`), not in batches: a sender of a few huge batches must
    not hold the memory that a count bound sized for small ones would allow. Past
    ``max_bytes`` the oldest batches are dropped and counted in ``dropped``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.dropped = 0
        self._batches: collections.deque[tuple[Echem, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Echem]:
        return (msg for msg, _ in self._batches)

    def append(self, msg: Echem) -> None:
        size = echem_message_bytes(msg)
        self._batches.append((msg, size))
        self.nbytes += size
        while self.nbytes > self.max_bytes and self._batches:
            _, gone = self._batches.popleft()
            self.nbytes -= gone
            self.dropped += 1

    def take(self, session_id: str, *,
             accept: Callable[[Echem], bool] | None = None) -> list[Echem]:
        """Remove and return the batches for ``session_id`` and those naming no session,
        of those only the ones ``accept`` admits (the session's owner check)."""
        def wanted(msg: Echem) -> bool:
            return msg.session_id in (None, session_id) and (accept is None or accept(msg))

        taken = [msg for msg, _ in self._batches if wanted(msg)]
        kept = [(msg, size) for msg, size in self._batches if not wanted(msg)]
        self._batches = collections.deque(kept)
        self.nbytes = sum(size for _, size in kept)
        return taken


class EchemTrace:
    """A session's electrochemistry samples, as they arrive; answers at any time.

    Samples are kept sorted (batches from a tailer arrive in order; a replayed log may
    not). The charge is integrated over all samples so far, so a late batch that fills
    a gap changes the charge of later frames the next time it is asked for, never the
    ones already reported.
    """

    def __init__(self) -> None:
        self._t = np.zeros(0)
        self._bias = np.zeros(0)
        self._current = np.zeros(0)
        self._charge: np.ndarray | None = np.zeros(0)

    def __len__(self) -> int:
        return int(self._t.size)

    def add(self, t_s: np.ndarray, bias_v: np.ndarray, current_a: np.ndarray) -> None:
        """Add samples (times on the camera clock, s since the session's t0)."""
        t = np.asarray(t_s, dtype=np.float64)
        if not t.size:
            return
        in_order = not self._t.size or t.min() >= self._t[-1]
        self._t = np.concatenate([self._t, t])
        self._bias = np.concatenate([self._bias, np.asarray(bias_v, dtype=np.float64)])
        self._current = np.concatenate([self._current, np.asarray(current_a, dtype=np.float64)])
        if not (in_order and bool(np.all(np.diff(t) >= 0))):
            order = np.argsort(self._t, kind="stable")
            self._t, self._bias, self._current = (self._t[order], self._bias[order],
                                                  self._current[order])
        self._charge = None

    @property
    def last_t_s(self) -> float:
        return float(self._t[-1]) if self._t.size else math.nan

    def at(self, t_s: float) -> dict[str, float]:
        """``bias_v``, ``current_a``, ``charge_c`` at ``t_s`` and ``echem_age_s``.

        Inside the sampled span the values are interpolated. Past the last sample (live:
        the instrument's batch for this moment has not arrived yet) they hold the last
        sample, and ``echem_age_s`` says how old it is, so a reader can tell; before the
        first sample they are NaN.
        """
        if not self._t.size:
            return {"bias_v": math.nan, "current_a": math.nan, "charge_c": math.nan,
                    "echem_age_s": math.nan}
        if self._charge is None:
            self._charge = cumulative_charge_c(self._t, self._current)
        query = np.array([min(t_s, float(self._t[-1]))])
        bias = float(align_samples(query, self._t, self._bias)[0])
        current = float(align_samples(query, self._t, self._current)[0])
        charge = float(align_samples(query, self._t, self._charge)[0])
        return {"bias_v": bias, "current_a": current, "charge_c": charge,
                "echem_age_s": max(0.0, t_s - float(self._t[-1]))}


def silicon_atoms(radius_nm: np.ndarray | float) -> np.ndarray:
    """Si atoms in pristine spheres of the given radii (nm)."""
    r = np.asarray(radius_nm, dtype=np.float64)
    return SILICON_ATOMS_PER_NM3 * 4.0 / 3.0 * math.pi * r**3


def visible_lithium(particles: Mapping[str, Any], *, pixel_size_nm: float,
                    boundary_uncertainty_px: float = 0.5) -> tuple[np.ndarray, float, float]:
    """Lithium atoms in each particle in view, their sum and its 1-sigma uncertainty.

    Each particle is read as a sphere whose pristine radius comes from its reference
    (pre-contact) projected area ``A0 = area / (1 + relative_area_change)``; its Si
    atom count is ``n_Si 4/3 pi r0^3`` and it holds ``x N_Si`` lithium atoms, with ``x``
    the analysis' ``lithium_x`` (volume linear in x).

    The uncertainty propagates a boundary error of ``boundary_uncertainty_px`` pixels
    on both areas (relative area error ``2 delta / r``), into ``V/V0 = (A/A0)^1.5`` and
    into ``r0^3``, and adds particles linearly (a segmentation threshold moves every
    boundary the same way). It leaves out the model terms (shape, x-volume law),
    which docs/analysis.md discusses.

    Returns
    -------
    atoms : 1-D ndarray
        Per particle; NaN where the particle has no reference yet.
    total : float
        Sum over particles with a value (0 if none).
    sigma : float
        Its 1-sigma boundary uncertainty.
    """
    atoms, sigma = lithium_terms(particles, pixel_size_nm=pixel_size_nm,
                                 boundary_uncertainty_px=boundary_uncertainty_px)
    ok = np.isfinite(atoms) & np.isfinite(sigma)
    return atoms, float(atoms[ok].sum()), float(sigma[ok].sum())


def lithium_terms(particles: Mapping[str, Any], *, pixel_size_nm: float,
                  boundary_uncertainty_px: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Each particle's lithium atoms and its 1-sigma boundary uncertainty (NaN where
    the particle has no reference, or no area this frame): the terms
    :func:`visible_lithium` sums."""
    area = np.asarray(particles.get("area_nm2", []), dtype=np.float64)
    change = np.asarray(particles.get("relative_area_change", []), dtype=np.float64)
    x = np.asarray(particles.get("lithium_x", []), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = area / (1.0 + change)
        r0 = np.sqrt(reference / math.pi)
        n_si = silicon_atoms(r0)
        atoms = x * n_si
        relative_area_error = 2.0 * boundary_uncertainty_px * pixel_size_nm / r0
        volume = np.asarray(physics.volume_ratio(1.0 + change))
        sigma_x = volume * 1.5 * math.sqrt(2.0) * relative_area_error \
            / physics.VOLUME_EXPANSION_PER_X
        sigma_n_si = 1.5 * relative_area_error * n_si
        sigma = np.hypot(n_si * sigma_x, x * sigma_n_si)
    return atoms, sigma
