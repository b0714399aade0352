"""The simulator's crystal look and its no-needle scenario: exact truth, contact geometry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lithoscope.service.errors import ConfigError
from lithoscope.service.sources.sim import SCENARIOS, SimConfig, SimulatedSource
from lithoscope.service.sources.sim_crystal import outline_points
from lithoscope.service.sources.sim_draws import CRYSTAL_RANGES, draw_sim_config

SMALL = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=2.0, duration_s=60.0,
                  contact_s=10.0, bias_on_s=15.0, withdraw_s=40.0, particle_look="crystal",
                  needle_layer_nm=4.0, separate_particle_count=5, edge_particle_count=2)


def test_scenarios_are_listed() -> None:
    assert {"crystalline", "no_needle"} <= set(SCENARIOS)
    assert not SCENARIOS["no_needle"].needle_in_view


def test_truth_counts_the_pixels_the_image_shows() -> None:
    # No grain, no contrast inside, a high dose: a particle is every pixel darker than
    # the vacuum, so the truth's area can be counted on the image.
    config = dataclasses.replace(SMALL, support_texture=0.0, bend_contour_darkness=0.0,
                                 fringe_amplitude=0.0, illumination_gradient=0.0, flicker=0.0,
                                 dose_rate_e_per_a2_s=100.0, crystal_darkness=(0.3, 0.5))
    for scenario in ("no_needle", "crystalline"):
        source = SimulatedSource(config, scenario=scenario)
        frame = source.render(50)  # in contact, swelling
        assert frame.truth is not None
        vacuum = float(np.median(frame.image))
        dark = frame.image < 0.88 * vacuum
        if scenario == "crystalline":
            dark &= frame.image > 0.12 * vacuum  # not the needle
        area = frame.truth["cluster_area_px"]
        # The blur moves an outline by well under a pixel; the needle's coating is grey.
        perimeter = 2 * np.sqrt(np.pi * area) * 3
        assert abs(int(dark.sum()) - area) < 0.5 * perimeter, scenario


def test_outlines_fixed_while_the_contrast_moves() -> None:
    config = dataclasses.replace(SMALL, dose_rate_e_per_a2_s=200.0)
    source = SimulatedSource(config, scenario="no_needle")
    first, later = source.render(0), source.render(12)
    assert first.truth is not None
    assert later.truth is not None
    assert first.truth["particle_area_px"] == later.truth["particle_area_px"]
    assert first.truth["cluster_area_px"] == later.truth["cluster_area_px"]
    # Bend contours and fringes moved: the frames differ beyond their shot noise.
    difference = np.abs(first.image.astype(float) - later.image)
    noise = np.sqrt(float(np.median(first.image)))
    assert np.percentile(difference, 99) > 6 * noise


def test_no_needle_in_view() -> None:
    source = SimulatedSource(SMALL, scenario="no_needle")
    assert source.truth_events() == []
    for index in (0, 30, 100):
        frame = source.render(index)
        assert frame.truth is not None
        assert frame.truth["phase"] == "no_needle"
        assert not frame.truth["needle_contact"]
        assert max(frame.truth["particle_lithium_x"]) == 0.0
        assert "needle_tip_row" not in frame.metadata
        assert frame.metadata["bias_v"] == 0.0
    # Nothing opaque: the darkest pixels are particles, not metal.
    assert np.percentile(source.render(0).image, 0.01) > 0.02 * np.median(source.render(0).image)


def test_separate_particles_lie_apart_some_cut_by_the_edge() -> None:
    source = SimulatedSource(SMALL, scenario="crystalline")
    scene = source._scene
    n = SMALL.particle_count
    truth = source.render(60).truth
    assert truth is not None
    assert truth["particle_count"] == scene.radii_px.size > n
    # Never touched, never lithiated, while the cluster is.
    assert max(truth["particle_lithium_x"][n:]) == 0.0
    assert truth["particle_lithium_x"][source.touched_particle] > 0.0
    rows, cols = SMALL.shape
    centres, radii = scene.centres[n:], scene.radii_px[n:]
    to_edge = np.minimum.reduce([centres[:, 0], rows - 1 - centres[:, 0], centres[:, 1],
                                 cols - 1 - centres[:, 1]])
    assert np.sum(to_edge < radii) >= SMALL.edge_particle_count


@pytest.mark.parametrize("seed", [0, 3])
def test_the_coated_tip_touches_the_crystal_outline_exactly(seed: int) -> None:
    source = SimulatedSource(dataclasses.replace(SMALL, seed=seed), scenario="crystalline")
    scene = source._scene
    reach = scene.tip_radius_px + scene.layer_px
    s = source.touched_particle
    outline = outline_points(scene.looks[s])
    assert np.any(scene.contact)
    assert np.any(~scene.contact)
    for index in range(0, SMALL.frame_count, 7):
        centre = scene.tip[index] - scene.axis * scene.tip_radius_px
        points = scene.centres_t[index, s] + scene.radii_t[index, s] * outline
        # Moved on along its axis by the true gap (-1 px in contact: pressed in), the
        # coated tip touches the outline: no nearer, no farther.
        touching = centre + scene.axis * scene.gap_px[index]
        assert float(np.hypot(*(points - touching).T).min()) == pytest.approx(
            reach, abs=0.05), index
        assert scene.contact[index] == (scene.gap_px[index] < 0)


def test_crystal_draws() -> None:
    camera = {"shape": (256, 256), "pixel_size_nm": 1.0}
    disc = draw_sim_config(5, **camera)
    crystal = draw_sim_config(5, look="crystal", **camera)
    assert crystal.particle_look == "crystal"
    # The same seed's other physics, whatever the look.
    assert crystal.needle_layer_nm == disc.needle_layer_nm
    assert crystal.dose_rate_e_per_a2_s == disc.dose_rate_e_per_a2_s
    for name in ("bend_contour_darkness", "fringe_amplitude", "support_texture",
                 "separate_particle_count"):
        low, high = CRYSTAL_RANGES[name]
        assert low <= getattr(crystal, name) <= high, name
    assert crystal.edge_particle_count <= crystal.separate_particle_count
    assert crystal.crystal_darkness[1] <= 0.85
    with pytest.raises(ConfigError, match="Expected look 'disc' or 'crystal'"):
        draw_sim_config(5, look="grain", **camera)


@pytest.mark.parametrize("values", [
    {"particle_look": "faceted"},
    {"crystal_darkness": [0.5, 0.2]},
    {"edge_particle_count": 3, "separate_particle_count": 2},
    {"support_texture": 0.9},
    {"faceted_fraction": 1.5},
    {"bend_contour_speed_nm_per_s": -1.0},
])
def test_invalid(values: dict) -> None:
    with pytest.raises(ConfigError, match="Expected"):
        SimConfig.from_dict(values)


def test_opened_by_name_as_publish_does() -> None:
    from lithoscope.service.sources.echem import SimulatedEchem
    from lithoscope.service.sources.registry import open_source

    with open_source("sim:no_needle", duration_s=2.0, shape=[256, 256],
                     particle_count=2, pixel_size_nm=2.0) as source:
        assert source.info.name == "sim:no_needle"
        frames = list(source)
    assert len(frames) == 8
    assert all(not f.truth["needle_contact"] for f in frames)
    echem = SimulatedEchem(SimConfig(duration_s=2.0), scenario="no_needle")
    samples = echem.samples()
    assert not np.any(samples[1])
    assert not np.any(samples[2])
