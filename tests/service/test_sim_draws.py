"""Simulated experiments drawn from physical ranges: reproducible, in range, exact in truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lithoscope.service.errors import ConfigError
from lithoscope.service.sources.sim import SimConfig, SimulatedSource
from lithoscope.service.sources.sim_draws import PHYSICAL_RANGES, draw_sim_config

CAMERA = {"shape": (256, 256), "pixel_size_nm": 1.0}


def test_same_seed_same_draw_other_seed_other_draw() -> None:
    assert draw_sim_config(3, **CAMERA) == draw_sim_config(3, **CAMERA)
    assert draw_sim_config(3, **CAMERA) != draw_sim_config(4, **CAMERA)


@pytest.mark.parametrize("seed", range(8))
def test_drawn_values_lie_in_their_ranges(seed: int) -> None:
    config = draw_sim_config(seed, **CAMERA)
    for name in ("dose_rate_e_per_a2_s", "flicker", "needle_layer_nm", "needle_transmission",
                 "layer_transmission", "particle_centre_transmission", "particle_overlap",
                 "needle_taper_deg", "grid_transmission"):
        low, high = PHYSICAL_RANGES[name]
        assert low <= getattr(config, name) <= high, name
    low, high = PHYSICAL_RANGES["needle_tip_radius_nm"]
    assert low <= config.needle_tip_radius_nm <= min(high, 0.073 * 256)
    assert config.overlap_darkening
    assert config.particle_edge_transmission > config.particle_centre_transmission
    assert config.shape == (256, 256)
    assert config.seed == seed


def test_the_draws_cover_the_ranges() -> None:
    # A 512 nm field: a 256 nm one has no room for a 50 nm coating beside the approach.
    draws = [draw_sim_config(seed, shape=(512, 512), pixel_size_nm=1.0) for seed in range(24)]
    assert {d.needle_edge for d in draws} == {"left", "right", "top", "bottom"}
    assert {d.grid_bar for d in draws} == {True, False}
    assert {d.hot_pixels_saturate for d in draws} == {True, False}
    coating = [d.needle_layer_nm for d in draws]
    assert min(coating) < 10
    assert max(coating) > 35


def test_fixed_values_override_the_draw() -> None:
    config = draw_sim_config(1, **CAMERA, fps=2.0, needle_layer_nm=30.0)
    assert config.fps == 2.0
    assert config.needle_layer_nm == 30.0


def test_the_needle_is_in_view() -> None:
    for seed in range(6):
        config = draw_sim_config(seed, **CAMERA)
        tip = SimulatedSource(config).render(0).metadata
        reach = {"left": tip["needle_tip_col"], "right": 256 - tip["needle_tip_col"],
                 "top": tip["needle_tip_row"], "bottom": 256 - tip["needle_tip_row"]}
        assert reach[config.needle_edge] >= 2.5 * (config.needle_tip_radius_nm
                                                   + config.needle_layer_nm)


def test_an_impossible_camera_is_refused() -> None:
    with pytest.raises(ConfigError, match="No drawn simulation fits"):
        draw_sim_config(0, shape=(32, 32), pixel_size_nm=1.0)


def test_unknown_fixed_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="Unknown simulator option 'nonsense'"):
        draw_sim_config(0, **CAMERA, nonsense=1)


class TestDrawnPhysicsIsExactInTruth:
    """Each drawn effect is rendered as the truth says."""

    def test_overlap_in_projection_is_darker_than_either_particle(self) -> None:
        config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, particle_overlap=0.6,
                           min_particle_separation=0.45, overlap_darkening=True,
                           dose_rate_e_per_a2_s=200.0, fps=4.0)
        alone = dataclasses.replace(config, overlap_darkening=False)
        dark = SimulatedSource(config).render(0).image.astype(float)
        light = SimulatedSource(alone).render(0).image.astype(float)
        # Same scene; where two discs overlap the product is darker than the darker one.
        assert (dark < 0.9 * light).sum() > 100
        assert not (dark > 1.1 * light).any()

    @pytest.mark.parametrize("edge", ["left", "right", "top", "bottom"])
    def test_needle_and_grid_on_any_edge(self, edge: str) -> None:
        config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, needle_edge=edge,
                           grid_bar=True, dose_rate_e_per_a2_s=200.0)
        frame = SimulatedSource(config).render(0)
        image = frame.image.astype(float)
        vacuum = np.median(image)
        inward = {"left": image[:, 0], "right": image[:, -1], "top": image[0], "bottom": image[-1]}
        opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[edge]
        # The needle crosses its edge through a stretch; the grid bar covers the opposite.
        assert 0 < np.mean(inward[edge] < 0.2 * vacuum) < 0.6
        assert np.mean(inward[opposite] < 0.2 * vacuum) > 0.95

    def test_saturated_and_dead_pixels(self) -> None:
        config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, hot_pixel_fraction=1e-3,
                           hot_pixels_saturate=True, dead_pixel_fraction=1e-3,
                           dark_level_counts=100.0)
        image = SimulatedSource(config).render(0).image
        assert np.count_nonzero(image == 65535) == round(1e-3 * 256 * 256)
        assert np.count_nonzero(image == 100) >= round(1e-3 * 256 * 256)

    def test_stage_jumps_move_the_truth(self) -> None:
        config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, stage_jumps=2,
                           stage_jump_px=4.0, duration_s=10.0)
        source = SimulatedSource(config)
        first, last = source.render(0).truth, source.render(len(source) - 1).truth
        assert first is not None
        assert last is not None
        moved = np.hypot(last["drift_row_px"] - first["drift_row_px"],
                         last["drift_col_px"] - first["drift_col_px"])
        assert 0 < moved <= 8.0 + 1e-9
