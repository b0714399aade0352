"""measure_particles: the fast path (bincount) against scikit-image's regionprops_table."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops_table

from lithoscope.service.analysis import (
    PARTICLE_COLUMNS,
    empty_particles,
    measure_particles,
    particle_contacts,
)

COLUMNS = ["label", "area_px", "area_nm2", "centroid_row", "centroid_col",
           "equivalent_diameter_nm", "mean_intensity", "touches_needle", "touches_frame_edge"]


def discs(shape: tuple[int, int], circles: list[tuple[int, int, int]]) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for label, (row, col, radius) in enumerate(circles, start=1):
        cv2.circle(labels, (col, row), radius, label, -1)
    return labels


def test_columns_and_dtypes() -> None:
    assert list(PARTICLE_COLUMNS) == COLUMNS
    labels = discs((60, 80), [(20, 20, 8), (40, 60, 5)])
    table = measure_particles(labels, np.ones((60, 80), np.uint16), pixel_size_nm=0.5)
    assert list(table) == COLUMNS
    for name, dtype in PARTICLE_COLUMNS.items():
        assert table[name].dtype == dtype, name
        assert table[name].shape == (2,)


@pytest.mark.parametrize("pixel_size_nm", [None, 0.5])
def test_empty_frame_gives_zero_length_columns(pixel_size_nm: float | None) -> None:
    table = measure_particles(np.zeros((30, 40), np.int32), np.zeros((30, 40), np.uint16),
                              needle_mask=np.ones((30, 40), bool), pixel_size_nm=pixel_size_nm)
    assert list(table) == COLUMNS
    for name, dtype in PARTICLE_COLUMNS.items():
        assert table[name].dtype == dtype
        assert table[name].shape == (0,)
    assert {k: v.dtype for k, v in empty_particles().items()} == PARTICLE_COLUMNS


def test_physical_units() -> None:
    labels = discs((100, 100), [(50, 50, 20)])
    image = np.full((100, 100), 7.0, np.float32)
    table = measure_particles(labels, image, pixel_size_nm=0.5)
    area = np.count_nonzero(labels)
    assert table["area_px"][0] == area
    assert table["area_nm2"][0] == pytest.approx(area * 0.25)
    assert table["equivalent_diameter_nm"][0] == pytest.approx(2 * np.sqrt(area * 0.25 / np.pi))
    assert table["equivalent_diameter_nm"][0] == pytest.approx(20.0, rel=0.02)
    assert (table["centroid_row"][0], table["centroid_col"][0]) == pytest.approx((50.0, 50.0))
    assert table["mean_intensity"][0] == pytest.approx(7.0)
    unknown = measure_particles(labels, image, pixel_size_nm=None)
    assert np.isnan(unknown["area_nm2"]).all()
    assert np.isnan(unknown["equivalent_diameter_nm"]).all()


def test_touches_needle_within_contact_distance() -> None:
    labels = discs((100, 200), [(50, 50, 10), (50, 100, 10), (50, 150, 10)])
    needle = np.zeros((100, 200), bool)
    needle[:, :39] = True  # 1 px gap to particle 1 (its left edge is column 40)
    needle[:30, 100] = True  # 10 px from particle 2
    table = measure_particles(labels, np.ones((100, 200)), needle_mask=needle, contact_px=2)
    assert table["touches_needle"].tolist() == [True, False, False]
    overlapping = needle.copy()
    overlapping[40:60, 140:160] = True
    table = measure_particles(labels, np.ones((100, 200)), needle_mask=overlapping)
    assert table["touches_needle"].tolist() == [True, False, True]
    assert not measure_particles(labels, np.ones((100, 200)))["touches_needle"].any()


def test_labels_need_not_be_consecutive() -> None:
    labels = discs((60, 60), [(15, 15, 5), (45, 45, 5)])
    labels[labels == 2] = 9
    table = measure_particles(labels, np.ones((60, 60)))
    assert table["label"].tolist() == [1, 9]


def test_inputs_not_modified() -> None:
    labels = discs((60, 60), [(30, 30, 10)])
    image = np.random.default_rng(0).integers(0, 1000, (60, 60)).astype(np.uint16)
    needle = np.zeros((60, 60), bool)
    needle[:, :5] = True
    copies = labels.copy(), image.copy(), needle.copy()
    measure_particles(labels, image, needle_mask=needle, pixel_size_nm=1.0)
    for before, after in zip(copies, (labels, image, needle), strict=True):
        np.testing.assert_array_equal(before, after)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="one shape"):
        measure_particles(np.zeros((3, 3), np.int32), np.zeros((3, 4)))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 12),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
)
def test_matches_regionprops(seed: int, count: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
    labels = np.zeros(shape, np.int32)
    for label in range(1, count + 1):
        row, col = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        cv2.circle(labels, (int(col), int(row)), int(rng.integers(1, 12)), label, -1)
    image = rng.integers(0, 200, shape).astype(dtype)
    table = measure_particles(labels, image, pixel_size_nm=2.0)
    if not labels.any():
        assert table["label"].size == 0
        return
    reference = regionprops_table(labels, intensity_image=image,
                                  properties=("label", "area", "centroid", "intensity_mean"))
    np.testing.assert_array_equal(table["label"], reference["label"])
    np.testing.assert_array_equal(table["area_px"], reference["area"])
    np.testing.assert_allclose(table["centroid_row"], reference["centroid-0"])
    np.testing.assert_allclose(table["centroid_col"], reference["centroid-1"])
    np.testing.assert_allclose(table["mean_intensity"], reference["intensity_mean"], rtol=1e-6)
    np.testing.assert_allclose(table["area_nm2"], reference["area"] * 4.0)


def upsample(array: np.ndarray, binning: int, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, array.dtype)
    big = np.repeat(np.repeat(array, binning, axis=0), binning, axis=1)
    out[: big.shape[0], : big.shape[1]] = big
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    binning=st.integers(2, 5),
    contact_px=st.integers(0, 9),
    count=st.integers(1, 10),
)
def test_binned_measurements_are_those_of_the_upsampled_labels(
    seed: int, binning: int, contact_px: int, count: int,
) -> None:
    """At analysis resolution, the table of the labels upsampled to input resolution:
    areas, centroids (block centres), means and needle contact."""
    rng = np.random.default_rng(seed)
    small_shape = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
    # Input frames need not be a multiple of the binning: the rest is never labelled.
    shape = (small_shape[0] * binning + int(rng.integers(0, binning)),
             small_shape[1] * binning + int(rng.integers(0, binning)))
    labels = np.zeros(small_shape, np.int32)
    for label in range(1, count + 1):
        row, col = rng.integers(0, small_shape[0]), rng.integers(0, small_shape[1])
        cv2.circle(labels, (int(col), int(row)), int(rng.integers(1, 6)), label, -1)
    needle = np.zeros(small_shape, np.bool_)
    needle[:, : int(rng.integers(1, 4))] = True
    needle &= labels == 0
    image = rng.integers(0, 4000, shape).astype(np.uint16)
    rows, cols = small_shape
    block_means = image[: rows * binning, : cols * binning].astype(np.float64).reshape(
        rows, binning, cols, binning).mean(axis=(1, 3))

    binned = measure_particles(labels, block_means, needle_mask=needle, pixel_size_nm=0.25,
                               contact_px=contact_px, binning=binning)
    full = measure_particles(upsample(labels, binning, shape), image,
                             needle_mask=upsample(needle, binning, shape), pixel_size_nm=0.25,
                             contact_px=contact_px)
    for name in ("label", "area_px", "touches_needle"):
        np.testing.assert_array_equal(binned[name], full[name], err_msg=name)
    for name in ("area_nm2", "centroid_row", "centroid_col", "equivalent_diameter_nm",
                 "mean_intensity"):
        np.testing.assert_allclose(binned[name], full[name], rtol=1e-9, err_msg=name)
    for name, dtype in PARTICLE_COLUMNS.items():
        assert binned[name].dtype == dtype, name


def test_binning_must_be_positive() -> None:
    with pytest.raises(ValueError, match="binning >= 1"):
        measure_particles(np.zeros((3, 3), np.int32), np.zeros((3, 3)), binning=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), binning=st.integers(2, 4))
def test_contacts_of_binned_labels_are_those_of_the_upsampled(seed: int, binning: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.zeros((30, 30), np.int32)
    for label in range(1, 9):
        row, col = rng.integers(0, 30, 2)
        cv2.circle(labels, (int(col), int(row)), int(rng.integers(2, 8)), label, -1)
    shape = (30 * binning + 1, 30 * binning + 2)
    np.testing.assert_array_equal(particle_contacts(labels),
                                  particle_contacts(upsample(labels, binning, shape)))


def test_touches_frame_edge_marks_particles_cut_by_the_border() -> None:
    labels = discs((100, 200), [(50, 5, 10), (50, 100, 10), (95, 150, 10)])
    table = measure_particles(labels, np.ones((100, 200)))
    assert table["touches_frame_edge"].tolist() == [True, False, True]
    binned = measure_particles(labels[::2, ::2], np.ones((50, 100)), binning=2)
    assert binned["touches_frame_edge"].tolist() == [True, False, True]
