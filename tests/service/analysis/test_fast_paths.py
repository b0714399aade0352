"""The analysis' fast primitives against the reference implementations they replace:
h-maxima (scikit-image), labelled components (OpenCV's statistics), medians from
histograms (numpy), and the preparation whatever the frame's memory layout."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.morphology import h_maxima

from lithoscope.service.analysis import AnalysisConfig, analyze_frame
from lithoscope.service.analysis._prepare import _components, _histogram_median, _prepare
from lithoscope.service.analysis._split import _h_maxima


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
