"""Options of the per-frame analysis."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lithoscope.service.errors import ConfigError

from .._options import options_from_dict, options_to_dict

__all__ = ["AnalysisConfig"]


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """How frames are segmented and measured.

    Lengths and areas (the ``*_px`` options) are given in pixels of
    ``reference_pixel_size_nm``: a silicon particle is the same number of nanometres
    across whether the camera bins 4096² to 512² or not, so one configuration serves
    every camera setting. :meth:`at_pixel_size` turns them into the pixels of an actual
    frame; a frame without a pixel size is taken at the reference size. The defaults
    suit bright-field frames with particles 20-100 nm across; nothing in them is tuned
    to one movie.
    """

    reference_pixel_size_nm: float = 0.5
    """The pixel size the ``*_px`` options are given at; 0 takes them in the input
    frame's own pixels whatever its pixel size (no rescaling, no automatic binning)."""
    binning: int = 0
    """Analyse frames binned by this factor. 0 (default): chosen per frame, the larger
    of the factor whose binned pixel is no larger than ``reference_pixel_size_nm``
    (1 without a pixel size) and the one that keeps the particles
    ``analysis_particle_diameter_px`` across. Results are reported at input
    resolution either way; each factor b costs b² less."""
    analysis_particle_diameter_px: float = 32.0
    """With automatic binning, frames are binned further while their particles stay
    at least this many analysis pixels across (sub-pixel areas keep A/A0 within 2 %
    there, docs/analysis.md); the particles' diameter is taken from
    ``particle_diameter_nm`` and the pixel size, else read off a coarse copy of each
    frame. 0: binned for the pixel size alone."""
    max_analysis_pixel_nm: float = 1.0
    """With a pixel size, automatic binning never makes an analysis pixel coarser than
    this (nm), whatever the particles allow: the needle's coating, the contact gap and
    the grid's rim are nanometres of specimen, and the analysis is validated down to
    1 nm pixels (``bench/accuracy.py``); at 1.6 nm the area beside the needle was
    lost (``bench/camera_sizes.py``, docs/analysis.md). 0: no limit."""
    particle_diameter_nm: float = 0.0
    """Typical diameter of the particles, nm, if known (0: not known; the defaults
    suit 20-100 nm). With a pixel size it sets the automatic binning without reading
    the scale off the frame, and each frame's measured particle diameter is checked
    against it (cluster value ``scale_mismatch``)."""
    smoothing_sigma_px: float = 1.5
    """Gaussian smoothing before thresholding, against shot noise."""
    background_sigma_px: float = 64.0
    """Length scale of the illumination gradient: the vacuum level is interpolated
    across objects by normalized convolution at this scale."""
    dark_level_counts: float = 0.0
    """Camera offset: what a fully opaque object reads. Subtracted before flattening."""
    particle_min_contrast: float = 0.05
    """Particles are at least this much darker than vacuum (relative): a floor under
    the noise cap below, for frames so clean that a few grey levels would count."""
    particle_noise_sigmas: float = 4.0
    """Particles are darker than vacuum by at least this many standard deviations of
    the vacuum's own fluctuation on the frame (shot noise and the support's texture,
    after smoothing). Caps the Otsu threshold so that a frame with no particles
    yields none."""
    needle_threshold_fraction: float = 0.3
    """The opaque needle reads below this fraction of the local vacuum level."""
    needle_min_area_px: int = 400
    """Smallest dark, edge-connected region taken for the needle."""
    needle_layer_px: int = 6
    """Grey pixels within this distance of the opaque needle always belong to it (the
    blurred rim of the metal and a thin coating), not to a particle; a thicker LiOx
    coating is measured in each frame (up to ``coating_max_px``)."""
    coating_max_px: int = 100
    """The thickest coating the needle's grey band is measured up to (50 nm at the
    reference 0.5 nm/px); its thickness is read from each frame."""
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

    subpixel_areas: bool = True
    """Measure areas with each outline placed between pixels, where the smoothed frame
    crosses the particle's own cut level (linear interpolation); False counts whole
    pixels. Keeps A/A0 within 2 % on a grid twice as coarse (docs/analysis.md)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.binning, int) and self.binning >= 0):
            raise ConfigError(f"Expected binning >= 0 (0: automatic). Got {self.binning!r}.")
        ref = self.reference_pixel_size_nm
        if not (isinstance(ref, int | float) and math.isfinite(ref) and ref >= 0):
            raise ConfigError(
                f"Expected reference_pixel_size_nm >= 0 (0: no rescaling). Got {ref!r}.")
        for name in ("analysis_particle_diameter_px", "particle_diameter_nm",
                     "max_analysis_pixel_nm",
                     "smoothing_sigma_px", "dark_level_counts", "needle_layer_px",
                     "needle_contact_px", "min_particle_area_px", "grid_rim_px", "coating_max_px",
                     "needle_min_area_px"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"Expected {name} >= 0. Got {value!r}.")
        sigmas = self.particle_noise_sigmas
        if not (isinstance(sigmas, int | float) and math.isfinite(sigmas) and sigmas >= 0):
            raise ConfigError(f"Expected particle_noise_sigmas >= 0. Got {sigmas!r}.")
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

    def at_pixel_size(self, pixel_size_nm: float | None) -> AnalysisConfig:
        """These options in the pixels of a frame of ``pixel_size_nm``, binning chosen.

        Sizes of things (particles, the needle, its coating, the gap that counts as
        contact) scale with the pixel size. Widths set by the optics and the noise (the
        smoothing, the blurred rim of the grid bar) and the illumination scale grow
        with finer pixels but do not shrink below their reference value with coarser
        ones: the camera's blur and noise are a pixel or two wide whatever the
        magnification.

        The result has ``reference_pixel_size_nm=0`` (its lengths are input pixels)
        and a binning >= 1; applying it again changes nothing. Integer options are
        rounded, and one that was positive stays at least 1.
        """
        if self.reference_pixel_size_nm == 0:
            return dataclasses.replace(self, binning=max(1, self.binning))
        known = (pixel_size_nm is not None and math.isfinite(pixel_size_nm)
                 and pixel_size_nm > 0)
        scale = self.reference_pixel_size_nm / pixel_size_nm if known and pixel_size_nm \
            else 1.0
        binning = self.binning or max(1, math.floor(scale * (1 + 1e-9)))
        values: dict[str, Any] = {"reference_pixel_size_nm": 0.0, "binning": binning}
        for name, power in _LENGTHS.items():
            value = getattr(self, name) * scale ** power
            if name in _OPTICAL:
                value = max(value, getattr(self, name))
            if isinstance(getattr(self, name), int):
                value = max(1, round(value)) if value > 0 else 0
            values[name] = value
        return dataclasses.replace(self, **values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisConfig:
        """Build from plain values (TOML, JSON, CLI); a ConfigError names a bad key."""
        return options_from_dict(cls, data, what="analysis")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values; inverse of :meth:`from_dict`."""
        return options_to_dict(self)


_LENGTHS = {"smoothing_sigma_px": 1, "background_sigma_px": 1, "needle_min_area_px": 2,
            "needle_layer_px": 1, "coating_max_px": 1, "grid_rim_px": 1, "needle_contact_px": 1,
            "min_particle_area_px": 2, "split_min_distance_px": 1}
"""The options given in reference pixels, with the power of length they carry."""
_OPTICAL = frozenset({"smoothing_sigma_px", "grid_rim_px", "background_sigma_px"})
"""Widths that do not shrink below their reference value: those set by blur and noise,
which are per detector pixel, and the illumination scale, which measured at 256² and
1 nm/px followed the particles' own darkening when halved (1.1 % error in A/A0 against
0.9 %). The needle's coating and the contact gap are nanometres of specimen: kept at 6
and 2 pixels at 1 nm/px, the needle took in the grey blur between its coating and a
particle still 2 nm away, and contact was reported 0.5 s early (256², every scenario)."""
