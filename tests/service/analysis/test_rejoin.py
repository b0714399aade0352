"""rejoin_split_particles: the session does not split a particle that was whole."""

from __future__ import annotations

import numpy as np

from lithoscope.service.analysis import PARTICLE_COLUMNS, rejoin_split_particles


def table(*rows: tuple[int, int, float, float]) -> dict[str, np.ndarray]:
    """Particle columns from (label, area_px, row, col)."""
    out = {name: np.zeros(len(rows), dtype) for name, dtype in PARTICLE_COLUMNS.items()}
    for i, (label, area, r, c) in enumerate(rows):
        out["label"][i], out["area_px"][i] = label, area
        out["area_nm2"][i] = area * 0.25
        out["equivalent_diameter_nm"][i] = 2 * np.sqrt(area * 0.25 / np.pi)
        out["centroid_row"][i], out["centroid_col"][i] = r, c
        out["mean_intensity"][i] = 100.0 + label
    return out


HALVES = table((1, 500, 50.0, 40.0), (2, 500, 50.0, 60.0), (3, 300, 150.0, 150.0))
CONTACT = np.array([[1, 2]], np.int32)


def test_a_particle_whole_in_the_last_frame_is_joined() -> None:
    joined, contacts, streak = rejoin_split_particles(
        HALVES, CONTACT, np.array([[50.5, 50.0], [150.0, 150.0]]), np.array([1010.0, 300.0]))
    assert joined["label"].tolist() == [1, 3]
    assert joined["area_px"].tolist() == [1000, 300]
    assert joined["centroid_col"][0] == 50.0
    assert joined["mean_intensity"][0] == 101.5
    assert joined["equivalent_diameter_nm"][0] == np.sqrt(1000 * 0.25 / np.pi) * 2
    assert contacts.shape == (0, 2)
    assert streak.tolist() == [1, 0]
    for name, dtype in PARTICLE_COLUMNS.items():
        assert joined[name].dtype == dtype


def test_two_particles_last_frame_stay_two() -> None:
    out, contacts, _ = rejoin_split_particles(
        HALVES, CONTACT, np.array([[50.0, 40.0], [50.0, 60.0]]), np.array([500.0, 500.0]))
    assert out is HALVES
    np.testing.assert_array_equal(contacts, CONTACT)


def test_area_must_match() -> None:
    out, _, _ = rejoin_split_particles(HALVES, CONTACT, np.array([[50.0, 50.0]]),
                                       np.array([600.0]))
    assert out["label"].size == 3


def test_a_lasting_split_is_believed() -> None:
    previous = (np.array([[50.0, 50.0]]), np.array([1000.0]))
    out, _, _ = rejoin_split_particles(HALVES, CONTACT, *previous,
                                       previous_streak=np.array([10]))
    assert out["label"].size == 3
    out, _, streak = rejoin_split_particles(HALVES, CONTACT, *previous,
                                            previous_streak=np.array([9]))
    assert out["label"].size == 2
    assert streak[0] == 10


def test_not_touching_not_joined() -> None:
    out, _, _ = rejoin_split_particles(HALVES, np.zeros((0, 2), np.int32),
                                       np.array([[50.0, 50.0]]), np.array([1000.0]))
    assert out["label"].size == 3
