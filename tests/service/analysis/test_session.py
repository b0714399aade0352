"""SessionAnalyzer: one simulated experiment, frame by frame, against the truth."""

from __future__ import annotations

import copy
import itertools
import math
from collections import deque

import numpy as np
import pytest

from lithoscope.service.analysis import (
    CLUSTER_COLUMNS,
    SESSION_PARTICLE_COLUMNS,
    FrameAnalysis,
    FrameMeasurement,
    SessionAnalyzer,
    _session,
    analyze_frame,
    measure_frame,
    particle_contacts,
    session_iter,
)
from lithoscope.service.protocol import EventKind
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

from support.benchmark import REALISTIC

# A whole lithiation at 1 frame/s on small frames: contact 15 s, bias 20 s, withdrawal 80 s.
MOVIE = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0, duration_s=100.0)


@pytest.fixture(scope="module")
def analysed() -> tuple[SimulatedSource, list, SessionAnalyzer]:
    source = SimulatedSource(MOVIE)
    frames = list(source)
    analyzer = SessionAnalyzer()
    results = list(session_iter(analyzer, ((f.image, f.t_s, f.index, 1.0) for f in frames)))
    return source, list(zip(frames, results, strict=True)), analyzer


@pytest.fixture(scope="module")
def session(analysed: tuple) -> tuple[SimulatedSource, list]:
    source, rows, _ = analysed
    return source, rows


def test_columns_and_dtypes(session: tuple) -> None:
    _, rows = session
    for _, (cluster, particles, _) in rows[::17]:
        assert set(cluster) == set(CLUSTER_COLUMNS)
        assert list(particles) == list(SESSION_PARTICLE_COLUMNS)
        lengths = {len(v) for v in particles.values()}
        assert len(lengths) == 1
        for name, dtype in SESSION_PARTICLE_COLUMNS.items():
            assert particles[name].dtype == dtype


def test_reference_is_taken_before_contact(session: tuple) -> None:
    _, rows = session
    changes = {f.index: c["relative_area_change"] for f, (c, _, _) in rows}
    assert math.isnan(changes[10])  # no contact yet: no reference
    assert abs(changes[19]) < 0.01  # touching, no bias yet: nothing changed


def test_cluster_change_and_physics_follow_the_truth(session: tuple) -> None:
    _, rows = session
    truth0 = np.median([f.truth["cluster_area_px"] for f, _ in rows[7:15]])
    for frame, (cluster, _, _) in rows[30:80:10]:
        true_change = frame.truth["cluster_area_px"] / truth0 - 1.0
        assert cluster["relative_area_change"] == pytest.approx(true_change, abs=0.02)
        assert cluster["volume_ratio"] == pytest.approx(
            (1 + cluster["relative_area_change"]) ** 1.5)
        assert cluster["lithium_x"] == pytest.approx((cluster["volume_ratio"] - 1) / (2.8 / 3.75))
    swelling = [c["area_rate_nm2_per_s"] for f, (c, _, _) in rows if 25 <= f.t_s <= 40]
    assert np.median(swelling) > 0
    shrinking = [c["area_rate_nm2_per_s"] for f, (c, _, _) in rows if 82 <= f.t_s <= 90]
    assert np.median(shrinking) < 0


def test_diffusion_coefficient_within_a_factor_of_two_of_the_truth(session: tuple) -> None:
    source, rows = session
    values = [c["diffusion_coefficient_cm2_per_s"] for f, (c, _, _) in rows if f.t_s < 80]
    estimate = [v for v in values if math.isfinite(v)][-1]
    assert 0.5 < estimate / source.diffusion_coefficient_cm2_per_s < 2.0


def test_alerts_carry_particle_ids(session: tuple) -> None:
    _, rows = session
    alerts = [a for _, (_, _, found) in rows for a in found]
    kinds = [a.kind for a in alerts]
    assert kinds[:2] == [EventKind.CONTACT_MADE, EventKind.EXPANSION_ONSET]
    assert EventKind.CONTRACTION_ONSET in kinds
    made = alerts[0]
    touching = [p for f, (_, p, _) in rows if f.index == made.frame][0]
    assert made.particle_ids == tuple(sorted(touching["track_id"][touching["touches_needle"]]))
    assert all(a.particle_ids for a in alerts if a.kind in (EventKind.EXPANSION_ONSET,
                                                            EventKind.CONTACT_LOST))


