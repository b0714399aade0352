"""Echem alignment, charge, dose and the lithium bookkeeping, against the simulator's truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lithoscope.service.alerts import Alert
from lithoscope.service.operando.context import OperandoConfig, OperandoContext, bookkeeping_summary
from lithoscope.service.operando.dose import (
    VACUUM_PERCENTILE,
    DoseAccumulator,
    dose_rate_from_counts,
    region_levels,
    vacuum_sample,
)
from lithoscope.service.operando.echem import (
    ELEMENTARY_CHARGE_C,
    EchemTrace,
    align_samples,
    cumulative_charge_c,
    silicon_atoms,
    visible_lithium,
)
from lithoscope.service.protocol import EventKind
from lithoscope.service.sources.echem import SimulatedEchem
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


def test_align_interpolates_inside_and_refuses_to_extrapolate() -> None:
    t = np.array([2.0, 0.0, 1.0])  # unsorted on purpose
    v = np.array([4.0, 0.0, 2.0])
    out = align_samples(np.array([-1.0, 0.5, 1.5, 2.0, 3.0]), t, v)
    np.testing.assert_allclose(out[1:4], [1.0, 3.0, 4.0])
    assert math.isnan(out[0])
    assert math.isnan(out[4])


def test_charge_is_the_trapezoid_integral() -> None:
    t = np.linspace(0, 10, 101)
    np.testing.assert_allclose(cumulative_charge_c(t, np.full(101, 2e-9))[-1], 2e-8)


def test_trace_holds_the_last_sample_and_says_how_old_it_is() -> None:
    trace = EchemTrace()
    trace.add(np.array([0.0, 1.0]), np.array([0.0, -2.0]), np.array([0.0, -1e-12]))
    trace.add(np.array([0.5]), np.array([-1.0]), np.array([-0.5e-12]))  # a late batch
    now = trace.at(0.75)
    assert now["bias_v"] == pytest.approx(-1.5)
    assert now["echem_age_s"] == 0.0
    later = trace.at(3.0)
    assert later["bias_v"] == -2.0
    assert later["echem_age_s"] == pytest.approx(2.0)


def test_twin_current_carries_exactly_the_simulated_lithium() -> None:
    twin = SimulatedEchem(rate_hz=20.0)
    t, bias, current = twin.samples()
    charge = cumulative_charge_c(t, current)
    atoms = twin.sim.lithium_atoms(t).sum(axis=1)
    withdraw = twin.sim.config.withdraw_s
    before = t < withdraw
    # Trapezoids over a current that jumps on at the lithiation start: 0.2 % at most.
    np.testing.assert_allclose(-charge[before] / ELEMENTARY_CHARGE_C, atoms[before],
                               rtol=0.01, atol=0.005 * atoms.max())
    assert np.all(current[~before] == 0.0)  # after withdrawal lithium moves, no current
    assert atoms[-1] < 0.3 * atoms[before][-1]  # ... out of view
    assert set(np.unique(bias)) == {0.0, twin.sim.config.bias_v}


def test_visible_lithium_of_the_true_areas_is_the_true_lithium() -> None:
    source = SimulatedSource(SimConfig(duration_s=60.0))
    frame = source.render(int(50 * source.config.fps))
    truth = frame.truth
    assert truth is not None
    pristine = source.render(0).truth
    assert pristine is not None
    px = source.config.pixel_size_nm
    area = np.array(truth["particle_area_px"], dtype=float) * px**2
    area0 = np.array(pristine["particle_area_px"], dtype=float) * px**2
    change = area / area0 - 1
    x = (np.asarray(change + 1) ** 1.5 - 1) / (2.8 / 3.75)
    atoms, total, sigma = visible_lithium(
        {"area_nm2": area, "relative_area_change": change, "lithium_x": x}, pixel_size_nm=px)
    expected = source.lithium_atoms(np.array([50.0]))[0]
    # Rendered discs are pixel-rounded: a few per cent, inside the boundary sigma.
    assert total == pytest.approx(expected.sum(), rel=0.05)
    assert abs(total - expected.sum()) < sigma
    assert silicon_atoms(1.0) == pytest.approx(4 / 3 * math.pi * 49.94, rel=1e-3)


def test_dose_rate_from_counts_matches_the_simulated_dose() -> None:
    source = SimulatedSource(SimConfig(duration_s=2.0))
    image = source.render(0).image
    rate = dose_rate_from_counts(image, counts_per_electron=source.config.counts_per_electron,
                                 exposure_s=1 / source.config.fps, pixel_size_nm=0.5)
    assert rate == pytest.approx(source.config.dose_rate_e_per_a2_s, rel=0.12)
    assert image.flags.writeable  # not mutated, nothing frozen


def test_dose_accumulates_per_particle_while_in_view() -> None:
    dose = DoseAccumulator(grid=2)
    dose.update(t_s=0.0, rate_e_per_a2_s=10.0, track_ids=[1, 2], first_exposure_s=0.5)
    dose.update(t_s=1.0, rate_e_per_a2_s=10.0, track_ids=[1])
    dose.update(t_s=2.0, rate_e_per_a2_s=20.0, track_ids=[1, 2])
    assert dose.field_e_per_a2 == pytest.approx(5 + 10 + 20)
    assert dose.particles == {1: pytest.approx(35.0), 2: pytest.approx(25.0)}


def _step(context: OperandoContext, t: float, *, metadata: dict[str, float],
          alerts: list[Alert] | None = None) -> tuple[dict, list[Alert]]:  # type: ignore[type-arg]
    particles = {"track_id": np.array([1, 2]), "area_nm2": np.array([400.0, 300.0]),
                 "relative_area_change": np.array([0.0, 0.0]),
                 "lithium_x": np.array([0.0, 0.0])}
    cluster, _, out, _ = context.update(
        image=None, t_s=t, index=int(t), pixel_size_nm=0.5, exposure_s=0.25, metadata=metadata,
        cluster={}, particles=particles, alerts=alerts or [])
    return cluster, out


def test_bias_without_expansion_and_dose_rate_alerts() -> None:
    context = OperandoContext(OperandoConfig(no_expansion_after_s=5.0,
                                             dose_rate_limit_e_per_a2_s=12.0))
    kinds = []
    for t in range(12):
        rate = 20.0 if t == 3 else 10.0
        _, alerts = _step(context, float(t), metadata={"bias_v": -2.0 if t >= 2 else 0.0,
                                                       "dose_rate_e_per_a2_s": rate})
        kinds += [(a.kind, a.t_s) for a in alerts]
    assert kinds == [(EventKind.DOSE_RATE_HIGH, 3.0), (EventKind.BIAS_WITHOUT_EXPANSION, 2.0)]


def test_an_onset_carries_bias_charge_and_particle_doses() -> None:
    context = OperandoContext()
    context.add_echem(np.arange(0, 10, 0.1), np.full(100, -2.0), np.full(100, -1e-12))
    onset = Alert(kind=EventKind.EXPANSION_ONSET, t_s=4.0, frame=5, magnitude=0.02,
                  confidence=0.9, particle_ids=(1,), message="Cluster expanding.")
    _step(context, 0.0, metadata={"dose_rate_e_per_a2_s": 10.0})
    _, alerts = _step(context, 5.0, metadata={"dose_rate_e_per_a2_s": 10.0}, alerts=[onset])
    (alert,) = alerts
    assert alert.context["charge_c"] == pytest.approx(-4e-12)
    assert alert.context["bias_v"] == -2.0
    assert alert.context["particle_dose_e_per_a2"] == {"1": pytest.approx(2.5 + 50.0)}
    assert "Bias -2.00 V, -4 pC passed." in alert.message


def test_bookkeeping_summary() -> None:
    table = {"t_s": np.array([0.0, 1.0, 2.0]), "lithium_visible": np.array([0.0, 8.0, 2.0]),
             "lithium_visible_sigma": np.array([1.0, 1.0, 1.0]),
             "lithium_from_charge": np.array([0.0, 10.0, 10.0]),
             "charge_c": np.array([0.0, -1.6e-18, -1.6e-18])}
    book = bookkeeping_summary(table)
    assert book is not None
    assert book["uptake_fraction"] == pytest.approx(0.8)
    assert book["out_of_view_end"] == pytest.approx(8.0)


def test_a_particle_merged_or_missing_for_a_moment_keeps_its_lithium() -> None:
    """At low dose a particle is found merged with its neighbour in some frames: the blob
    has no area of its own (NaN physics) and the neighbour is not found. The visible total
    must not dip by both particles' lithium in those frames; gone for longer than
    ``lithium_hold_s``, a particle has left the view."""
    context = OperandoContext(OperandoConfig(lithium_hold_s=2.0))

    def visible(t: float, tracks: list[int], merged: bool = False) -> float:
        chosen = {1: (400.0, 0.3), 2: (300.0, 0.2), 3: (500.0, 0.1)}
        area = np.array([chosen[k][0] for k in tracks])
        change = np.array([math.nan if merged and k == 1 else chosen[k][1] for k in tracks])
        x = ((1 + change) ** 1.5 - 1) / (2.8 / 3.75)
        particles = {"track_id": np.array(tracks), "area_nm2": area,
                     "relative_area_change": change, "lithium_x": x}
        cluster, _, _, _ = context.update(
            image=None, t_s=t, index=int(4 * t), pixel_size_nm=0.5, exposure_s=0.25,
            metadata={}, cluster={}, particles=particles, alerts=[])
        return float(cluster["lithium_visible"])

    whole = visible(0.0, [1, 2, 3])
    assert whole > 0
    assert visible(0.25, [1, 3], merged=True) == pytest.approx(whole)  # 1 merged with 2
    assert visible(0.5, [1, 2, 3]) == pytest.approx(whole)
    only_three = visible(3.0, [3])  # 1 and 2 gone for 2.5 s: out of view
    alone = OperandoContext()
    cluster, _, _, _ = alone.update(
        image=None, t_s=0.0, index=0, pixel_size_nm=0.5, exposure_s=0.25, metadata={},
        cluster={}, particles={"track_id": np.array([3]), "area_nm2": np.array([500.0]),
                               "relative_area_change": np.array([0.1]),
                               "lithium_x": np.array([(1.1 ** 1.5 - 1) / (2.8 / 3.75)])},
        alerts=[])
    assert only_three == pytest.approx(cluster["lithium_visible"])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(64, 64), (100, 77), (2048, 1032)])
def test_block_means_of_counts_match_numpys_mean(dtype: type, shape: tuple[int, int]) -> None:
    from lithoscope.service.operando.dose import _block_means

    rng = np.random.default_rng(shape[1])
    image = rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    rows, cols = shape[0] // 8 * 8, shape[1] // 8 * 8
    expected = image[:rows, :cols].reshape(rows // 8, 8, cols // 8, 8).mean(
        axis=(1, 3), dtype=np.float64)
    np.testing.assert_array_equal(_block_means(image), expected)


@pytest.mark.parametrize("shape", [(24, 32), (130, 77), (1000, 1023), (7, 9)])
@pytest.mark.parametrize("grid", [1, 3, 4])
def test_region_levels_are_each_tiles_percentile_over_the_fields(
        shape: tuple[int, int], grid: int) -> None:
    rng = np.random.default_rng(grid)
    image = (rng.random(shape) * 4000 * np.linspace(0.5, 1.5, shape[1])).astype(np.uint16)
    levels = region_levels(image, grid)
    sample = vacuum_sample(image)  # the 8x8 block means
    field = np.percentile(sample, VACUUM_PERCENTILE)
    edges_r = np.linspace(0, sample.shape[0], grid + 1).astype(int)
    edges_c = np.linspace(0, sample.shape[1], grid + 1).astype(int)
    expected = np.ones((grid, grid))
    if shape[0] >= grid and shape[1] >= grid:
        for i in range(grid):
            for j in range(grid):
                tile = sample[edges_r[i]:edges_r[i + 1], edges_c[j]:edges_c[j + 1]]
                if tile.size:
                    expected[i, j] = np.percentile(tile, VACUUM_PERCENTILE) / field
    np.testing.assert_array_equal(levels, expected)
    if grid > 1 and min(shape) >= 64:
        assert levels[:, -1].mean() > levels[:, 0].mean()  # the brighter right side
    np.testing.assert_array_equal(region_levels(image, grid, sample=sample), levels)


def test_region_rates_share_a_known_rate_by_the_tiles_levels() -> None:
    image = np.tile(np.linspace(500, 1500, 64), (64, 1)).astype(np.uint16)
    unknown = OperandoContext(OperandoConfig())  # no counts_per_electron, no metadata
    cluster = {"area_px": 10.0}
    _, _, _, frame = unknown.update(image=image, t_s=0.0, index=0, exposure_s=0.1,
                                    pixel_size_nm=1.0, metadata={}, cluster=cluster,
                                    particles={}, alerts=[])
    assert np.isnan(frame.region_rows["dose_rate_e_per_a2_s"]).all()
    known = OperandoContext(OperandoConfig())
    _, _, _, frame = known.update(image=image, t_s=0.0, index=0, exposure_s=0.1,
                                  pixel_size_nm=1.0, metadata={"dose_rate_e_per_a2_s": 5.0},
                                  cluster=cluster, particles={}, alerts=[])
    grid = OperandoConfig().dose_regions
    np.testing.assert_allclose(frame.region_rows["dose_rate_e_per_a2_s"],
                               5.0 * region_levels(image, grid).ravel())
    assert np.ptp(frame.region_rows["dose_rate_e_per_a2_s"]) > 1.0
