"""The analysis' fast primitives against the reference implementations they replace:
h-maxima (scikit-image), labelled components (OpenCV's statistics, and the whole
frame's labels for those found in a box), the particle radius from a box's distance
transform (the whole frame's), medians from histograms (numpy), and the preparation
whatever the frame's memory layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.morphology import h_maxima

from lithoscope.service.analysis import AnalysisConfig, _particles, analyze_frame
from lithoscope.service.analysis._particles import _boxed_distance, _particle_radius
from lithoscope.service.analysis._prepare import (
    _boxed_components,
    _components,
    _histogram_median,
    _prepare,
)
from lithoscope.service.analysis._split import _h_maxima
from lithoscope.service.sources.sim import SimulatedSource
from lithoscope.service.sources.sim_draws import draw_sim_config


def _landscape(seed: int, shape: tuple[int, int], blobs: int) -> np.ndarray:
    """Smooth float32 hills on noise, as the splitting landscape of a clump."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    image = rng.normal(0, 1.0, shape).astype(np.float32)
    for _ in range(blobs):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        width = rng.uniform(3, 15)
        image += np.float32(rng.uniform(5, 60)) * np.exp(
            -((rows - r) ** 2 + (cols - c) ** 2) / (2 * width ** 2)).astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("height", [0.5, 2.0, 4.5, 20.0])
def test_h_maxima_matches_scikit_image(seed: int, height: float) -> None:
    image = _landscape(seed, (90 + 7 * seed, 120 - 5 * seed), blobs=3 + seed)
    expected = h_maxima(image, height).astype(bool)  # type: ignore[no-untyped-call]
    np.testing.assert_array_equal(_h_maxima(image, height), expected)


def test_h_maxima_of_a_flat_or_low_image_is_empty() -> None:
    flat = np.full((20, 30), 3.0, np.float32)
    assert not _h_maxima(flat, 1.0).any()
    low = _landscape(1, (40, 40), blobs=0)
    assert not _h_maxima(low, 1000.0).any()


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_components_match_opencv_statistics(connectivity: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = (cv2.GaussianBlur(rng.random((150, 170)).astype(np.float32), (0, 0), 2.0)
            > 0.5).view(np.uint8)
    count, labels, area, on_edge = _components(mask, connectivity)
    expected_count, expected_labels, stats, _ = cv2.connectedComponentsWithStats(
        mask, connectivity=connectivity, ltype=cv2.CV_32S)
    assert count == expected_count
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(area, stats[:, cv2.CC_STAT_AREA])
    x, y, w, h = (stats[:, i] for i in range(4))
    rows, cols = mask.shape
    np.testing.assert_array_equal(
        on_edge, (x == 0) | (y == 0) | (x + w == cols) | (y + h == rows))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=60))
def test_histogram_median_is_numpy_median(values: list[int]) -> None:
    counts = np.bincount(values).astype(np.float32)
    assert _histogram_median(counts) == np.median(values)


def test_preparation_does_not_depend_on_the_frames_memory_layout() -> None:
    rng = np.random.default_rng(3)
    frame = rng.poisson(40, (96, 128)).astype(np.uint16)
    frame[rng.integers(0, 96, 30), rng.integers(0, 128, 30)] = 4000  # hot pixels
    fortran = np.asfortranarray(frame)
    before = fortran.copy()
    config = AnalysisConfig(binning=1).at_pixel_size(None)
    np.testing.assert_array_equal(_prepare(fortran, config).flat, _prepare(frame, config).flat)
    np.testing.assert_array_equal(fortran, before)  # the caller's frame is not touched


@pytest.mark.parametrize("gap_px", [4, 6])
def test_particles_near_the_frame_edge_are_kept_whole(gap_px: int) -> None:
    # The particle steps run on the particles' bounding box with a margin: a particle
    # cut by the frame edge, and one a few pixels from it (its box reaching the edge
    # or not), are measured as on the whole frame.
    frame = np.full((160, 200), 1000.0, np.float32)
    cv2.circle(frame, (0, 80), 25, 500.0, -1)  # cut by the left edge
    cv2.circle(frame, (120, 25 + gap_px), 25, 500.0, -1)
    frame = cv2.GaussianBlur(frame, (0, 0), 1.0)
    config = AnalysisConfig(reference_pixel_size_nm=0, split_touching=False)
    result = analyze_frame(frame, config=config)
    particles = result.particles
    assert result.cluster["particle_count"] == 2
    order = np.argsort(particles["centroid_col"])
    assert particles["touches_frame_edge"][order].tolist() == [True, False]
    half, whole = np.pi * 25 ** 2 / 2, np.pi * 25 ** 2
    assert particles["area_px"][order] == pytest.approx([half, whole], rel=0.06)


