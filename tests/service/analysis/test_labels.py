"""Label images by track id and outlines as polygons (service.analysis._labels)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from lithoscope.service.analysis import (
    SessionAnalyzer,
    label_track_ids,
    particle_outlines,
    track_label_image,
    track_lut,
)
from lithoscope.service.analysis._labels import MAX_OUTLINE_POINTS
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


def _outlines_over_the_whole_image(labels: np.ndarray, *, binning: int = 1,
                                   max_points: int = MAX_OUTLINE_POINTS) -> list[dict]:
    """:func:`particle_outlines` by the book: ``find_objects`` over the whole image, one
    polygon at a time."""
    lab = labels.view(np.int32) if labels.dtype in (np.uint32, np.int32) else \
        labels.astype(np.int64, copy=False)
    contours = []
    for track, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        mask = np.pad((lab[box] == track).astype(np.uint8), 1)
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in found:
            shifted = contour.reshape(-1, 2) + np.array([box[1].start - 1, box[0].start - 1])
            contours.append((track, shifted.astype(np.float32)))
    tolerance = 1.0
    while True:
        simplified = [(track, cv2.approxPolyDP(xy.reshape(-1, 1, 2), tolerance, True)
                       .reshape(-1, 2)) for track, xy in contours]
        if sum(len(p) for _, p in simplified) <= max_points or tolerance > 1e4:
            break
        tolerance *= 2.0
    out, total, b = [], 0, float(binning)
    for track, xy in simplified:
        rows = np.rint((xy[:, 1] + 0.5) * b - 0.5).astype(np.int64)
        cols = np.rint((xy[:, 0] + 0.5) * b - 0.5).astype(np.int64)
        total += len(xy)
        if total > max_points:
            break
        out.append({"track_id": int(track), "points": np.column_stack([rows, cols]).tolist()})
    return out


def test_outlines_are_those_traced_over_the_whole_image() -> None:
    """Boxes found in the labelled rectangle only (and by projections for a few labels)
    give the polygons of ``find_objects`` over the whole frame, whatever the ids."""
    config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0, duration_s=30.0)
    analyzer = SessionAnalyzer()
    rng = np.random.default_rng(4)
    with SimulatedSource(config) as source:
        frames = [source.render(i) for i in (2, 18, 25)]
    images = []
    for frame in frames:
        analyzer.update(frame.image, t_s=frame.t_s, index=frame.index, pixel_size_nm=1.0)
        analysis = analyzer.last
        assert analysis is not None
        tracks = track_label_image(analysis.analysis_labels, analyzer.last_track_lut)
        regions = analysis.analysis_needle_mask.astype(np.uint8)
        regions[analysis.analysis_grid_mask] = 2
        # Ids late in a long session, and past int32 (left out, as find_objects does).
        late = np.where(tracks > 0, tracks + 123_456, 0).astype(np.uint32)
        huge = late.copy()
        huge[huge == huge.max()] = 2**31 + 5
        images += [tracks, late, huge, regions, regions.astype(bool), tracks.astype(np.int64)]
    # Regions on the frame's edges and corners, few and many labels, one pixel each.
    edge = np.zeros((40, 50), np.int32)
    edge[0, :] = 1
    edge[:, -1] = 3
    edge[39, 0] = 2
    images += [edge, np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8),
               rng.integers(0, 4, (30, 30)), rng.integers(0, 40, (30, 30)).astype(np.uint32),
               np.where(rng.random((30, 30)) < 0.1, -3, 0)]
    for labels in images:
        for binning, max_points in ((1, MAX_OUTLINE_POINTS), (2, MAX_OUTLINE_POINTS), (3, 40)):
            assert particle_outlines(labels, binning=binning, max_points=max_points) == \
                _outlines_over_the_whole_image(labels, binning=binning, max_points=max_points)


def test_track_images_and_ids_are_those_looked_up_over_the_whole_image() -> None:
    """Only the rectangle holding the particles is looked up: the same image and ids
    as a lookup of every pixel."""
    rng = np.random.default_rng(6)
    images = [np.zeros((0, 4), np.int32), np.zeros((6, 7), np.int32),
              rng.integers(1, 9, (6, 7)).astype(np.int32), rng.integers(0, 9, (3, 4, 5))]
    for _ in range(20):
        image = np.zeros((int(rng.integers(1, 40)), int(rng.integers(1, 40))), np.int32)
        r, c = int(rng.integers(0, image.shape[0])), int(rng.integers(0, image.shape[1]))
        image[r:r + 9, c:c + 7] = rng.integers(0, 12, image[r:r + 9, c:c + 7].shape)
        images.append(image)
    luts = [{}, {k: 1000 + k for k in range(1, 12, 2)}, {0: 77, 3: 5, 40: 9}]
    for image in images:
        for lut in luts:
            table = np.zeros(int(image.max(initial=0)) + 1, np.uint32)
            for label, track in lut.items():
                if 0 < label < table.size:
                    table[label] = track
            expected = table[image]
            got = track_label_image(image, lut)
            assert got.dtype == expected.dtype == np.uint32
            np.testing.assert_array_equal(got, expected)
            present = np.flatnonzero(np.bincount(image.ravel())).tolist()
            ids = sorted({lut.get(label, 0) for label in present} - {0})
            np.testing.assert_array_equal(label_track_ids(image, lut), np.array(ids, np.uint32))
            assert label_track_ids(image, lut).dtype == np.uint32
