"""Operando context of each analysed frame: electrochemistry, electron dose, lithium.

:class:`OperandoContext` is the session's second small state machine beside the
:class:`~lithoscope.service.analysis.SessionAnalyzer`: it takes the analyser's output
for a frame (cluster values, particle columns, alerts) plus what the frame and the
echem side stream say, and returns them with

* the bias, current and charge passed at the frame's time (:mod:`.echem`);
* the dose rate, the cumulative dose of the field, of each particle and of each
  region (:mod:`.dose`);
* the lithium bookkeeping: charge passed as Li atoms beside the Li taken up by the
  particles in view, and what is out of view;
* its own alerts: ``bias_without_expansion``, ``dose_rate_high`` and
  ``lithium_redistributed``; and every alert's ``context`` (bias, charge, dose of the
  particles concerned at that moment).

It never sees a socket or a file; the worker feeds it, and re-analysis could too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._options import options_from_dict, options_to_dict
from ..alerts import Alert
from ..errors import ConfigError
from ..protocol import EventKind
from ..schema import OPERANDO_VALUES
from .dose import DoseAccumulator, dose_rate_from_counts, region_levels, vacuum_sample
from .echem import ELEMENTARY_CHARGE_C, EchemTrace, lithium_terms

__all__ = ["OPERANDO_COLUMNS", "FrameContext", "OperandoConfig", "OperandoContext"]

OPERANDO_COLUMNS: tuple[str, ...] = OPERANDO_VALUES
"""Keys :meth:`OperandoContext.update` adds to the cluster values (and the ``operando``
archive table's ``operando`` columns, declared in :mod:`.schema`)."""


@dataclass(frozen=True, slots=True)
class OperandoConfig:
    """Options of the operando context. Defaults suit the simulator and a typical
    low-dose in situ biasing experiment."""

    clock_offset_s: float = 0.0
    """Added to echem sample times (instrument clock) to put them on the camera's clock,
    when the echem publisher does not set one itself (a publisher's non-zero offset wins)."""
    lithiation_current_sign: int = -1
    """Sign of the current that lithiates the sample: -1 (EC-Lab: reduction, cathodic
    current, is negative), +1 for an instrument that logs it positive."""
    bias_on_v: float = 0.1
    """|bias| at or above this counts as "bias applied"."""
    no_expansion_after_s: float = 30.0
    """``bias_without_expansion`` when a bias has been applied this long with no
    expansion onset (a thick LiOx layer, poor contact)."""
    dose_rate_limit_e_per_a2_s: float = 12.0
    """``dose_rate_high`` above this (operando work stays near 10 e/A^2/s so that the
    beam does not drive the chemistry; the estimate from counts reads a few % high)."""
    counts_per_electron: float | None = None
    """Camera conversion factor for the dose from counts; None: only metadata is used."""
    dark_level_counts: float = 0.0
    """Camera offset subtracted before converting counts."""
    dose_regions: int = 4
    """The field is divided into this many tiles per side for the per-region dose."""
    boundary_uncertainty_px: float = 0.5
    """Segmentation boundary error (pixels) propagated into the visible lithium."""
    lithium_hold_s: float = 2.0
    """A particle missing from a frame's sum (found merged with a neighbour, or not found)
    counts with its last lithium for this long, so that the visible total does not dip
    with segmentation flicker; longer gone, it has left the view."""
    redistribution_fraction: float = 0.1
    """After contact is lost, ``lithium_redistributed`` once the visible lithium has
    fallen by this fraction of its peak with the charge explaining under a quarter of it."""

    def __post_init__(self) -> None:
        if self.lithiation_current_sign not in (-1, 1):
            raise ConfigError("Expected lithiation_current_sign -1 or 1. "
                              f"Got {self.lithiation_current_sign!r}.")
        for name in ("bias_on_v", "no_expansion_after_s", "dose_rate_limit_e_per_a2_s",
                     "boundary_uncertainty_px", "redistribution_fraction",
                     "lithium_hold_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"Expected {name} > 0. Got {value!r}.")
        if not (isinstance(self.clock_offset_s, int | float)
                and math.isfinite(self.clock_offset_s)):
            raise ConfigError(f"Expected a finite clock_offset_s. Got {self.clock_offset_s!r}.")
        if self.counts_per_electron is not None and not self.counts_per_electron > 0:
            raise ConfigError(
                f"Expected counts_per_electron > 0. Got {self.counts_per_electron!r}.")
        if not (isinstance(self.dose_regions, int) and 1 <= self.dose_regions <= 64):
            raise ConfigError(f"Expected dose_regions in 1..64. Got {self.dose_regions!r}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperandoConfig:
        """Build from plain values (TOML, JSON, CLI); a ConfigError names a bad key."""
        return options_from_dict(cls, data, what="operando")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values; inverse of :meth:`from_dict`."""
        return options_to_dict(self)


@dataclass(frozen=True, slots=True)
class FrameContext:
    """What :meth:`OperandoContext.update` returns beside the enriched analysis."""

    row: dict[str, Any]
    """One row of the ``operando`` table (the :data:`OPERANDO_COLUMNS`, ``frame``, ``t_s``,
    ``dose_rate_source``)."""
    particle_rows: dict[str, np.ndarray]
    """``particle_dose`` table rows: ``track_id``, ``dose_e_per_a2``, ``lithium_atoms``."""
    region_rows: dict[str, np.ndarray]
    """``region_dose`` table rows: ``region_row``, ``region_col``, ``dose_rate_e_per_a2_s``,
    ``dose_e_per_a2``."""


class OperandoContext:
    """Electrochemistry, dose and lithium bookkeeping across one session's frames."""

    def __init__(self, config: OperandoConfig | None = None) -> None:
        self.config = config if config is not None else OperandoConfig()
        self.echem = EchemTrace()
        self.dose = DoseAccumulator(self.config.dose_regions)
        self._bias_since_s: float | None = None
        self._bias_alerted = False
        self._onset_since_bias = False
        self._dose_high = False
        self._contact_lost_at: tuple[float, float] | None = None
        """(visible Li, Li from charge) when contact was lost."""
        self._peak_visible = 0.0
        self._redistribution_alerted = False
        self._last: dict[str, float] = {}
        self._lithium_of: dict[int, tuple[float, float, float]] = {}
        """track id -> (t_s, atoms, sigma) when last measured: see ``lithium_hold_s``."""

    def _visible_lithium(self, particles: dict[str, np.ndarray], track_ids: list[int],
                         t_s: float, size: float) -> tuple[np.ndarray, float, float]:
        """Per-particle atoms, their sum and its sigma, with the particles missing from
        this frame for less than ``lithium_hold_s`` at their last value. A particle merged
        with its neighbour has no area of its own and the neighbour is not found at all:
        left out, both would take their lithium out of the sum for that frame."""
        if not (math.isfinite(size) and track_ids):
            return np.full(len(track_ids), np.nan), math.nan, math.nan
        atoms, sigma = lithium_terms(particles, pixel_size_nm=size,
                                     boundary_uncertainty_px=self.config.boundary_uncertainty_px)
        known = self._lithium_of
        for track, a, s in zip(track_ids, atoms.tolist(), sigma.tolist(), strict=True):
            if math.isfinite(a) and math.isfinite(s):
                known[track] = (t_s, a, s)
        hold = self.config.lithium_hold_s
        for track in [k for k, (seen, _, _) in known.items() if t_s - seen > hold]:
            del known[track]
        total = sum(a for _, a, _ in known.values())
        total_sigma = sum(s for _, _, s in known.values())
        return atoms, float(total), float(total_sigma)

    def add_echem(self, t_s: np.ndarray, bias_v: np.ndarray, current_a: np.ndarray) -> None:
        """Samples from the side stream, already on the session's clock (s since t0)."""
        self.echem.add(t_s, bias_v, current_a)

    def update(
        self, *, image: np.ndarray | None, t_s: float, index: int, pixel_size_nm: float | None,
        exposure_s: float | None, metadata: Mapping[str, Any], cluster: dict[str, Any],
        particles: dict[str, np.ndarray], alerts: list[Alert],
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Alert], FrameContext]:
        """Add the context to one analysed frame's results; returns them and the rows."""
        c = self.config
        size = pixel_size_nm if pixel_size_nm and math.isfinite(pixel_size_nm) else math.nan
        echem = self.echem.at(t_s)
        if not math.isfinite(echem["bias_v"]) and _finite(metadata.get("bias_v")):
            # A holder that writes bias into the frame metadata needs no side stream.
            echem["bias_v"] = float(metadata["bias_v"])
            if _finite(metadata.get("current_a")):
                echem["current_a"] = float(metadata["current_a"])

        # -- dose
        rate, source = math.nan, "none"
        sample = None
        if _finite(metadata.get("dose_rate_e_per_a2_s")):
            rate, source = float(metadata["dose_rate_e_per_a2_s"]), "metadata"
        elif (c.counts_per_electron is not None and image is not None and exposure_s
              and math.isfinite(size)):
            sample = vacuum_sample(image)
            rate = dose_rate_from_counts(image, counts_per_electron=c.counts_per_electron,
                                         exposure_s=exposure_s, pixel_size_nm=size,
                                         dark_level_counts=c.dark_level_counts, sample=sample)
            source = "counts"
        # Only a known rate is shared out by the tiles' levels (NaN times any level is
        # NaN, and adds no dose).
        levels = (region_levels(image, c.dose_regions, sample=sample)
                  if image is not None and math.isfinite(rate)
                  else np.ones((c.dose_regions, c.dose_regions)))
        track_ids = [int(i) for i in particles.get("track_id", [])]
        self.dose.update(t_s=t_s, rate_e_per_a2_s=rate, track_ids=track_ids,
                         region_rates=rate * levels, first_exposure_s=exposure_s or 0.0)
        particle_dose = np.array([self.dose.particles[i] for i in track_ids], dtype=np.float64)

        # -- lithium
        atoms, visible, sigma = self._visible_lithium(particles, track_ids, t_s, size)
        from_charge = (c.lithiation_current_sign * echem["charge_c"] / ELEMENTARY_CHARGE_C
                       if math.isfinite(echem["charge_c"]) else math.nan)
        out_of_view = from_charge - visible if math.isfinite(from_charge) else math.nan

        values = {**echem, "dose_rate_e_per_a2_s": rate, "dose_e_per_a2": self.dose.field_e_per_a2,
                  "lithium_from_charge": from_charge, "lithium_visible": visible,
                  "lithium_visible_sigma": sigma, "lithium_out_of_view": out_of_view}
        self._last = values
        cluster = {**cluster, **values}
        particles = {**particles, "dose_e_per_a2": particle_dose, "lithium_atoms": atoms}

        new = self._alerts(t_s, index, echem, rate, visible, from_charge, alerts)
        context_of = {int(t): float(d) for t, d in zip(track_ids, particle_dose, strict=True)}
        enriched = [self._with_context(a, context_of) for a in [*alerts, *new]]
        grid = c.dose_regions
        rows, cols = np.divmod(np.arange(grid * grid), grid)
        frame_context = FrameContext(
            row={"frame": index, "t_s": t_s, "dose_rate_source": source, **values},
            particle_rows={"track_id": np.asarray(track_ids, dtype=np.int64),
                           "dose_e_per_a2": particle_dose, "lithium_atoms": atoms},
            region_rows={"region_row": rows, "region_col": cols,
                         "dose_rate_e_per_a2_s": (rate * levels).ravel(),
                         "dose_e_per_a2": self.dose.regions.ravel().copy()})
        return cluster, particles, enriched, frame_context

    # -- alerts ----------------------------------------------------------------------
    def _alerts(self, t_s: float, index: int, echem: Mapping[str, float], rate: float,
                visible: float, from_charge: float, alerts: list[Alert]) -> list[Alert]:
        c = self.config
        out: list[Alert] = []
        kinds = {a.kind for a in alerts}
        bias = echem["bias_v"]
        if math.isfinite(bias) and abs(bias) >= c.bias_on_v:
            if self._bias_since_s is None:
                self._bias_since_s, self._bias_alerted, self._onset_since_bias = t_s, False, False
        elif math.isfinite(bias):
            self._bias_since_s = None
        if EventKind.EXPANSION_ONSET in kinds:
            self._onset_since_bias = True
        if (self._bias_since_s is not None and not self._bias_alerted
                and not self._onset_since_bias
                and t_s - self._bias_since_s >= c.no_expansion_after_s):
            self._bias_alerted = True
            out.append(Alert(
                kind=EventKind.BIAS_WITHOUT_EXPANSION, t_s=self._bias_since_s, frame=index,
                magnitude=float(bias), confidence=1.0, particle_ids=(),
                message=f"Bias {bias:+.2f} V applied for {t_s - self._bias_since_s:.0f} s and no "
                "expansion: thick LiOx layer or poor contact? (a higher bias may be needed)"))

        if math.isfinite(rate) and rate > c.dose_rate_limit_e_per_a2_s:
            if not self._dose_high:
                self._dose_high = True
                out.append(Alert(
                    kind=EventKind.DOSE_RATE_HIGH, t_s=t_s, frame=index, magnitude=rate,
                    confidence=1.0, particle_ids=(),
                    message=f"Dose rate {rate:.1f} e/Å²/s exceeds the limit of "
                    f"{c.dose_rate_limit_e_per_a2_s:g}: the beam may drive the chemistry."))
        elif math.isfinite(rate) and rate <= 0.9 * c.dose_rate_limit_e_per_a2_s:
            self._dose_high = False

        if math.isfinite(visible):
            if EventKind.CONTACT_MADE in kinds:
                self._contact_lost_at, self._redistribution_alerted = None, False
                self._peak_visible = visible
            if EventKind.CONTACT_LOST in kinds:
                self._contact_lost_at = (visible, from_charge if math.isfinite(from_charge)
                                         else 0.0)
                self._peak_visible = visible
            self._peak_visible = max(self._peak_visible, visible)
            if self._contact_lost_at is not None and not self._redistribution_alerted:
                _, charge_then = self._contact_lost_at
                drop = self._peak_visible - visible
                charge_change = abs((from_charge if math.isfinite(from_charge) else 0.0)
                                    - charge_then)
                if (self._peak_visible > 0
                        and drop >= c.redistribution_fraction * self._peak_visible
                        and charge_change < 0.25 * drop):
                    self._redistribution_alerted = True
                    out.append(Alert(
                        kind=EventKind.LITHIUM_REDISTRIBUTED, t_s=t_s, frame=index,
                        magnitude=drop / self._peak_visible, confidence=1.0, particle_ids=(),
                        message=f"Visible lithium fell {drop:.3g} atoms "
                        f"({100 * drop / self._peak_visible:.0f} % of its peak) with no current "
                        "flowing: redistribution out of view."))
        return out

    def _with_context(self, alert: Alert, particle_dose: Mapping[int, float]) -> Alert:
        at = self.echem.at(alert.t_s) if len(self.echem) else {}
        context: dict[str, Any] = {**self._last, **{k: v for k, v in at.items()
                                                   if math.isfinite(v)}}
        ids = alert.particle_ids or tuple(particle_dose)
        context["particle_dose_e_per_a2"] = {str(i): particle_dose[i] for i in ids
                                             if i in particle_dose}
        context = {k: v for k, v in context.items()
                   if not (isinstance(v, float) and not math.isfinite(v))}
        message = alert.message
        if alert.kind is EventKind.EXPANSION_ONSET and "bias_v" in context:
            charge = context.get("charge_c")
            message += f" Bias {context['bias_v']:+.2f} V" + (
                f", {_charge_text(charge)} passed." if charge is not None else ".")
        return dataclasses.replace(alert, context={**alert.context, **context}, message=message)


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _charge_text(charge_c: float) -> str:
    for scale, unit in ((1e-3, "mC"), (1e-6, "µC"), (1e-9, "nC"), (1e-12, "pC")):
        if abs(charge_c) >= scale:
            return f"{charge_c / scale:.3g} {unit}"
    return f"{charge_c / 1e-15:.3g} fC"


def bookkeeping_summary(operando: Mapping[str, np.ndarray]) -> dict[str, float] | None:
    """The lithium bookkeeping of a session from its ``operando`` table, or None.

    ``charge_c`` and ``lithium_from_charge`` at the end; the visible lithium and its
    sigma at its peak (``peak_*``) and at the end (``end_*``); ``uptake_fraction``:
    visible over charge-derived lithium at the peak; ``out_of_view_end``.
    """
    t = np.asarray(operando.get("t_s", []), dtype=np.float64)
    visible = np.asarray(operando.get("lithium_visible", []), dtype=np.float64)
    charge = np.asarray(operando.get("lithium_from_charge", []), dtype=np.float64)
    if not t.size or not np.isfinite(charge).any():
        return None
    sigma = np.asarray(operando["lithium_visible_sigma"], dtype=np.float64)
    peak = int(np.nanargmax(visible)) if np.isfinite(visible).any() else -1
    end = int(np.flatnonzero(np.isfinite(charge))[-1])
    return {
        "charge_c": float(operando["charge_c"][end]),
        "lithium_from_charge": float(charge[end]),
        "peak_t_s": float(t[peak]),
        "peak_visible": float(visible[peak]),
        "peak_sigma": float(sigma[peak]),
        "peak_from_charge": float(charge[peak]),
        "uptake_fraction": float(visible[peak] / charge[peak]) if charge[peak] else math.nan,
        "end_t_s": float(t[end]),
        "end_visible": float(visible[end]),
        "end_sigma": float(sigma[end]),
        "out_of_view_end": float(charge[end] - visible[end]),
    }
