"""Label images by track id and outlines as polygons (service.analysis._labels)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lithoscope.service.analysis import (
    SessionAnalyzer,
    particle_outlines,
    track_label_image,
    track_lut,
)
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


def test_joined_pieces_take_the_id_of_their_row() -> None:
    # Labels 2 and 5 touch and were joined into row "2"; 7 is alone; 9 was too small.
    lut = track_lut(np.array([2, 5, 7, 9]), np.array([[2, 5]]), np.array([2, 7]),
                    np.array([40, 41]))
    assert lut == {2: 40, 5: 40, 7: 41}
    image = np.array([[0, 2, 5], [7, 9, 0]])
    assert track_label_image(image, lut).tolist() == [[0, 40, 40], [41, 0, 0]]
    assert track_label_image(image, lut).dtype == np.uint32


def test_outline_of_a_disc_is_a_polygon_on_its_boundary() -> None:
    rows, cols = np.mgrid[:64, :80]
    labels = np.where(np.hypot(rows - 30, cols - 40) <= 12, 7, 0)
    (outline,) = particle_outlines(labels, binning=2)
    assert outline["track_id"] == 7
    points = np.asarray(outline["points"], float)
    assert 8 <= len(points) <= 64  # simplified, not every boundary pixel
    # In frame pixels (binning 2): the disc's centre is at (61, 81), radius ~24.
    radius = np.hypot(points[:, 0] - 60.5, points[:, 1] - 80.5)
    assert np.all(np.abs(radius - 23.5) < 3.5), radius


def test_outlines_are_bounded_in_vertices() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((200, 200), np.int64)
    for track in range(1, 120):
        r, c = rng.integers(5, 195, 2)
        labels[r - 4:r + 4, c - 4:c + 4] = track
    outlines = particle_outlines(labels, max_points=200)
    assert sum(len(o["points"]) for o in outlines) <= 200
    assert outlines  # coarser, not none
    assert particle_outlines(np.zeros((5, 5), int)) == []
    with pytest.raises(ValueError, match="2-D"):
        particle_outlines(np.zeros(5, int))


def test_the_label_image_holds_the_track_ids_of_the_particles_table() -> None:
    config = SimConfig(shape=(192, 192), pixel_size_nm=1.5, fps=1.0, duration_s=6.0,
                       contact_s=2.0, bias_on_s=3.0, withdraw_s=5.0)
    analyzer = SessionAnalyzer()
    with SimulatedSource(config) as source:
        for frame in source:
            _, particles, _ = analyzer.update(frame.image, t_s=frame.t_s, index=frame.index,
                                              pixel_size_nm=config.pixel_size_nm)
            analysis = analyzer.last
            assert analysis is not None
            image = track_label_image(analysis.analysis_labels, analyzer.last_track_lut)
            ids = set(np.unique(image).tolist()) - {0}
            assert ids == set(particles["track_id"].tolist())
            # Each particle's label area, in input pixels, is its measured area.
            b = analysis.binning
            for track, area in zip(particles["track_id"].tolist(),
                                   particles["area_px"].tolist(), strict=True):
                assert math.isclose(np.count_nonzero(image == track) * b * b, area,
                                    rel_tol=0.15)  # sub-pixel areas differ a little


def test_results_outline_the_particles_and_the_needle() -> None:
    from lithoscope.service.pipeline import SessionPipeline
    from lithoscope.service.protocol import SessionStart

    config = SimConfig(shape=(192, 192), pixel_size_nm=1.5, fps=1.0, duration_s=8.0,
                       contact_s=2.0, bias_on_s=3.0, withdraw_s=7.0)
    pipeline = SessionPipeline(SessionStart(session_id="s", source="sim", source_kind="sim",
                                            t0_unix=0.0, live=False,
                                            pixel_size_nm=config.pixel_size_nm))
    needles = 0
    with SimulatedSource(config) as source:
        for frame in source:
            output = pipeline.analyse(frame.image, index=frame.index, t_s=frame.t_s,
                                      pixel_size_nm=None, exposure_s=None, metadata={},
                                      acquired_at=0.0)
            result, labels = output.result, output.labels
            assert labels is not None
            assert {o["track_id"] for o in result.outlines} == set(
                result.particles["track_id"])
            needle = [r for r in result.regions if r["region"] == "needle"]
            assert bool(needle) == bool(labels.needle.any())
            needles += bool(needle)
    assert needles >= 4  # the needle is in view for most of the session