def test_neighbours_are_symmetric_track_ids(session: tuple) -> None:
    _, rows = session
    for _, (_, particles, _) in rows[::25]:
        graph = {int(t): {int(x) for x in n.split()} for t, n in
                 zip(particles["track_id"], particles["neighbour_ids"], strict=True)}
        assert any(graph.values())  # a cluster: somebody touches somebody
        for track, others in graph.items():
            for other in others:
                assert track in graph[other]


def test_contacts_of_a_drawn_label_image() -> None:
    labels = np.zeros((10, 12), np.int32)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 2  # touches 1 along a column
    labels[5:8, 4:6] = 3  # touches 2 below
    labels[8:10, 9:12] = 4  # alone
    np.testing.assert_array_equal(particle_contacts(labels), [[1, 2], [2, 3]])
    assert particle_contacts(np.zeros((5, 5), np.int32)).shape == (0, 2)


def test_grid_bar_is_neither_needle_nor_particle() -> None:
    config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=2.0, grid_bar=True)
    source = SimulatedSource(config)
    before, touching = source.render(10), source.render(40)  # 5 s and 20 s
    for frame in (before, touching):
        result: FrameAnalysis = analyze_frame(frame.image, pixel_size_nm=1.0)
        assert result.cluster["needle_contact"] == frame.truth["needle_contact"]
        assert result.cluster["grid_area_px"] > 256 * 8
        assert result.grid_mask[:, -1].all()  # along the far edge
        classes = result.classes()
        assert not (classes[:, -3:] == 1).any()
        assert result.cluster["area_px"] == pytest.approx(frame.truth["cluster_area_px"],
                                                          rel=0.04)


def test_histories_of_vanished_tracks_are_forgotten() -> None:
    """A session of hours must not keep the history of every track id it ever gave out."""
    sim = SimulatedSource(SimConfig(shape=(256, 256), pixel_size_nm=1.0))
    analyzer = SessionAnalyzer()
    frame = sim.render(0).image
    _, particles, _ = analyzer.update(frame, t_s=0.0, index=0, pixel_size_nm=1.0)
    assert len(particles["track_id"]) > 0
    seen = {int(i) for i in particles["track_id"]}
    vacuum = np.full_like(frame, np.percentile(frame, 99))
    for i, t_s in enumerate(np.arange(1.0, 200.0, 2.0), start=1):  # past the tracker memory
        analyzer.update(vacuum, t_s=float(t_s), index=i, pixel_size_nm=1.0)
    _, again, _ = analyzer.update(frame, t_s=200.0, index=999, pixel_size_nm=1.0)
    # Long gone ids are dropped; the particles seen again start new histories.
    assert seen.isdisjoint(int(i) for i in again["track_id"])
    assert set(analyzer._tracks) == {int(i) for i in again["track_id"]}


def test_measured_elsewhere_gives_the_same_session() -> None:
    """update() == measure_frame() (stateless, could run in another process) followed by
    update_measured() in frame order: what `serve --workers N` relies on."""
    source = SimulatedSource(SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0,
                                       duration_s=40.0, drift_px_per_frame=0.5))
    frames = list(source)
    whole, split = SessionAnalyzer(), SessionAnalyzer()
    measurements = [measure_frame(f.image, pixel_size_nm=1.0) for f in frames]
    for frame, measurement in zip(frames, measurements, strict=True):
        a = whole.update(frame.image, t_s=frame.t_s, index=frame.index, pixel_size_nm=1.0)
        b = split.update_measured(measurement, t_s=frame.t_s, index=frame.index,
                                  pixel_size_nm=1.0)
        np.testing.assert_equal(a[0], b[0])
        assert a[1].keys() == b[1].keys()
        for name in a[1]:
            np.testing.assert_array_equal(a[1][name], b[1][name])
        assert a[2] == b[2]
    assert whole.drift.drift_px != (0.0, 0.0)
    assert measurements[0].drift_image.nbytes * 2 <= frames[0].image.nbytes


