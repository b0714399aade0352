"""The monitor's picture, read as a person reads it: a fixed-size console, no colour."""

from __future__ import annotations

import math
from typing import Any

import pytest
from rich.console import Console

from lithoscope.clients import ConnectionState
from lithoscope.clients.monitor import MonitorState, render, sparkline
from lithoscope.service import schema
from lithoscope.service.protocol import (
    Event,
    Heartbeat,
    Result,
    SessionClosed,
    SessionStart,
)

SESSION = "20261127-101500-sim-abc123"


def screen(state: MonitorState, *, now: float = 100.0, width: int = 100,
           height: int = 40) -> str:
    console = Console(width=width, height=height, record=True, color_system=None,
                      file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    try:
        console.print(render(state, now=now, width=width, height=height))
        return console.export_text()
    finally:
        console.file.close()


def start(**metadata: Any) -> SessionStart:
    return SessionStart(session_id=SESSION, source="sim:lithiation", source_kind="sim",
                        t0_unix=0.0, live=True, metadata=metadata)


def result(i: int, *, contact: bool, particles: dict[str, list[Any]] | None = None,
           **cluster: Any) -> Result:
    area = 1000 + 10 * i
    return Result(
        session_id=SESSION, index=i, t_s=0.5 * i, latency_s=0.02,
        cluster={"area_px": area, "area_nm2": area * 0.25, "relative_area": area / 1000,
                 "particle_count": 2, "needle_contact": contact, **cluster},
        particles=particles if particles is not None else {
            "label": [1, 2], "area_px": [600 + 5 * i, 400 + 5 * i],
            "area_nm2": [(600 + 5 * i) * 0.25, (400 + 5 * i) * 0.25],
            "touches_needle": [contact, False]})


def heartbeat() -> Heartbeat:
    return Heartbeat(session_id=SESSION, counters={
        "received": 120, "analysed": 117, "archived": 120, "dropped": 0, "skipped": 3},
        fps_in=10.0, fps_analysed=9.5, latency_p50_s=0.012, latency_p99_s=0.048,
        archive_path="sessions/run.zarr", archive_bytes=12_300_000)


def connected() -> MonitorState:
    state = MonitorState(endpoint="tcp://127.0.0.1:5556")
    state.connection = ConnectionState.CONNECTED
    return state


def test_before_any_service_it_says_it_is_waiting() -> None:
    state = MonitorState(endpoint="tcp://127.0.0.1:5556", connection_since=90.0)
    text = screen(state, now=100.0)
    assert "waiting for a service at tcp://127.0.0.1:5556 (10 s)" in text
    assert "no alerts yet" in text
    assert "no frame analysed yet" in text


def test_a_lost_connection_says_so_and_that_it_retries() -> None:
    state = connected()
    state.connection, state.connection_since, state.restarts = (
        ConnectionState.DISCONNECTED, 97.0, 1)
    text = screen(state, now=100.0)
    assert "connection lost to tcp://127.0.0.1:5556 3 s ago; reconnecting" in text
    assert "service restarted 1×" in text


def test_header_shows_counters_rates_latency_and_archive() -> None:
    state = connected()
    state.update(start())
    state.update(heartbeat())
    text = screen(state)
    assert f"session  {SESSION}" in text
    assert "source   sim:lithiation (live)" in text
    assert "received 120   analysed 117   archived 120   dropped 0   skipped 3" in text
    assert "in 10.0 fps   analysed 9.5 fps   latency p50 12 ms  p99 48 ms" in text
    assert "sessions/run.zarr (12.3 MB)" in text
    assert "● connected to tcp://127.0.0.1:5556" in text


def test_experiment_shows_contact_since_when_area_trend_and_rate() -> None:
    state = connected()
    state.update(start(bias_v=-1.5))
    for i in range(10):
        state.update(result(i, contact=i >= 4))
    text = screen(state)
    assert "t = 4.5 s, frame 9" in text
    assert "MADE since t = 2.0 s (for 2 s)" in text
    assert "bias            -1.50 V" in text
    assert "272 nm²   +9.0 % since the first frame" in text  # 1090 px
    assert "▁" in text
    assert "█" in text
    # 10 px per frame, 0.25 nm² per px, 2 frames per second
    assert "rate now        +5.0 nm²/s" in text


def test_contact_lost_is_shown_as_none_since() -> None:
    state = connected()
    state.update(start())
    for i, contact in enumerate([False, True, True, False, False]):
        state.update(result(i, contact=contact))
    assert "needle contact  none since t = 1.5 s" in screen(state)


def test_particles_without_tracking_degrade_to_labels_and_dashes() -> None:
    state = connected()
    state.update(start())
    state.update(result(0, contact=True))
    text = screen(state)
    assert "label" in text
    assert "labels are per frame: no tracking ids from the service" in text
    row = next(line for line in text.splitlines() if line.strip("│ ").startswith("1 "))
    assert "150" in row  # (600 px) * 0.25 nm²
    assert "—" in row  # no change, rate or Li content to show
    assert "yes" in row


def test_particles_with_tracking_li_content_and_rates_from_the_analysis() -> None:
    state = connected()
    state.update(start())

    def particles(i: int) -> dict[str, list[Any]]:
        return {"label": [2, 1], "track_id": [17, 4], "area_px": [400, 800 + 80 * i],
                "area_nm2": [100.0, (800 + 80 * i) * 0.25], "touches_needle": [False, True],
                "lithium_x": [None, 0.4 * i], "area_rate_nm2_per_s": [None, 40.0]}

    state.update(result(0, contact=False, particles=particles(0)))
    state.update(Event(session_id=SESSION, kind="contact_made", t_s=0.5, frame=1,
                       message="Needle touched the cluster."), now=99.0)
    for i in range(1, 4):
        state.update(result(i, contact=True, particles=particles(i)))
    text = screen(state)
    rows = {line.split()[1]: line for line in text.splitlines()
            if line.strip()[:2] in ("│ ", "│") and len(line.split()) > 2
            and line.split()[1].isdigit()}
    assert set(rows) >= {"4", "17"}
    assert "+18.2 %" in rows["4"]  # 1040 px against 880 px when contact was made
    assert "+40.0" in rows["4"]
    assert "1.20" in rows["4"]
    assert "Li x" in text
    assert "labels are per frame" not in text


def test_alerts_newest_first_with_time_and_frame() -> None:
    state = connected()
    state.update(start())
    state.update(Event(session_id=SESSION, kind="contact_made", t_s=12.5, frame=125,
                       message="Needle touched the cluster."), now=10.0)
    state.update(Event(session_id=SESSION, kind="expansion_onset", t_s=31.25, frame=312,
                       message="The cluster started to swell."), now=11.0)
    state.update(Event(session_id=SESSION, kind="source_stalled", t_s=40.0, frame=-1,
                       message="No frame for 5 s."), now=12.0)
    text = screen(state)
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if kind in line)
             for kind in ("source_stalled", "expansion_onset", "contact_made")]
    assert order == sorted(order)
    words = " ".join(text.split())
    assert "31.25 312 expansion_onset The cluster started to swell." in words
    assert "40.00 — source_stalled" in words


