"""Analysis resolution from the particles: sub-pixel areas, binning from the particle
scale, the scale cross-check, and preparation without full-size float copies."""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lithoscope.service.analysis import (
    AnalysisConfig,
    SessionAnalyzer,
    analyze_frame,
    measure_frame,
)
from lithoscope.service.analysis._prepare import _bin_counts, _clip_hot, _prepare
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


def _plates(radius: float, offset: tuple[float, float], *, size: int = 160,
            seed: int = 0) -> np.ndarray:
    """Four flat discs (half the vacuum's counts) of ``radius`` px at a sub-pixel
    ``offset``, anti-aliased (8x8 sub-pixels), blurred by a pixel, with shot noise."""
    s = 8
    y, x = (np.mgrid[0:size * s, 0:size * s].astype(np.float32) + 0.5) / s
    transmission = np.ones_like(x)
    for row in (size / 4, 3 * size / 4):
        for col in (size / 4, 3 * size / 4):
            inside = (y - row - offset[0]) ** 2 + (x - col - offset[1]) ** 2 < radius ** 2
            transmission[inside] = 0.5
    image = cv2.resize(transmission, (size, size), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (0, 0), 1.0)
    rng = np.random.default_rng(seed)
    return rng.poisson(image * 2000.0).astype(np.uint16)


def test_subpixel_areas_are_closer_to_the_truth_than_pixel_counts() -> None:
    radius = 12.6
    truth = 4 * math.pi * radius ** 2
    errors: dict[bool, list[float]] = {True: [], False: []}
    rng = np.random.default_rng(1)
    for k in range(8):
        frame = _plates(radius, tuple(rng.uniform(-0.5, 0.5, 2)), seed=k)
        for subpixel in (True, False):
            config = AnalysisConfig(reference_pixel_size_nm=0, subpixel_areas=subpixel,
                                    min_particle_area_px=20, split_touching=False)
            result = analyze_frame(frame, config=config)
            assert result.cluster["particle_count"] == 4
            errors[subpixel].append(result.cluster["area_px"] / truth - 1)
    spread = {k: float(np.std(v)) for k, v in errors.items()}
    bias = {k: abs(float(np.mean(v))) for k, v in errors.items()}
    # Pixel counts jump with the discs' position on the grid; sub-pixel outlines follow
    # it (measured: 0.2 % against 0.5 % spread, 2.0 % against 2.6 % bias from the blur).
    assert spread[True] < 0.6 * spread[False], spread
    assert bias[True] < bias[False] < 0.04, bias


def test_areas_stay_in_input_pixels_as_integers() -> None:
    frame = _plates(20.0, (0.25, -0.1), size=256)
    config = AnalysisConfig(reference_pixel_size_nm=0, binning=4)
    result = analyze_frame(frame, config=config, pixel_size_nm=0.5)
    areas = result.particles["area_px"]
    assert areas.dtype == np.int64
    assert areas == pytest.approx(np.full(4, math.pi * 400), rel=0.03)
    assert result.particles["area_nm2"] == pytest.approx(areas * 0.25, abs=0.25)


@pytest.fixture(scope="module")
def field_1024() -> tuple[np.ndarray, dict]:
    """A 1024² frame at 0.4 nm/px: particles 25-55 nm, 60-140 px across."""
    frame = SimulatedSource(SimConfig(shape=(1024, 1024), pixel_size_nm=0.4)).render(150)
    return frame.image, frame.truth


def test_binning_follows_the_particle_scale(field_1024: tuple[np.ndarray, dict]) -> None:
    image, truth = field_1024
    # Without the 1 nm cap on analysis pixels: binned as far as keeps the particles 32
    # analysis px across (the pixel size alone would not bin at all: 0.4 nm is finer
    # than the 0.5 nm reference).
    free = AnalysisConfig(max_analysis_pixel_nm=0)
    result = analyze_frame(image, pixel_size_nm=0.4, config=free)
    diameter = result.cluster["particle_diameter_px"]
    b = result.cluster["binning"]
    assert result.binning == b
    assert b >= 3
    assert 32 <= diameter / b < 32 * (b + 1) / b + 4
    assert result.cluster["area_px"] == pytest.approx(truth["cluster_area_px"], rel=0.03)
    # (The clump's overlapping particles: 7 of 8 found unbinned as well.)
    assert abs(result.cluster["particle_count"] - truth["particle_count"]) <= 1
    assert result.cluster["particle_diameter_nm"] == pytest.approx(diameter * 0.4)
    assert not result.cluster["scale_mismatch"]
    # With it (the default), analysis pixels stay at most 1 nm: 2x2 at 0.4 nm/px.
    capped = analyze_frame(image, pixel_size_nm=0.4)
    assert capped.binning == 2
    assert capped.cluster["area_px"] == pytest.approx(truth["cluster_area_px"], rel=0.03)
    off = analyze_frame(image, pixel_size_nm=0.4,
                        config=AnalysisConfig(analysis_particle_diameter_px=0))
    assert off.binning == 1


