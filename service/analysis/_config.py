"""Options of the per-frame analysis."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lithoscope.service.errors import ConfigError

from .._options import options_from_dict, options_to_dict

__all__ = ["AnalysisConfig"]


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """How frames are segmented and measured. Lengths and areas in input pixels.

    The defaults suit bright-field frames of a few hundred pixels across with
    particles tens of pixels in diameter; nothing in them is tuned to one movie.
    """

    binning: int = 1
    """Analyse frames binned by this factor (1: full resolution). Results are reported
    at input resolution either way; binning trades edge precision for speed."""
    smoothing_sigma_px: float = 1.5
    """Gaussian smoothing before thresholding, against shot noise."""
    background_sigma_px: float = 64.0
    """Length scale of the illumination gradient: the vacuum level is interpolated
    across objects by normalized convolution at this scale."""
    dark_level_counts: float = 0.0
    """Camera offset: what a fully opaque object reads. Subtracted before flattening."""
    particle_min_contrast: float = 0.15
    """Particles are at least this much darker than vacuum (relative). Caps the Otsu
    threshold so that a frame with no particles yields none."""
    needle_threshold_fraction: float = 0.3
    """The opaque needle reads below this fraction of the local vacuum level."""
    needle_min_area_px: int = 400
    """Smallest dark, edge-connected region taken for the needle."""
    needle_layer_px: int = 6
    """Grey pixels within this distance of the opaque needle belong to it (its LiOx
    coating and the blurred rim of the metal), not to a particle."""
    grid_rim_px: int = 3
    """Pixels within this distance of an opaque grid bar are its blurred rim, not particle."""
    needle_contact_px: int = 2
    """A particle touches the needle if it comes within this many pixels of it."""
    min_particle_area_px: int = 100
    """Foreground regions smaller than this are noise, not particles."""
    split_touching: bool = True
    """Split touching particles (centres and radii from the distance transform, each
    pixel to the disc it lies deepest inside)."""
    split_min_distance_px: int = 10
    """Two particle centres closer than this are taken for one particle when splitting;
    particles of radius under half of it are not split off."""

    def __post_init__(self) -> None:
        if self.binning < 1:
            raise ConfigError(f"Expected binning >= 1. Got {self.binning!r}.")
        for name in ("smoothing_sigma_px", "dark_level_counts", "needle_layer_px",
                     "needle_contact_px", "min_particle_area_px", "grid_rim_px",
                     "needle_min_area_px"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"Expected {name} >= 0. Got {value!r}.")
        if not self.background_sigma_px > 0:
            raise ConfigError(
                f"Expected background_sigma_px > 0. Got {self.background_sigma_px!r}."
            )
        if not 0 < self.particle_min_contrast < 1:
            raise ConfigError(
                f"Expected particle_min_contrast in (0, 1). Got {self.particle_min_contrast!r}."
            )
        if not 0 < self.needle_threshold_fraction < 1 - self.particle_min_contrast:
            raise ConfigError(
                "Expected 0 < needle_threshold_fraction < 1 - particle_min_contrast. "
                f"Got {self.needle_threshold_fraction!r}."
            )
        if self.split_min_distance_px < 1:
            raise ConfigError(
                f"Expected split_min_distance_px >= 1. Got {self.split_min_distance_px!r}."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisConfig:
        """Build from plain values (TOML, JSON, CLI); a ConfigError names a bad key."""
        return options_from_dict(cls, data, what="analysis")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values; inverse of :meth:`from_dict`."""
        return options_to_dict(self)