def _samples(analyzer: SessionAnalyzer) -> list[int]:
    return [len(s.samples) for s in (analyzer._cluster, *analyzer._tracks.values())]


def test_histories_stop_growing_once_the_contact_is_lost(analysed: tuple) -> None:
    """A session goes on for hours after the needle left: the rate needs the last
    ``rate_window_s`` of each track, and nothing else may grow with every frame."""
    _, rows, done = analysed
    analyzer = copy.deepcopy(done)  # the module's other tests read its results only
    assert analyzer._contact_lost
    last = rows[-1][0]
    window = analyzer.alert_config.rate_window_s
    counts = []
    for k in range(1, 121):  # 2 min more of the settled cluster at 1 frame/s
        analyzer.update(last.image, t_s=last.t_s + k, index=last.index + k, pixel_size_nm=1.0)
        if k in (20, 120):
            counts.append(_samples(analyzer))
    assert max(counts[-1]) <= window + 1
    assert sum(counts[-1]) == sum(counts[0])


def test_histories_in_contact_without_an_onset_keep_the_rate_window() -> None:
    """The needle resting on a cluster that does not change: no onset to fit from."""
    frame = SimulatedSource(MOVIE).render(18)  # touching, before the bias
    analyzer = SessionAnalyzer()
    counts = []
    for k in range(150):
        analyzer.update(frame.image, t_s=float(k), index=k, pixel_size_nm=1.0)
        if k in (50, 149):
            counts.append(_samples(analyzer))
    assert analyzer._contact_started_s is not None
    assert analyzer._onset_s is None
    assert sum(counts[-1]) == sum(counts[0])


def _two_contacts() -> tuple[list[tuple[float, list]], SessionAnalyzer]:
    """A cluster touched twice: swelling under the first contact (10-40 s), shrinking
    after it, and swelling again, twice as fast, under the second (60-90 s). The measurements are
    one real frame's, with areas scaled by a known law, so only the state across
    contacts is under test."""
    frame = SimulatedSource(MOVIE).render(18)
    base = measure_frame(frame.image, pixel_size_nm=1.0)
    touching = base.particles["touches_needle"].copy()
    assert touching.any()

    def swelling(t: float) -> float:
        if t <= 40:
            return 0.3 * (1 - math.exp(-(t - 15) / 8)) if t > 15 else 0.0
        if t <= 65:
            return swelling(40) * math.exp(-(t - 40) / 6)
        rest = swelling(65)  # the second swelling is twice as fast: its own D
        return rest + (0.4 - rest) * (1 - math.exp(-(min(t, 90) - 65) / 4))

    analyzer = SessionAnalyzer()
    rows = []
    for k in range(0, 4 * 110):
        t = k / 4
        contact = 10 <= t < 40 or 60 <= t < 90
        scale = 1.0 + swelling(t)
        particles = dict(base.particles)
        particles["area_px"] = np.round(base.particles["area_px"] * scale).astype(np.int64)
        particles["touches_needle"] = touching & contact
        # Withdrawn, the needle's tip is 20 px back (a withdrawal moves it away).
        away = 0.0 if contact or t < 10 else 20.0
        cluster = dict(base.cluster, area_px=float(particles["area_px"].sum()),
                       needle_contact=contact, needle_joined=contact,
                       needle_tip_col=float(base.cluster["needle_tip_col"]) - away)
        measurement = FrameMeasurement(particles=particles, cluster=cluster,
                                       contacts=base.contacts, drift_image=base.drift_image,
                                       drift_scale=base.drift_scale)
        rows.append((t, analyzer.update_measured(measurement, t_s=t, index=k,
                                                 pixel_size_nm=1.0)))
    return rows, analyzer


