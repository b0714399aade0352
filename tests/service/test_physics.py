"""Lithiation physics: the relations, and the fits on series with known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service import physics


def test_volume_and_lithium_content() -> None:
    assert physics.volume_ratio(1.0) == 1.0
    assert physics.volume_ratio(4.0) == pytest.approx(8.0)
    assert np.isnan(physics.volume_ratio(-1.0))
    # Li15Si4 is +280 % in volume (Obrovac and Krause 2007).
    assert physics.lithium_content_x(3.8) == pytest.approx(3.75)
    assert physics.lithium_content_x(1.0) == 0.0
    assert physics.lithium_content_x(0.99) < 0  # not clipped: averages stay unbiased


def test_theil_sen_ignores_an_outlier() -> None:
    t = np.arange(12.0)
    y = 3.0 * t + 1.0
    y[5] = 1000.0
    assert physics.theil_sen_slope(t, y) == pytest.approx(3.0)
    assert math.isnan(physics.theil_sen_slope(t[:2], y[:2]))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(tau=st.floats(3.0, 30.0), final=st.floats(0.2, 2.0), start=st.floats(-5.0, 5.0),
       seed=st.integers(0, 1000))
def test_relaxation_time_of_an_exponential_approach(tau: float, final: float, start: float,
                                                    seed: int) -> None:
    # Neither the start time nor the final value is given to the fit (Kezdy-Swinbourne).
    t = np.arange(0.0, 3 * tau, 0.25)
    y = 1.0 + final * (1.0 - np.exp(-(t - start) / tau))
    y += np.random.default_rng(seed).normal(0.0, 0.001 * final, t.size)
    estimate = physics.relaxation_time_s(t, y, lag_s=0.75 * tau)
    assert estimate == pytest.approx(tau, rel=0.1)


def test_relaxation_time_needs_curvature_and_length() -> None:
    t = np.arange(0.0, 20.0, 0.5)
    assert math.isnan(physics.relaxation_time_s(t, 2.0 * t, lag_s=5.0))  # a straight line
    assert math.isnan(physics.relaxation_time_s(t, np.exp(-t / 5), lag_s=10.0))  # too short


def test_diffusion_coefficient_of_a_sphere() -> None:
    # r = 20 nm, tau = 10 s: D = (2e-6 cm)^2 / (pi^2 10 s) = 4.05e-14 cm^2/s.
    assert physics.diffusion_coefficient_cm2_per_s(10.0, 20.0) == pytest.approx(4.053e-14,
                                                                                   rel=1e-3)
    assert math.isnan(physics.diffusion_coefficient_cm2_per_s(math.nan, 20.0))


def test_theil_sen_uses_every_pair_up_to_its_points_and_run_medians_beyond() -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.random(physics.THEIL_SEN_POINTS)) * 4.0
    y = 2.0 * t + rng.normal(0, 0.1, t.size)
    pairs = [(y[j] - y[i]) / (t[j] - t[i]) for i in range(t.size) for j in range(i + 1, t.size)]
    assert physics.theil_sen_slope(t, y) == pytest.approx(float(np.median(pairs)), rel=1e-12)
    # A camera's rate window: 100 frames/s for 4 s, a fifth of the areas wild (merged
    # or cut particles). The slope is the trend's; 100 000 points would be 5e9 pairs.
    for n in (400, 100_000):
        t = np.linspace(0.0, 4.0, n)
        y = 500.0 + 3.0 * t + rng.normal(0, 1.0, n)
        wild = rng.random(n) < 0.2
        y[wild] *= rng.choice([0.5, 2.0], wild.sum())
        assert physics.theil_sen_slope(t, y) == pytest.approx(3.0, rel=0.05)


def test_theil_sen_slopes_of_many_series_are_those_taken_one_by_one() -> None:
    rng = np.random.default_rng(11)
    series: list[tuple[np.ndarray, np.ndarray]] = []
    for n in (3, 7, physics.THEIL_SEN_POINTS, physics.THEIL_SEN_POINTS + 1, 100, 257):
        t = np.sort(rng.random(n)) * 4.0
        # Particles seen on the same frames share their times.
        series.extend((t, 300.0 + 5.0 * t + rng.normal(0, 2.0, n)) for _ in range(5))
        series.append((t + 0.01, rng.normal(0, 1.0, n)))  # times of its own
    flat_t = np.full(10, 2.0)
    series += [(flat_t, rng.random(10)), (flat_t, rng.random(10))]  # no time spread
    gappy = rng.random(20)
    gappy[4] = np.nan
    series += [(np.arange(20.0), gappy), (np.arange(20.0), rng.random(20)),
               (np.arange(2.0), np.arange(2.0))]
    expected = [physics.theil_sen_slope(t, y) for t, y in series]
    got = physics.theil_sen_slopes(series)
    assert got.shape == (len(series),)
    np.testing.assert_array_equal(got, expected)  # bit for bit, NaN where NaN
    assert math.isnan(got[-1])  # two points
    assert np.isnan(got[-5:-3]).all()  # no time spread
    assert physics.theil_sen_slopes([]).shape == (0,)


def _median_slopes_by_numpy(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`physics._median_slopes` as ``np.median`` over every pair's slope."""
    if t.size > physics.THEIL_SEN_POINTS:
        order = np.argsort(t, kind="stable")
        t = np.concatenate([np.median(r, axis=-1, keepdims=True) for r in
                            np.array_split(t[order], physics.THEIL_SEN_POINTS)])
        y = np.concatenate([np.median(r, axis=-1, keepdims=True) for r in
                            np.array_split(y[:, order], physics.THEIL_SEN_POINTS, axis=1)],
                           axis=1)
    i, j = np.triu_indices(t.size, k=1)
    dt = t[j] - t[i]
    ok = dt > 0
    if not ok.any():
        return np.full(len(y), math.nan)
    return np.median((y[:, j[ok]] - y[:, i[ok]]) / dt[ok], axis=1)