def test_binning_from_the_configured_diameter(field_1024: tuple[np.ndarray, dict]) -> None:
    image, _ = field_1024
    config = AnalysisConfig(particle_diameter_nm=64.0, analysis_particle_diameter_px=20,
                            max_analysis_pixel_nm=0)
    result = analyze_frame(image, pixel_size_nm=0.4, config=config)
    assert result.binning == 8  # 160 px / 20
    capped = replace(config, max_analysis_pixel_nm=2.0)
    assert analyze_frame(image, pixel_size_nm=0.4, config=capped).binning == 5
    explicit = analyze_frame(image, pixel_size_nm=0.4, config=AnalysisConfig(binning=2))
    assert explicit.binning == 2


def test_scale_is_checked_against_the_pixel_size(field_1024: tuple[np.ndarray, dict]) -> None:
    image, _ = field_1024
    config = AnalysisConfig(binning=4)
    right = analyze_frame(image, pixel_size_nm=0.4, config=config).cluster
    assert 40 < right["particle_diameter_nm"] < 80
    assert not right["scale_mismatch"]
    # A pixel size five times too large makes the particles ~300 nm: flagged.
    wrong = analyze_frame(image, pixel_size_nm=2.0, config=config).cluster
    assert wrong["scale_mismatch"]
    # Against a configured diameter instead of the range the defaults suit.
    expected = replace(config, particle_diameter_nm=15.0)
    assert analyze_frame(image, pixel_size_nm=0.4, config=expected).cluster["scale_mismatch"]
    unknown = analyze_frame(image, config=config).cluster
    assert math.isnan(unknown["particle_diameter_nm"])
    assert not unknown["scale_mismatch"]


def test_session_keeps_the_binning_of_its_first_particles(
        field_1024: tuple[np.ndarray, dict]) -> None:
    image, _ = field_1024
    analyzer = SessionAnalyzer()
    analyzer.update(image, t_s=0.0, index=0, pixel_size_nm=0.4)
    assert analyzer.last is not None
    chosen = analyzer.last.binning
    assert chosen == 2
    # A frame whose own choice differs (here: empty, nothing to read a scale from).
    blank = np.full_like(image, int(np.median(image)))
    analyzer.update(blank, t_s=1.0, index=1, pixel_size_nm=0.4)
    assert analyzer.last.binning == chosen
    assert analyze_frame(blank, pixel_size_nm=0.4).binning == 1
    # Measured elsewhere (measure_frame in another process), the choice is kept too,
    # and handed out for the next frames; another pixel size is chosen afresh.
    remote = SessionAnalyzer()
    assert remote.frame_config(0.4).binning == 0
    remote.update_measured(measure_frame(image, pixel_size_nm=0.4), t_s=0.0, index=0,
                           pixel_size_nm=0.4)
    assert remote.frame_config(0.4).binning == chosen
    assert remote.frame_config(0.8).binning == 0


@pytest.mark.parametrize("counts", [12, 3000])
@pytest.mark.parametrize("binning", [2, 4])
def test_binning_before_float_matches_clipping_then_binning(counts: int, binning: int) -> None:
    rng = np.random.default_rng(binning)
    image = rng.poisson(counts, (96, 128)).astype(np.uint16)
    image[rng.integers(0, 96, 20), rng.integers(0, 128, 20)] = 65535  # hot pixels
    ceiling = 1.5 * counts
    rows, cols = 96 // binning, 128 // binning
    pixels = _bin_counts(image, binning, rows, cols, float(counts))
    _clip_hot(image, pixels, ceiling, binning)
    clipped = np.minimum(image.astype(np.float32), np.float32(ceiling))
    expected = cv2.resize(clipped, (cols, rows), interpolation=cv2.INTER_AREA)
    # Bright frames are binned in their own dtype: each block's mean rounded.
    tolerance = 0.5 if counts * 0.12 >= binning ** 2 else 1e-3
    np.testing.assert_allclose(pixels, expected, atol=tolerance + 1e-3)