def test_a_second_contact_is_a_new_lithiation() -> None:
    """Microscopists withdraw and touch again: the second contact gets its own onset,
    its own fit of D, and its changes stay relative to the pristine cluster."""
    rows, _ = _two_contacts()
    alerts = [(t, a) for t, (_, _, found) in rows for a in found]
    kinds = [a.kind for _, a in alerts]
    assert kinds.count(EventKind.CONTACT_MADE) == 2
    assert kinds.count(EventKind.CONTACT_LOST) == 2
    onsets = [a.t_s for _, a in alerts if a.kind is EventKind.EXPANSION_ONSET]
    assert len(onsets) == 2
    assert 15 <= onsets[0] <= 17
    assert 65 <= onsets[1] <= 67
    fitted = {t: c["diffusion_coefficient_cm2_per_s"] for t, (c, _, _) in rows}
    first, second = fitted[39.75], fitted[89.75]
    assert math.isfinite(first)
    assert math.isfinite(second)
    assert 1.5 < second / first < 3.0  # fitted again on a swelling twice as fast
    change = {t: c["relative_area_change"] for t, (c, _, _) in rows}
    rest = 0.3 * (1 - math.exp(-25 / 8)) * math.exp(-25 / 6)
    assert change[89.75] == pytest.approx(rest + (0.4 - rest) * (1 - math.exp(-24.75 / 4)),
                                          abs=0.01)


def test_a_merged_fed_particle_raises_no_onset_before_the_bias() -> None:
    """At 2 e/A^2/s and 1 nm/px the particle at the needle was merged with its neighbour
    in one frame (+50 % area) 2.5 s before the bias: the CUSUM on the fed particles'
    area raised an expansion onset. Merged, it has no area for that frame."""
    source = SimulatedSource(SimConfig(shape=(256, 256), pixel_size_nm=1.0, seed=0,
                                       **REALISTIC), scenario="low_dose")
    analyzer = SessionAnalyzer()
    kinds = []
    merged = 0
    for index in range(40, 80):  # 10-20 s: contact at 15 s, the bias at 20 s
        frame = source.render(index)
        _, _, alerts = analyzer.update(frame.image, t_s=frame.t_s, index=index,
                                       pixel_size_nm=1.0)
        kinds += [a.kind for a in alerts]
        merged += int(analyzer.tracker.merged_with.any())
    assert EventKind.CONTACT_MADE in kinds
    assert EventKind.EXPANSION_ONSET not in kinds
    assert merged  # the frames that raised it are still there


def _edge_swing(edge_flag: bool, crossing: bool = False) -> list:
    """A cluster in contact from t = 10 s, no lithium, and one separate particle cut by
    the frame edge whose area in view swings by its whole size as the stage drifts
    (flagged ``touches_frame_edge`` or not); with ``crossing`` it is wholly in view
    from t = 45 s, when its swing peaks (its area stays, its flag goes off)."""
    frame = SimulatedSource(MOVIE).render(18)
    base = measure_frame(frame.image, pixel_size_nm=1.0)
    touching = base.particles["touches_needle"].copy()
    assert touching.any()
    n = base.particles["label"].size
    analyzer = SessionAnalyzer()
    found = []
    total = float(base.particles["area_px"].sum())
    for k in range(4 * 70):
        t = k / 4
        contact = t >= 10
        particles = {name: np.append(column, column[:1]) for name, column in
                     base.particles.items()}
        particles["label"][n] = int(base.particles["label"].max()) + 1
        particles["centroid_row"][n], particles["centroid_col"][n] = 3.0, 3.0
        inside = crossing and t >= 45
        swing = 0.5 + 0.4 * math.sin(2 * math.pi * min(t, 45 if crossing else t) / 20)
        particles["area_px"][n] = round(0.3 * total * swing)
        particles["touches_needle"] = np.append(touching & contact, False)
        particles["touches_frame_edge"] = np.zeros(n + 1, bool)
        particles["touches_frame_edge"][n] = edge_flag and not inside
        cluster = dict(base.cluster, area_px=float(particles["area_px"].sum()),
                       needle_contact=contact)
        measurement = FrameMeasurement(particles=particles, cluster=cluster,
                                       contacts=base.contacts, drift_image=base.drift_image,
                                       drift_scale=base.drift_scale)
        found += analyzer.update_measured(measurement, t_s=t, index=k, pixel_size_nm=1.0)[2]
    return [a.kind for a in found]