def test_median_is_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    values = np.array([-0.0, 0.0, 1.0, -1.0, 2.5, -3.0, 1e-300, np.nan, np.inf, -np.inf])
    with np.errstate(invalid="ignore"):  # inf - inf in the middle, as np.median meets it
        for _ in range(3000):
            n = int(rng.integers(1, 12))
            shape = (int(rng.integers(1, 5)), n) if rng.random() < 0.5 else (2, 3, n)
            x = rng.choice(values, size=shape)
            expected, got = np.median(x, axis=-1), physics._median(x)
            assert got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
            # Same signs too: a zero median is +0.0 either way.
            finite = ~np.isnan(expected)
            assert (np.signbit(got[finite]) == np.signbit(expected[finite])).all()


@pytest.mark.parametrize("rows", [1, 3, 16, 40])
def test_median_slopes_are_those_of_numpys_median_over_every_pair(rows: int) -> None:
    rng = np.random.default_rng(rows)
    for n in (3, 4, 9, 30, physics.THEIL_SEN_POINTS, physics.THEIL_SEN_POINTS + 1, 130, 400):
        cases = [np.sort(rng.random(n)) * 4.0,  # a window's sample times
                 rng.random(n),  # out of order: pairs backwards in time are left out
                 np.repeat(np.arange((n + 1) // 2, dtype=float), 2)[:n],  # repeated times
                 np.full(n, 2.0)]  # no time spread
        for t in cases:
            # Areas are whole pixels: many equal slopes, zeros among them.
            y = np.round(300.0 + 5.0 * t + rng.normal(0, 2.0, (rows, n)))
            expected = _median_slopes_by_numpy(t, y)
            np.testing.assert_array_equal(physics._median_slopes(t, y), expected)
            np.testing.assert_array_equal(
                physics.theil_sen_slopes([(t, row) for row in y]), expected)