def test_a_crowded_session_still_fits_the_terminal() -> None:
    state = connected()
    state.update(start())
    n = 40
    state.update(result(1, contact=True, particles={
        "label": list(range(1, n + 1)), "area_px": [100 + i for i in range(n)],
        "touches_needle": [False] * n}))
    for i in range(30):
        state.update(Event(session_id=SESSION, kind="drift_warning", t_s=float(i), frame=i,
                           message=f"drift {i} " + "and a long explanation " * 8))
    for width, height in ((80, 24), (100, 30), (100, 50)):
        text = screen(state, width=width, height=height)
        assert len(text.splitlines()) <= height
        assert "29.00 29 drift_warning drift 29 and a long" in " ".join(text.split())
        assert "drift 0 " not in text
        assert "older)" in text
        assert ("smaller particles not shown" in text) == (height >= 32)


def test_bell_only_for_events_about_the_sample() -> None:
    state = connected()
    state.update(start())
    sample = Event(session_id=SESSION, kind="contraction_onset", t_s=1.0, frame=1)
    pipeline = Event(session_id=SESSION, kind="frames_dropped", t_s=1.0, frame=1)
    assert state.update(sample) is True
    assert state.update(pipeline) is False


def test_a_new_session_starts_a_fresh_screen_and_closing_is_shown() -> None:
    state = connected()
    state.update(start())
    state.update(Event(session_id=SESSION, kind="contact_made", t_s=1.0, frame=1))
    state.update(SessionClosed(session_id=SESSION, archive_path="sessions/run.zarr",
                               frames_archived=480, frames_analysed=470, frames_dropped=0,
                               reason="end_of_source"))
    assert "session closed (end_of_source): 480 frames archived, 470 analysed" in screen(state)
    state.update(SessionStart(session_id="next", source="tiff:/data/run3.tif",
                              source_kind="tiff", t0_unix=0.0, live=False))
    text = screen(state)
    assert "session  next" in text
    assert "source   tiff:/data/run3.tif (replay)" in text
    assert "contact_made" not in text
    assert "connected" in text


