"""The simulated lithiation experiment: config, determinism, timeline, ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.protocol import EventKind
from lithoscope.service.sources import Source
from lithoscope.service.sources.sim import SCENARIOS, SimConfig, SimulatedSource

# Small and slow enough to keep the suite quick; the same 256 nm field of view as
# the default 512 x 512 frames at 0.5 nm/px.
SMALL = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=2.0)


@pytest.fixture(scope="module")
def lithiation() -> list:
    with SimulatedSource(SMALL) as source:
        return list(source)


@pytest.fixture(scope="module")
def control() -> list:
    with SimulatedSource(SMALL, scenario="control") as source:
        return list(source)


class TestConfig:
    def test_defaults(self) -> None:
        config = SimConfig()
        assert config.shape == (512, 512)
        assert config.fps == 4.0
        assert config.frame_count == 480
        assert (config.contact_s, config.bias_on_s, config.withdraw_s) == (15.0, 20.0, 80.0)

    def test_round_trip_through_plain_values(self) -> None:
        config = SimConfig(shape=(300, 200), seed=7, particle_diameter_nm=(20.0, 30.0))
        data = json.loads(json.dumps(config.to_dict()))
        assert data["shape"] == [300, 200]
        assert SimConfig.from_dict(data) == config

    def test_unknown_key(self) -> None:
        with pytest.raises(ConfigError, match=r"Unknown simulator option 'x'\. Expected one of "
                                              r"shape, fps"):
            SimConfig.from_dict({"x": 1})

    @pytest.mark.parametrize(
        "values",
        [
            {"fps": 0},
            {"shape": [8, 8]},
            {"contact_s": 30.0},
            {"needle_edge": "middle"},
            {"particle_diameter_nm": [50, 20]},
            {"particle_count": 0},
            {"dose_rate_e_per_a2_s": -1.0},
        ],
    )
    def test_invalid_values(self, values: dict) -> None:
        with pytest.raises(ConfigError, match="Expected"):
            SimConfig.from_dict(values)

    def test_unknown_scenario(self) -> None:
        with pytest.raises(ConfigError, match="Unknown scenario 'x'"):
            SimulatedSource(SMALL, scenario="x")

    def test_cluster_too_big_for_the_frame(self) -> None:
        with pytest.raises(ConfigError, match="does not fit"):
            SimulatedSource(SimConfig(shape=(64, 64), pixel_size_nm=1.0))


class TestSource:
    def test_info(self) -> None:
        source = SimulatedSource(SMALL, scenario="control")
        info = source.info
        assert isinstance(source, Source)
        assert info.name == "sim:control"
        assert info.kind == "sim"
        assert info.shape == (256, 256)
        assert info.dtype == "uint16"
        assert info.frame_count == 240 == len(source)
        assert info.fps == 2.0
        assert info.pixel_size_nm == 1.0
        assert info.live is True
        assert info.metadata["scenario"] == "control"
        assert SimConfig.from_dict(info.metadata["config"]) == SMALL

    def test_scenarios(self) -> None:
        assert {"lithiation", "control"} <= set(SCENARIOS)

    def test_frames(self, lithiation: list) -> None:
        assert [f.index for f in lithiation] == list(range(240))
        for frame in lithiation[::37]:
            assert frame.image.dtype == np.uint16
            assert frame.image.shape == (256, 256)
            assert frame.t_s == frame.index / 2.0
            assert set(frame.metadata) == {"bias_v", "needle_tip_row", "needle_tip_col",
                                           "dose_rate_e_per_a2_s"}
            assert set(frame.truth) == {
                "cluster_area_px", "particle_count", "needle_contact", "phase",
                "particle_area_px", "particle_visible_area_px", "particle_centre_row",
                "particle_centre_col", "particle_visible_centroid_row",
                "particle_visible_centroid_col", "particle_lithium_x", "particle_core_radius_px",
                "drift_row_px", "drift_col_px"}
            assert sum(frame.truth["particle_visible_area_px"]) == frame.truth["cluster_area_px"]
            assert len(frame.truth["particle_area_px"]) == frame.truth["particle_count"] == 8
            json.dumps({**frame.metadata, **frame.truth})  # plain values, ready for the wire

    def test_deterministic_and_random_access(self, lithiation: list) -> None:
        again = SimulatedSource(SMALL)
        for index in (0, 41, 239):
            frame = again.render(index)
            np.testing.assert_array_equal(frame.image, lithiation[index].image)
            assert frame.truth == lithiation[index].truth
        other = SimulatedSource(SimConfig.from_dict({**SMALL.to_dict(), "seed": 1}))
        assert not np.array_equal(other.render(0).image, lithiation[0].image)

    def test_noise_follows_the_dose(self) -> None:
        def relative_noise(dose: float) -> float:
            config = SimConfig.from_dict({**SMALL.to_dict(), "dose_rate_e_per_a2_s": dose,
                                          "illumination_gradient": 0.0, "flicker": 0.0})
            image = SimulatedSource(config).render(0).image.astype(float)
            corner = image[:40, -40:]  # vacuum, far from needle and cluster
            return float(corner.std() / corner.mean())

        # Shot noise: relative std ~ 1 / sqrt(electrons per pixel) = 1 / sqrt(dose * 0.5 s * 100).
        assert relative_noise(10.0) == pytest.approx(1 / np.sqrt(500), rel=0.15)
        assert relative_noise(1.0) == pytest.approx(1 / np.sqrt(50), rel=0.15)

    def test_image_shows_the_scene(self, lithiation: list) -> None:
        frame = lithiation[0]
        image = frame.image.astype(float)
        vacuum = np.median(image[:30, -30:])
        row = round(frame.metadata["needle_tip_row"])
        col = round(frame.metadata["needle_tip_col"])
        assert image[row - 2:row + 3, 2:col - 10].mean() < 0.15 * vacuum  # the opaque needle
        assert image[:, col + 5:].min() < 0.8 * vacuum  # darker particles beyond the tip
        assert image.max() < 65535

    def test_close(self) -> None:
        source = SimulatedSource(SMALL)
        with source:
            source.render(0)
        source.close()
        with pytest.raises(SourceError, match="closed"):
            source.render(0)
        with pytest.raises(IndexError):
            SimulatedSource(SMALL).render(240)


class TestTimeline:
    def test_phases_bias_and_contact(self, lithiation: list) -> None:
        def at(t_s: float):  # noqa: ANN202
            return lithiation[round(t_s * 2)]

        assert at(10).truth["phase"] == "approach"
        assert at(17).truth["phase"] == "contact"
        assert at(30).truth["phase"] == "lithiation"
        assert at(90).truth["phase"] == "withdrawn"
        assert [at(t).metadata["bias_v"] for t in (10, 17, 30, 90)] == [0.0, 0.0, -2.0, 0.0]
        for frame in lithiation:
            assert frame.truth["needle_contact"] == (15.0 <= frame.t_s < 80.0)

    def test_needle_approaches_then_withdraws(self, lithiation: list) -> None:
        cols = np.array([f.metadata["needle_tip_col"] for f in lithiation])
        t = np.array([f.t_s for f in lithiation])
        assert np.all(np.diff(cols[t <= 15.0]) > 0)
        assert cols[t == 90.0][0] < cols[t == 79.5][0] - 20

    def test_swelling_then_contraction(self, lithiation: list) -> None:
        area = np.array([f.truth["cluster_area_px"] for f in lithiation], float)
        particles = np.array([f.truth["particle_area_px"] for f in lithiation], float)
        t = np.array([f.t_s for f in lithiation])
        before = area[(t >= 15.0) & (t <= 20.5)]
        assert np.ptp(before) / before.mean() < 0.002  # nothing moves before the bias
        growing = area[(t > 20.5) & (t < 80.0)]
        assert np.all(np.diff(growing) >= 0)
        assert growing[-1] / before.mean() > 1.1
        # The touched particle swells most (+60..100 %), fast then slowly.
        gain = particles[t == 79.5][0] / particles[0] - 1.0
        touched = int(np.argmax(gain))
        assert 0.6 <= gain[touched] <= 1.0
        assert np.all(np.delete(gain, touched) < gain[touched])
        early = particles[t == 30.0][0][touched] - particles[t == 20.0][0][touched]
        late = particles[t == 79.5][0][touched] - particles[t == 69.5][0][touched]
        assert early > 2 * late
        # Its neighbours start later: their relative swelling lags.
        at_25 = particles[t == 25.0][0] / particles[0] - 1.0
        assert at_25[touched] > 3 * np.delete(at_25, touched).max()
        # Lithium drains after withdrawal: back near the start within 40 s.
        after = area[t >= 80.0]
        assert np.all(np.diff(after) <= 0)
        assert after[-1] / before.mean() < 1.02

    def test_control_does_not_swell(self, control: list) -> None:
        areas = {tuple(f.truth["particle_area_px"]) for f in control}
        assert len(areas) == 1
        assert all(f.truth["phase"] != "lithiation" for f in control)
        assert all(f.metadata["bias_v"] == 0.0 for f in control)

    def test_truth_events(self) -> None:
        lithiation = SimulatedSource(SMALL).truth_events()
        assert lithiation == [("contact_made", 15.0), ("expansion_onset", 20.5),
                              ("contact_lost", 80.0), ("contraction_onset", 80.0)]
        assert all(EventKind(kind) for kind, _ in lithiation)
        control = SimulatedSource(SMALL, scenario="control").truth_events()
        assert control == [("contact_made", 15.0), ("contact_lost", 80.0)]

    def test_cluster_is_connected(self) -> None:
        adjacency = SimulatedSource(SMALL)._scene.adjacency
        reached = {0}
        frontier = [0]
        while frontier:
            node = frontier.pop()
            for other in np.flatnonzero(adjacency[node]):
                if int(other) not in reached:
                    reached.add(int(other))
                    frontier.append(int(other))
        assert reached == set(range(adjacency.shape[0]))


class TestImagingAndScenarios:
    def test_drift_moves_everything_and_truth_follows(self) -> None:
        config = SimConfig.from_dict({**SMALL.to_dict(), "drift_px_per_frame": 2.0,
                                      "drift_amplitude_nm": 8.0})
        source = SimulatedSource(config, scenario="control")
        first = source.render(0)
        assert (first.truth["drift_row_px"], first.truth["drift_col_px"]) == (0.0, 0.0)
        for index in (5, 17, 40):
            # Before contact nothing but the drift and the approaching needle moves.
            frame, reference = source.render(index), first
            shift = np.array([frame.truth["drift_row_px"], frame.truth["drift_col_px"]])
            assert np.hypot(*shift) <= 8.0 * np.sqrt(2) + 1e-9
            moved = np.array([frame.truth["particle_centre_row"],
                              frame.truth["particle_centre_col"]])
            np.testing.assert_allclose(moved.T - shift, np.array(
                [reference.truth["particle_centre_row"],
                 reference.truth["particle_centre_col"]]).T)
            assert frame.metadata["needle_tip_row"] == pytest.approx(
                reference.metadata["needle_tip_row"] + shift[0], abs=1e-6)
        steps = np.diff([[source.render(i).truth["drift_row_px"],
                          source.render(i).truth["drift_col_px"]] for i in range(30)], axis=0)
        assert np.hypot(*steps.T).max() <= 2.0 + 1e-9

    def test_grid_bar_hides_what_it_covers(self) -> None:
        config = SimConfig.from_dict({**SMALL.to_dict(), "grid_bar": True})
        frame = SimulatedSource(config).render(60)
        image = frame.image.astype(float)
        vacuum = np.median(image[:30, 100:130])
        assert image[:, -3:].mean() < 0.1 * vacuum  # opaque, along the far edge
        plain = SimulatedSource(SMALL).render(60)
        assert frame.truth["cluster_area_px"] < plain.truth["cluster_area_px"]  # it hides some
        assert sum(frame.truth["particle_visible_area_px"]) == frame.truth["cluster_area_px"]

    def test_hot_pixels_fringes_and_core_leave_the_truth_alone(self) -> None:
        config = SimConfig.from_dict({**SMALL.to_dict(), "hot_pixel_fraction": 0.001,
                                      "fresnel_fringe": 0.3, "core_contrast": 0.3})
        frame, plain = SimulatedSource(config).render(100), SimulatedSource(SMALL).render(100)
        # (which particle shows in an overlap may change: the darker core wins there)
        for key in ("cluster_area_px", "particle_area_px", "particle_lithium_x"):
            assert frame.truth[key] == plain.truth[key]
        vacuum = np.median(plain.image)
        assert np.count_nonzero(frame.image > 2.5 * vacuum) >= 0.001 * frame.image.size * 0.9
        # The core shrinks as lithium comes in: r0 (1 - f)^(1/3).
        x = np.array(frame.truth["particle_lithium_x"])
        cores = np.array(frame.truth["particle_core_radius_px"])
        assert cores[np.argmax(x)] < cores[np.argmin(x)] * 1.5

    def test_chemical_lithiation_starts_on_contact(self) -> None:
        source = SimulatedSource(SMALL, scenario="chemical")
        assert source.truth_events() == [("contact_made", 15.0), ("expansion_onset", 15.5),
                                         ("contact_lost", 80.0), ("contraction_onset", 80.0)]
        assert source.render(40).metadata["bias_v"] == 0.0
        assert source.render(40).truth["phase"] == "lithiation"
        assert max(source.render(100).truth["particle_lithium_x"]) > 0.1

    def test_bias_below_the_onset_does_not_lithiate(self) -> None:
        config = SimConfig.from_dict({**SMALL.to_dict(), "bias_v": -0.2})
        source = SimulatedSource(config)
        assert [k for k, _ in source.truth_events()] == ["contact_made", "contact_lost"]
        assert max(source.render(150).truth["particle_lithium_x"]) == 0.0

    def test_presets_and_true_diffusion_coefficient(self) -> None:
        assert SimulatedSource(SMALL, scenario="low_dose").config.dose_rate_e_per_a2_s == 2.0
        assert SimulatedSource(SMALL, scenario="heavy_drift").config.drift_px_per_frame == 3.0
        default = SimulatedSource(SMALL)
        radius_cm = default._scene.radii_px[default.touched_particle] * 1e-7
        assert default.diffusion_coefficient_cm2_per_s == pytest.approx(
            0.1 * radius_cm**2 / np.pi**2)
        config = SimConfig.from_dict({**SMALL.to_dict(),
                                      "diffusion_coefficient_cm2_per_s": 1e-13})
        assert SimulatedSource(config).diffusion_coefficient_cm2_per_s == pytest.approx(1e-13)