def test_preparation_makes_no_full_size_float_copy() -> None:
    rng = np.random.default_rng(0)
    image = rng.poisson(800, (2048, 2048)).astype(np.uint16)  # 8 MiB
    image[rng.integers(0, 2048, 400), rng.integers(0, 2048, 400)] = 65535  # hot pixels
    config = AnalysisConfig(binning=4).at_pixel_size(None)
    _prepare(image, config)  # warm-up
    tracemalloc.start()
    try:
        _prepare(image, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A float32 copy of the frame alone is 16 MiB; the binned frame is 1 MiB (and
    # finding the hot pixels takes a 4 MiB mask).
    assert peak < 8 * 2 ** 20, peak


@pytest.mark.parametrize(("pixel_size_nm", "size"), [(0.2, 2048), (0.4, 1024), (0.8, 1024)])
def test_any_pixel_size_is_binned_to_the_particles(pixel_size_nm: float, size: int) -> None:
    """Particles of 25-55 nm are 70-275 px across from 0.8 to 0.2 nm/px: each frame is
    binned to keep them 32 analysis px across or more (and analysis pixels at most
    1 nm), and measured as well."""
    frame = SimulatedSource(SimConfig(shape=(size, size), pixel_size_nm=pixel_size_nm,
                                      particle_count=6)).render(200)
    result = analyze_frame(frame.image, pixel_size_nm=pixel_size_nm)
    diameter = result.cluster["particle_diameter_px"]
    # Binned to the particles (32 px across), analysis pixels no coarser than 1 nm.
    cap = max(1, math.floor(1.0 / pixel_size_nm + 1e-9))
    assert result.binning == min(cap, math.floor(diameter / 32)) or \
        abs(result.binning - diameter / 32) < 1.5  # d read on the coarse copy
    assert result.binning <= cap
    assert result.cluster["area_px"] == pytest.approx(frame.truth["cluster_area_px"], rel=0.03)
    assert 40 < result.cluster["particle_diameter_nm"] < 80


@pytest.mark.parametrize(("seed", "scenario"), [(4, "lithiation"), (1, "low_dose")])
def test_the_scale_of_dark_or_dim_particles_is_read(seed: int, scenario: str) -> None:
    """Two random draws at 2048² and 0.4 nm/px: particles of transmission 0.21 at their
    centres (seed 4), under the opaque floor, and paler particles at 2 e/A²/s (seed 1).
    Their scale read as a few nm (the vacuum's noise taken for particles) left the
    frame analysed unbinned, 3-6 times slower; it is read within a factor two of the
    particles' own size, and the frame binned 2x2 (1 nm cap at 0.4 nm/px)."""
    from lithoscope.service.sources.sim_draws import draw_sim_config

    config = draw_sim_config(seed, shape=(2048, 2048), pixel_size_nm=0.4, fps=4.0,
                             duration_s=75.0, contact_s=10.0, bias_on_s=15.0,
                             withdraw_s=45.0, approach_distance_nm=30.0)
    frame = SimulatedSource(config, scenario=scenario).render(80)
    result = analyze_frame(frame.image, pixel_size_nm=0.4)
    smallest, largest = config.particle_diameter_nm
    assert smallest / 2 < result.cluster["particle_diameter_nm"] < 2 * largest
    assert result.binning == 2
    assert not result.cluster["scale_mismatch"]


def test_scale_threshold_counts_dark_pixels_and_stays_out_of_the_noise() -> None:
    """Flattened vacuum at 128 with noise of 3 grey levels, and a few per cent of
    particle pixels: Otsu's split of the uncapped threshold, with the particles under
    the opaque floor (38) left out, falls in the vacuum's noise; the scale's threshold
    lies between the particles and the vacuum, at least two sigmas under the vacuum."""
    from lithoscope.service.analysis._prepare import _particle_threshold, _scale_threshold

    rng = np.random.default_rng(3)
    flat = np.clip(rng.normal(128, 3, (512, 512)), 0, 255).astype(np.uint8)
    for k in range(6):
        cv2.circle(flat, (60 + 80 * k, 256), 20, 28, -1)  # transmission 0.22
    config = AnalysisConfig()
    assert _particle_threshold(flat, None, config, capped=False) > 120
    threshold = _scale_threshold(flat, None, config)
    assert 38 < threshold <= 128 - 2 * 3
    assert 38 < threshold < 100