@pytest.mark.parametrize(("values", "width", "expected"), [
    ([], 10, ""),
    ([1.0, 1.0, 1.0], 10, "▁▁▁"),
    ([0.0, 7.0], 10, "▁█"),
    ([0.0, 0.0, 7.0, 7.0], 2, "▁█"),
])
def test_sparkline(values: list[float], width: int, expected: str) -> None:
    assert sparkline(values, width) == expected


def test_bias_from_frame_metadata_or_from_the_results() -> None:
    state = connected()
    state.update(start())
    assert "bias            not reported" in screen(state)
    state.note_frame_metadata({"bias_v": -2.0, "current_a": 1e-9})
    assert "bias            -2.00 V" in screen(state)
    state.update(result(1, contact=True, bias_v=0.0))
    assert "bias            0.00 V" in screen(state)


def test_a_new_alert_is_highlighted_for_a_few_seconds() -> None:
    state = connected()
    state.update(start())
    state.update(Event(session_id=SESSION, kind="contact_lost", t_s=80.0, frame=320,
                       message="withdrawn"), now=100.0)

    def styled(now: float) -> str:
        console = Console(width=100, height=40, record=True, color_system="standard",
                          force_terminal=True, file=open("/dev/null", "w"))  # noqa: SIM115
        try:
            console.print(render(state, now=now))
            return console.export_text(styles=True)
        finally:
            console.file.close()

    line = next(x for x in styled(101.0).splitlines() if "contact_lost" in x)
    assert "\x1b[1;7;33m" in line  # bold reverse yellow: just arrived
    line = next(x for x in styled(130.0).splitlines() if "contact_lost" in x)
    assert "\x1b[1;33m" in line
    assert "7;" not in line


def test_monitor_shows_current_charge_dose_and_lithium() -> None:
    from lithoscope.clients.monitor import MonitorState, render
    from lithoscope.service.protocol import Result

    state = MonitorState(endpoint="tcp://127.0.0.1:1")
    state.update(Result(session_id="s", index=3, t_s=30.0, latency_s=0.1, cluster={
        "area_px": 1000, "bias_v": -2.0, "current_a": -4.2e-14, "charge_c": -1.3e-12,
        "echem_age_s": 0.3, "dose_rate_e_per_a2_s": 10.0, "dose_e_per_a2": 300.0,
        "lithium_from_charge": 8.1e6, "lithium_visible": 6.5e6,
        "lithium_visible_sigma": 9e5}, particles={}))
    console = Console(width=120, record=True, color_system=None)
    console.print(render(state, now=0.0, width=120))
    text = console.export_text()
    assert "-42 fA, -1.3 pC passed" in text
    assert "10.0 e/Å²/s, 300 e/Å² so far" in text
    assert "8.1e+06 Li passed, 6.5e+06 ± 9e+05 in view, 1.6e+06 out of view" in text


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)  # NaN travels as JSON null


def test_particle_rate_and_lithium_columns_show_a_real_results_numbers(sim_run: Any) -> None:
    """The particle table reads the columns the worker sends (names from the schema)."""
    assert {"area_rate_nm2_per_s", "lithium_x"} <= set(schema.RESULT_PARTICLE_VALUES)
    swelling = [(r, i) for r in sim_run.results for i in range(len(r.particles["track_id"]))
                if _finite(r.particles["area_rate_nm2_per_s"][i])
                and _finite(r.particles["lithium_x"][i])]
    assert swelling, "the simulated lithiation produced no particle with a rate and Li x"
    msg, i = swelling[-1]
    state = connected()
    state.update(start())
    state.update(msg)
    text = screen(state, width=120, height=60)
    track = msg.particles["track_id"][i]
    row = next(line for line in text.splitlines()
               if line.strip("│ ").startswith(f"{track} "))
    rate, li = msg.particles["area_rate_nm2_per_s"][i], msg.particles["lithium_x"][i]
    assert f"{rate:+,.1f}" in row.split(), row
    assert f"{li:.2f}" in row.split(), row


def test_a_monitor_joining_mid_session_learns_the_source_from_heartbeats() -> None:
    """Started after the session_start went by, the monitor still names the source."""
    state = connected()
    state.update(heartbeat())
    assert state.source is None  # heartbeats without a source say nothing of it
    state.update(Heartbeat(session_id=SESSION, counters={}, fps_in=1.0, fps_analysed=1.0,
                           latency_p50_s=None, latency_p99_s=None,
                           source="tiff:/data/run3.tif", live=False))
    assert "tiff:/data/run3.tif (replay)" in screen(state)
    state.update(start())  # a session_start still wins
    assert "sim:lithiation (live)" in screen(state)
