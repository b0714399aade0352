"""The CLI split by audience: summaries as pure render functions, the config command,
demo scenarios from the simulator's list (CliRunner), and a subprocess smoke test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lithoscope.service.cli import app
from lithoscope.service.cli.render import event_line, how_it_ended, session_summary
from lithoscope.service.config import ServiceConfig, load_config
from lithoscope.service.errors import LithoscopeError
from lithoscope.service.sources.sim import SCENARIOS

runner = CliRunner()

SUMMARY: dict[str, Any] = {
    "session_id": "20261127-101500-sim-abc123", "path": "sessions/run.zarr",
    "size_bytes": 12_300_000, "status": "interrupted", "stop_reason": "worker_died",
    "continued_in": "run-2.zarr", "source": "sim:lithiation", "frames": 40,
    "shape": [160, 160], "dtype": "uint16", "frames_analysed": 38, "duration_s": 39.0,
    "pixel_size_nm": 1.5, "cluster": [{"area_px": 100}, {"area_px": 150}, {"area_px": 140}],
    "events": [{"t_s": 5.25, "frame": 5, "kind": "contact_made",
                "message": "Needle touched the cluster."}],
}


def text(renderable: Any, width: int = 110) -> str:
    console = Console(width=width, record=True, color_system=None,
                      file=open(os.devnull, "w"))  # noqa: SIM115 - closed below
    try:
        console.print(renderable)
        return console.export_text()
    finally:
        console.file.close()


def test_session_summary_reads_as_a_person_reads_it() -> None:
    shown = text(session_summary(SUMMARY, wall_s=20.0, frames_sent=41))
    assert "Session 20261127-101500-sim-abc123" in shown
    assert "sessions/run.zarr (12.3 MB, interrupted)" in shown
    assert how_it_ended("worker_died") in shown
    assert "run-2.zarr (same session, after a worker restart)" in shown
    assert "frames sent" in shown
    assert "41" in shown
    assert "40 of [160, 160] uint16" in shown
    assert "39.0 s of experiment time" in shown
    assert "wall time" in shown
    assert "20.0 s" in shown
    assert "100 px at start, 150 px at most, 140 px at end" in shown
    assert "contact_made" in shown
    assert "Needle touched the cluster." in shown
    assert "electron dose" not in shown


def test_session_summary_adds_dose_and_lithium_when_recorded() -> None:
    book = {"charge_c": 1.5e-12, "lithium_from_charge": 9.4e6, "peak_visible": 4.0e6,
            "peak_sigma": 2.0e5, "peak_t_s": 60.0, "uptake_fraction": 0.5,
            "peak_from_charge": 8.0e6, "end_visible": 1.0e6, "end_sigma": 1.0e5,
            "out_of_view_end": 8.4e6}
    shown = text(session_summary(
        {**SUMMARY, "status": "complete", "events": []},
        operando={"dose_e_per_a2": [10.0, 800.0], "dose_rate_e_per_a2_s": [9.5, float("nan")]},
        bookkeeping=book))
    assert "800 e/Å² in total, 9.5 e/Å²/s at most" in shown
    assert "1.5e-12 C = 9.4e+06 Li" in shown
    assert "4e+06 ± 2e+05 at t = 60.0 s (50 % of the 8e+06 passed by then)" in shown
    assert "No events." in shown
    assert "how it ended" not in shown


def test_session_summary_without_charge_says_so_instead_of_nan() -> None:
    """A session with no current (no needle in view): no 'nan %' in the summary."""
    nan = float("nan")
    book = {"charge_c": 0.0, "lithium_from_charge": 0.0, "peak_visible": nan,
            "peak_sigma": nan, "peak_t_s": 0.0, "uptake_fraction": nan,
            "peak_from_charge": 0.0, "end_visible": nan, "end_sigma": nan,
            "out_of_view_end": nan}
    shown = text(session_summary({**SUMMARY, "status": "complete", "events": []},
                                 bookkeeping=book))
    assert "none: no lithium to count" in shown
    assert "nan" not in shown
    measured_nothing = {**book, "charge_c": 1e-12, "lithium_from_charge": 6e6}
    shown = text(session_summary({**SUMMARY, "status": "complete", "events": []},
                                 bookkeeping=measured_nothing))
    assert "1e-12 C = 6e+06 Li" in shown
    assert "not measured" in shown
    assert "nan" not in shown


def test_how_it_ended_and_event_lines() -> None:
    assert how_it_ended("strange") == "stopped early (strange)"
    assert event_line(1.5, 3, "contact_made", "hello") == (
        "  t =    1.50 s  frame     3  [bold yellow]contact_made        [/] hello")


def test_config_defaults_print_a_toml_that_loads_back(tmp_path: Path) -> None:
    done = runner.invoke(app, ["config", "--defaults"])
    assert done.exit_code == 0, done.output
    path = tmp_path / "lithoscope.toml"
    path.write_text(done.output)
    assert load_config(path) == ServiceConfig()
    checked = runner.invoke(app, ["config", "--check", str(path)])
    assert checked.exit_code == 0
    assert "every setting is valid" in checked.output


def test_config_check_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('heartbeat_s = "1.0"\n')
    done = runner.invoke(app, ["config", "--check", str(path)])
    assert done.exit_code == 1
    assert f"{path}: heartbeat_s: Expected a number. Got '1.0' (a string) instead." in \
        " ".join(done.output.split())
    neither = runner.invoke(app, ["config"])
    assert neither.exit_code == 1
    assert "Expected --defaults or --check FILE" in neither.output


def test_demo_offers_every_scenario_of_the_simulator() -> None:
    done = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0
    for name in SCENARIOS:
        assert name in done.output, name
    wrong = runner.invoke(app, ["demo", "--scenario", "nonsense"], env={"COLUMNS": "200"})
    assert wrong.exit_code == 2
    assert f"Expected one of {', '.join(SCENARIOS)}" in " ".join(wrong.output.split())


@pytest.mark.parametrize("scenario", ["chemical", "heavy_drift", "low_dose"])
def test_demo_runs_the_scenario_it_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            scenario: str) -> None:
    seen: dict[str, Any] = {}

    def run_local_session(source: Any, **kwargs: Any) -> Any:
        seen["scenario"] = source.scenario.name
        seen["echem"] = kwargs["echem"].name
        raise LithoscopeError("stopped by the test before any frame")

    monkeypatch.setattr("lithoscope.service.live.session.run_local_session", run_local_session)
    done = runner.invoke(app, ["demo", "--scenario", scenario, "--no-monitor", "--sessions",
                               str(tmp_path)])
    assert done.exit_code == 1, done.output
    assert "stopped by the test before any frame" in done.output
    assert seen == {"scenario": scenario, "echem": f"sim:{scenario}"}


def test_installed_script_prints_the_defaults(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("lithoscope")
    done = subprocess.run([str(script), "config", "--defaults"], capture_output=True,
                          text=True, timeout=60, check=True)
    path = tmp_path / "defaults.toml"
    path.write_text(done.stdout)
    assert load_config(path) == ServiceConfig()
    assert done.stdout.startswith("# lithoscope service settings")
