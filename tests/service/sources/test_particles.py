"""The real-looking particle field: exact truth, and the segmentation on it."""

from __future__ import annotations

import numpy as np
import pytest

from lithoscope.service.analysis import analyze_frame, segment_particles
from lithoscope.service.errors import ConfigError
from lithoscope.service.sources.particles import ParticleFieldConfig, render_particle_field


def f1_at_half_iou(found: np.ndarray, truth: np.ndarray) -> float:
    n_found, n_true = int(found.max()), int(truth.max())
    overlap = np.bincount(found.ravel().astype(np.int64) * (n_true + 1) + truth.ravel(),
                          minlength=(n_found + 1) * (n_true + 1)).reshape(n_found + 1,
                                                                          n_true + 1)
    union = overlap.sum(axis=1)[:, None] + overlap.sum(axis=0)[None, :] - overlap
    matched = np.count_nonzero((overlap / np.maximum(union, 1))[1:, 1:] > 0.5)
    return 2 * matched / max(1, n_found + n_true)


def test_truth_is_fixed_while_the_contrast_moves() -> None:
    config = ParticleFieldConfig(shape=(256, 256), diameter_px=40, count=6, seed=4)
    first, labels = render_particle_field(config, 0)
    later, labels_later = render_particle_field(config, 6)
    np.testing.assert_array_equal(labels, labels_later)
    inside = labels > 0
    # Bend contours and fringes moved: the particles' insides differ beyond the noise.
    assert np.abs(first[inside].astype(float) - later[inside]).mean() > 10
    assert labels.max() >= 4
    # Some particle is cut by the frame edge.
    edges = np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    assert edges.any()


def test_invalid() -> None:
    with pytest.raises(ConfigError, match="Expected"):
        ParticleFieldConfig(darkness=(0.5, 0.2))
    with pytest.raises(ConfigError, match="diameter_px"):
        ParticleFieldConfig(diameter_px=1.0)


@pytest.mark.parametrize(("diameter_px", "shape", "count"),
                         [(8.0, (192, 192), 40), (60.0, (384, 384), 8),
                          (150.0, (640, 640), 5)], ids=["8px", "60px", "150px"])
def test_segmented_whole_without_a_pixel_size(diameter_px: float, shape: tuple[int, int],
                                              count: int) -> None:
    # Faceted and irregular crystals with moving bend contours, shells, a textured
    # support, edge-cut particles: every one found once, none cut in pieces.
    config = ParticleFieldConfig(shape=shape, diameter_px=diameter_px, count=count, seed=2)
    for index in ((0, 7) if diameter_px == 60.0 else (7,)):
        image, truth = render_particle_field(config, index)
        result = analyze_frame(image)
        labels = np.asarray(result.labels)
        assert f1_at_half_iou(labels, truth) >= 0.95, index
        # A sliver of a particle cut by the edge may be under the smallest size.
        assert abs(int(labels.max()) - int(truth.max())) <= max(1, truth.max() // 20)
        assert result.cluster["particle_diameter_px"] == pytest.approx(diameter_px, rel=0.3)


def test_crystals_not_split_with_a_pixel_size() -> None:
    config = ParticleFieldConfig(shape=(384, 384), diameter_px=60, count=8, seed=5)
    image, truth = render_particle_field(config, 3)
    labels = segment_particles(image, pixel_size_nm=0.5)
    assert f1_at_half_iou(labels, truth) >= 0.9
