"""AlertDetector: debounced contact, CUSUM expansion and contraction onsets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lithoscope.service.alerts import (
    Alert,
    AlertConfig,
    AlertDetector,
    _Cusum,
    _Sample,
    alerts_iter,
)
from lithoscope.service.analysis import analyze_frame
from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import EventKind
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

FPS = 2.0
CHANGES = {EventKind.EXPANSION_ONSET, EventKind.CONTRACTION_ONSET}


def series(area: np.ndarray, contact: np.ndarray) -> list[dict]:
    return [{"t_s": i / FPS, "frame": i, "area_px": float(a), "needle_contact": bool(c)}
            for i, (a, c) in enumerate(zip(area, contact, strict=True))]


def run(rows: list[dict], config: AlertConfig | None = None) -> list[Alert]:
    return list(alerts_iter(AlertDetector(config), rows))


def kinds(alerts: list[Alert], *, slowing: bool = False) -> list[EventKind]:
    return [a.kind for a in alerts if slowing or a.kind != EventKind.EXPANSION_SLOWING]


def noisy_area(n: int, sigma: float, seed: int) -> np.ndarray:
    return 20000.0 * (1.0 + sigma * np.random.default_rng(seed).standard_normal(n))


class TestConfig:
    def test_round_trip(self) -> None:
        config = AlertConfig(contact_debounce_frames=3, noise_floor=0.005)
        assert AlertConfig.from_dict(config.to_dict()) == config

    def test_unknown_key(self) -> None:
        with pytest.raises(ConfigError, match=r"Unknown alert option 'x'\. Expected one of "):
            AlertConfig.from_dict({"x": 1})

    @pytest.mark.parametrize("values", [{"contact_debounce_frames": 0},
                                        {"threshold_sigmas": -1.0},
                                        {"slowing_fraction": 1.5}])
    def test_invalid(self, values: dict) -> None:
        with pytest.raises(ConfigError, match="Expected"):
            AlertConfig.from_dict(values)


class TestContact:
    def test_debounced(self) -> None:
        contact = np.zeros(40, bool)
        contact[10] = True  # a one-frame flicker: no alert
        contact[20:30] = True
        contact[25] = False  # a one-frame dropout: no alert
        alerts = run(series(np.full(40, 1000.0), contact))
        assert kinds(alerts) == [EventKind.CONTACT_MADE, EventKind.CONTACT_LOST]
        made, lost = alerts
        assert (made.t_s, made.frame) == (10.0, 21)  # began at frame 20, confirmed at 21
        assert (lost.t_s, lost.frame) == (15.0, 31)
        assert made.confidence == 1.0
        assert made.particle_ids == ()
        assert "touched" in made.message
        assert "left" in lost.message

    def test_longer_debounce(self) -> None:
        contact = np.zeros(30, bool)
        contact[10:12] = True
        contact[20:] = True
        alerts = run(series(np.full(30, 1000.0), contact), AlertConfig(contact_debounce_frames=3))
        assert [(a.kind, a.frame) for a in alerts] == [(EventKind.CONTACT_MADE, 22)]

    def test_alert_is_frozen(self) -> None:
        (alert,) = run(series(np.full(5, 1.0), np.ones(5, bool)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            alert.t_s = 0.0  # type: ignore[misc]


class TestChangePoints:
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        seed=st.integers(0, 2**16),
        sigma=st.floats(0.0005, 0.01),
        change=st.integers(60, 150),
        size=st.floats(3.0, 10.0),
    )
    def test_expansion_step_found_after_the_change(self, seed: int, sigma: float, change: int,
                                                   size: float) -> None:
        # A step of `size` noise units (at least the 0.5 % minimum) at frame `change`.
        n = change + 60
        area = noisy_area(n, sigma, seed)
        step = max(size * max(sigma, AlertConfig().noise_floor), 0.006)
        area[change:] *= 1.0 + step
        contact = np.arange(n) >= 20
        alerts = [a for a in run(series(area, contact)) if a.kind in CHANGES]
        assert kinds(alerts) == [EventKind.EXPANSION_ONSET]
        (onset,) = alerts
        # CUSUM detection delay is about h / (step - k) frames; allow three times that
        # (the baseline median and the noise estimate are themselves noisy).
        config = AlertConfig()
        delay = 3 * config.threshold_sigmas / max(step / max(sigma, config.noise_floor)
                                                  - config.drift_sigmas, 1.0)
        assert change <= onset.frame <= change + int(np.ceil(delay)) + 2
        # The change point estimate (the CUSUM's last zero) may fall on a noise
        # excursion just before the change, never after the detection.
        assert (change - 8) / FPS <= onset.t_s <= onset.frame / FPS
        assert onset.magnitude == pytest.approx(step, abs=5 * sigma + 0.002)
        assert 0.0 < onset.confidence <= 1.0

    @settings(max_examples=20, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 2**16), sigma=st.floats(0.0005, 0.005),
           rate=st.floats(0.002, 0.02))
    def test_expansion_ramp(self, seed: int, sigma: float, rate: float) -> None:
        # Swelling as the simulator's, 1 - exp, starting at frame 100; rate per frame.
        n = 200
        area = noisy_area(n, sigma, seed)
        frames = np.arange(n)
        area *= 1.0 + 0.5 * (1.0 - np.exp(-rate * np.clip(frames - 100, 0, None)))
        alerts = [a for a in run(series(area, frames >= 20)) if a.kind in CHANGES]
        assert kinds(alerts)[:1] == [EventKind.EXPANSION_ONSET]
        assert 100 <= alerts[0].frame <= 100 + 20 + int(0.02 / (0.5 * rate))

    @pytest.mark.parametrize("seed", range(6))
    @pytest.mark.parametrize("sigma", [0.0005, 0.003, 0.01])
    def test_pure_noise_raises_only_contact(self, seed: int, sigma: float) -> None:
        n = 600
        contact = (np.arange(n) >= 20) & (np.arange(n) < 400)
        alerts = run(series(noisy_area(n, sigma, seed), contact))
        assert kinds(alerts, slowing=True) == [EventKind.CONTACT_MADE, EventKind.CONTACT_LOST]

    def test_one_alert_per_change_and_rearm_on_new_contact(self) -> None:
        area = np.full(300, 20000.0)
        area[60:] *= 1.05
        area[200:] *= 1.05
        contact = (np.arange(300) >= 20) & ((np.arange(300) < 150) | (np.arange(300) >= 170))
        alerts = run(series(area, contact))
        assert kinds(alerts) == [EventKind.CONTACT_MADE, EventKind.EXPANSION_ONSET,
                                 EventKind.CONTACT_LOST, EventKind.CONTACT_MADE,
                                 EventKind.EXPANSION_ONSET]
        assert [a.frame for a in alerts if a.kind == EventKind.EXPANSION_ONSET] == [60, 200]

    def test_contraction_only_after_contact_loss(self) -> None:
        n = 300
        area = np.full(n, 20000.0)
        area[100:] *= 0.95  # shrinks while in contact: not a contraction alert
        area[220:] *= 0.95  # shrinks after the needle left: one
        contact = (np.arange(n) >= 20) & (np.arange(n) < 200)
        alerts = run(series(area, contact))
        assert kinds(alerts) == [EventKind.CONTACT_MADE, EventKind.CONTACT_LOST,
                                 EventKind.CONTRACTION_ONSET]
        contraction = alerts[-1]
        assert contraction.frame == 220
        assert contraction.magnitude == pytest.approx(-0.05)
        assert "-5.0 %" in contraction.message

    def test_unmeasured_frames_are_skipped(self) -> None:
        area = np.full(120, 20000.0)
        area[::7] = np.nan
        area[80:] *= 1.05
        alerts = run(series(area, np.arange(120) >= 10))
        assert kinds(alerts) == [EventKind.CONTACT_MADE, EventKind.EXPANSION_ONSET]

    def test_contraction_settles_once_the_shrinking_slows(self) -> None:
        # Lithium drains after withdrawal at frame 100: exponential shrinking, tau 10 s.
        n = 260
        t = np.arange(n) / FPS
        area = 20000.0 * (1.0 - 0.2 * (1.0 - np.exp(-np.clip(t - 50.0, 0, None) / 10.0)))
        area *= 1.0 + 0.001 * np.random.default_rng(3).standard_normal(n)
        contact = (np.arange(n) >= 20) & (np.arange(n) < 100)
        alerts = run(series(area, contact))
        assert kinds(alerts) == [EventKind.CONTACT_MADE, EventKind.CONTACT_LOST,
                                 EventKind.CONTRACTION_ONSET, EventKind.CONTRACTION_SETTLED]
        settled = alerts[-1]
        # The rate falls below 30 % of its peak about tau ln(1/0.3) = 12 s after the
        # onset; the window-averaged rate lags by half a window.
        assert 58.0 <= settled.t_s <= 70.0
        assert settled.magnitude < -0.1
        assert 0.0 < settled.confidence <= 1.0

    def test_drift_warning_debounced_and_rearmed(self) -> None:
        detector = AlertDetector(AlertConfig(drift_warning_px_per_frame=2.0,
                                             drift_warning_frames=3))
        steps = [0.5] * 5 + [3.0] * 10 + [0.2] * 5 + [4.0] * 4 + [2.5]  # one bad frame in the
        steps[2] = 9.0  # quiet part is no drift
        warnings = []
        for i, step in enumerate(steps):
            warnings += [a for a in detector.update(t_s=i / FPS, frame=i, area_px=1000.0,
                                                   needle_contact=False, drift_step_px=step)
                         if a.kind == EventKind.DRIFT_WARNING]
        assert [a.frame for a in warnings] == [7, 22]
        assert warnings[0].magnitude == 3.0

    def test_iter_matches_update(self) -> None:
        rows = series(noisy_area(100, 0.002, 0) * np.r_[np.ones(50), np.full(50, 1.05)],
                      np.arange(100) >= 10)
        detector = AlertDetector()
        by_hand = [a for row in rows for a in detector.update(**row)]
        assert by_hand == run(rows)


# -- end to end on the simulator -------------------------------------------------------


def analysed(scenario: str) -> tuple[list[dict], list[tuple[str, float]]]:
    config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=FPS)
    with SimulatedSource(config, scenario=scenario) as source:
        rows = []
        for frame in source:
            cluster = analyze_frame(frame.image, pixel_size_nm=1.0).cluster
            rows.append({"t_s": frame.t_s, "frame": frame.index, "area_px": cluster["area_px"],
                         "needle_contact": cluster["needle_contact"]})
        return rows, source.truth_events()


@pytest.fixture(scope="module")
def lithiation() -> tuple[list[dict], list[tuple[str, float]]]:
    return analysed("lithiation")


@pytest.fixture(scope="module")
def control() -> tuple[list[dict], list[tuple[str, float]]]:
    return analysed("control")


def test_lithiation_scenario(lithiation: tuple) -> None:
    rows, truth = lithiation
    alerts = run(rows)
    first = {}
    for alert in alerts:
        first.setdefault(alert.kind, alert)
    assert [a.kind for a in alerts if a.kind not in (EventKind.EXPANSION_SLOWING,
                                                     EventKind.CONTRACTION_SETTLED)] == [
        EventKind.CONTACT_MADE, EventKind.EXPANSION_ONSET, EventKind.CONTACT_LOST,
        EventKind.CONTRACTION_ONSET]
    truth_t = dict(truth)
    detected_at = {kind: rows[a.frame]["t_s"] for kind, a in first.items()}
    assert abs(first[EventKind.CONTACT_MADE].t_s - truth_t["contact_made"]) <= 1.0
    # Bias on at 20 s; swelling from 20.5 s.
    assert 20.0 <= first[EventKind.EXPANSION_ONSET].t_s <= 23.0
    assert detected_at[EventKind.EXPANSION_ONSET] <= 24.0
    assert first[EventKind.EXPANSION_ONSET].magnitude > 0.005
    assert abs(first[EventKind.CONTACT_LOST].t_s - truth_t["contact_lost"]) <= 1.0
    assert first[EventKind.CONTACT_LOST].magnitude > 0.1  # it swelled by more than 10 %
    contraction = first[EventKind.CONTRACTION_ONSET]
    assert truth_t["contraction_onset"] <= contraction.t_s <= truth_t["contraction_onset"] + 3
    assert contraction.magnitude < -0.005
    assert "Cluster expanding: +" in first[EventKind.EXPANSION_ONSET].message


def test_control_scenario_raises_no_change(control: tuple) -> None:
    rows, truth = control
    alerts = run(rows)
    assert kinds(alerts, slowing=True) == [EventKind.CONTACT_MADE, EventKind.CONTACT_LOST]
    for alert, (kind, t_s) in zip(alerts, truth, strict=True):
        assert alert.kind == kind
        assert abs(alert.t_s - t_s) <= 1.0


def test_cusum_holds_no_more_pending_frames_than_its_baseline_takes() -> None:
    """A small lasting change keeps S above zero without alarming, for hours perhaps."""
    cusum = _Cusum([1000.0] * 8, +1, capacity=40)
    cusum.sigma = 0.002
    config = AlertConfig()  # k ~ 0.38 %, min_relative_change 0.5 %: +0.45 % never alarms
    for i in range(1000):
        assert not cusum.update(_Sample(float(i), i, 1004.5, True), config=config)
    assert cusum.statistic > 0
    assert len(cusum.pending) == 40