def _sparse_blobs(seed: int, shape: tuple[int, int], blobs: int) -> np.ndarray:
    """A bool mask of a few discs and ellipses in one corner of a frame (some cut by
    its edges, as particles and the needle are), plus single-pixel specks."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    rows, cols = shape
    # A patch of the frame, placed anywhere (odd offsets included), sometimes on an edge.
    top, left = int(rng.integers(-20, rows // 2)), int(rng.integers(-20, cols // 2))
    for _ in range(blobs):
        centre = (left + int(rng.integers(0, cols // 2)), top + int(rng.integers(0, rows // 2)))
        axes = (int(rng.integers(2, 25)), int(rng.integers(2, 25)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    specks = rng.integers(0, [rows, cols], size=(int(rng.integers(0, 6)), 2))
    mask[specks[:, 0], specks[:, 1]] = 1
    return mask.view(np.bool_)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("margin", [0, 2])
def test_components_in_a_box_are_the_whole_frames(seed: int, margin: int) -> None:
    shape = (150 + seed, 203 - 3 * seed)
    mask = _sparse_blobs(seed, shape, blobs=2 + seed % 5)
    count, labels, area, on_edge = _components(mask.view(np.uint8))
    boxed_count, boxed, boxed_area, boxed_edge, box = _boxed_components(
        mask.view(np.uint8), margin)
    assert boxed_count == count
    assert box[0].start % 2 == 0
    assert box[1].start % 2 == 0
    whole = np.zeros(shape, np.int32)
    whole[box] = boxed
    np.testing.assert_array_equal(whole, labels)  # every region, numbered alike
    np.testing.assert_array_equal(boxed_area[1:], area[1:])
    np.testing.assert_array_equal(boxed_edge[1:], on_edge[1:])  # the frame's edge


def test_components_of_an_empty_mask_in_a_box() -> None:
    count, labels, area, on_edge, box = _boxed_components(np.zeros((40, 30), np.uint8))
    assert count == 1
    assert labels.size == 0
    assert box == (slice(0, 0), slice(0, 0))


def _whole_frame_distance(foreground: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform(
        cv2.copyMakeBorder(foreground.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE),
        cv2.DIST_L2, 5)[1:-1, 1:-1]


def _assert_boxed_distance_is_the_whole_frames(foreground: np.ndarray) -> None:
    box = _boxed_components(foreground.view(np.uint8))[4]
    np.testing.assert_array_equal(_boxed_distance(foreground, box),
                                  _whole_frame_distance(foreground)[box])


@pytest.mark.parametrize("seed", range(24))
def test_distances_in_a_box_are_the_whole_frames(seed: int) -> None:
    shape = (170 + 3 * seed, 260 - 5 * seed)
    _assert_boxed_distance_is_the_whole_frames(_sparse_blobs(seed, shape, 1 + seed % 6))


@pytest.mark.parametrize(("top", "left", "bottom", "right"), [
    (10, 32, 40, 70),  # the box's first row and column are the region's own
    (0, 0, 30, 40),  # on the frame's top and left edges
    (21, 47, 60, 99),  # ends on the frame's bottom and right edges
    (0, 16, 60, 99),
])
def test_distances_in_a_box_on_its_regions_edges(top: int, left: int, bottom: int,
                                                 right: int) -> None:
    foreground = np.zeros((60, 99), np.bool_)
    foreground[top:bottom, left:right] = True
    foreground[top + 3:bottom - 3, left + 5] = False  # a slit: distances inside vary
    _assert_boxed_distance_is_the_whole_frames(foreground)


def test_distances_in_a_box_are_the_whole_frames_to_the_last_bit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The regions the analysis measures its particle scale on, in a crystal frame
    # whose distances came out a bit off (3.8e-6 px) in a box not aligned to
    # _DISTANCE_COLUMNS.
    masks: list[np.ndarray] = []
    measure = _particles._particle_radius

    def spy(foreground: np.ndarray, min_area: int) -> float:
        masks.append(foreground.copy())
        return measure(foreground, min_area)

    monkeypatch.setattr(_particles, "_particle_radius", spy)
    source = SimulatedSource(draw_sim_config(2, shape=(256, 256), pixel_size_nm=1.0,
                                             look="crystal"))
    analyze_frame(source.render(320).image)
    assert masks
    for foreground in masks:
        _assert_boxed_distance_is_the_whole_frames(foreground)


def _whole_frame_radius(foreground: np.ndarray, min_area: int) -> float:
    """The particle radius as measured on the whole frame's distance transform."""
    count, components, area, _ = _components(foreground.view(np.uint8))
    areas = area[1:].astype(np.float64)
    keep = np.flatnonzero(areas >= max(1, min_area)) + 1
    if count <= 1 or keep.size == 0:
        return 0.0
    distance = _whole_frame_distance(foreground)
    highest = np.zeros(count, np.float32)
    np.maximum.at(highest, components.ravel(), distance.ravel())
    peaks = highest[keep].astype(np.float64)
    weights = areas[keep - 1]
    order = np.argsort(peaks)
    cumulative = np.cumsum(weights[order])
    return float(peaks[order][int(np.searchsorted(cumulative, cumulative[-1] / 2))])


@pytest.mark.parametrize("seed", range(24))
def test_particle_radius_in_a_box_is_the_whole_frames(seed: int) -> None:
    # Bit for bit: the box is placed so that OpenCV's float distances come out as on
    # the whole frame, wherever the regions lie (edges included).
    shape = (170 + 3 * seed, 260 - 5 * seed)
    mask = _sparse_blobs(seed, shape, blobs=1 + seed % 6)
    for min_area in (1, 6, 200):
        assert _particle_radius(mask, min_area) == _whole_frame_radius(mask, min_area)