def test_particles_cut_by_the_frame_edge_raise_no_alert() -> None:
    """A particle drifting in and out of view at the frame edge changes the cluster
    area, not its lithium: the alerts leave it out, and it enters them without a step
    once wholly in view. Unflagged, the same swing reads as an expansion."""
    watched = (EventKind.EXPANSION_ONSET, EventKind.CONTRACTION_ONSET)
    assert EventKind.EXPANSION_ONSET in _edge_swing(edge_flag=False)
    for crossing in (False, True):
        kinds = _edge_swing(edge_flag=True, crossing=crossing)
        assert EventKind.CONTACT_MADE in kinds
        assert not [k for k in kinds if k in watched], kinds


def test_contact_is_held_while_the_particle_stays_joined() -> None:
    """Contact is made by the contact rule (``needle_contact``) and held while a
    particle stays joined to the needle (``needle_joined``): lost when neither holds
    and the needle moves away, never made by joining alone."""
    base = measure_frame(SimulatedSource(MOVIE).render(18).image, pixel_size_nm=1.0)
    analyzer = SessionAnalyzer()
    found = []
    for k in range(4 * 40):
        t = k / 4
        strict = 10 <= t < 20
        joined = 5 <= t < 8 or 10 <= t < 30
        cluster = dict(base.cluster, needle_contact=strict, needle_joined=joined,
                       needle_tip_col=float(base.cluster["needle_tip_col"])
                       - (20.0 if t >= 30 else 0.0))
        particles = dict(base.particles)
        particles["touches_needle"] = base.particles["touches_needle"] & strict
        measurement = FrameMeasurement(particles=particles, cluster=cluster,
                                       contacts=base.contacts, drift_image=base.drift_image,
                                       drift_scale=base.drift_scale)
        values, _, alerts = analyzer.update_measured(measurement, t_s=t, index=k,
                                                     pixel_size_nm=1.0)
        assert values["needle_contact"] == (strict or (joined and 10 < t < 30))
        found += [(a.kind, a.t_s) for a in alerts]
    contacts = [(kind, t) for kind, t in found
                if kind in (EventKind.CONTACT_MADE, EventKind.CONTACT_LOST)]
    assert contacts == [(EventKind.CONTACT_MADE, 10.0), (EventKind.CONTACT_LOST, 30.0)]


def test_sample_history_is_a_bounded_deque_read_as_arrays() -> None:
    """A track's (t_s, area_px) samples: appended, dropped from the front while older
    than a time, the oldest dropped at ``maxlen``; the rate window is the newest run of
    samples inside it, read back from the newest (as a deque of tuples was read)."""
    rng = np.random.default_rng(2)
    for maxlen in (5, 64, 300):
        samples = _session._Samples(maxlen)
        model: deque[tuple[float, float]] = deque(maxlen=maxlen)
        t = 0.0
        for step in range(2000):
            # Mostly forward in time, sometimes repeated or back (a source's clock).
            t += float(rng.choice([0.01, 0.0, -0.02, 0.5], p=[0.85, 0.05, 0.05, 0.05]))
            area = float(rng.integers(0, 1000))
            samples.append(t, area)
            model.append((t, area))
            if step % 7 == 0:
                keep_from = t - float(rng.random()) * 3.0
                samples.drop_before(keep_from)
                while model and model[0][0] < keep_from:
                    model.popleft()
            if step % 50 == 0:
                extra = [(t + 0.001 * k, float(k)) for k in range(int(rng.integers(0, 80)))]
                samples.extend(extra)
                model.extend(extra)
            times, areas = samples.arrays()
            assert len(samples) == len(model) == times.size
            np.testing.assert_array_equal(np.column_stack([times, areas]),
                                          np.array(model).reshape(-1, 2))
            cutoff = t - float(rng.random())
            recent = list(itertools.takewhile(lambda s, c=cutoff: s[0] >= c,
                                              reversed(model)))[::-1]
            np.testing.assert_array_equal(np.column_stack(samples.recent(cutoff)),
                                          np.array(recent).reshape(-1, 2))
