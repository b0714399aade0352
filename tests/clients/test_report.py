"""Reports from a real archive made by the simulator through the real pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lithoscope.clients.report import _tracks, apparent_diffusion_cm2_per_s, make_report
from lithoscope.service.archive import ArchiveReader

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]


def png_shape(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image.shape


def test_report_writes_figures_montage_and_summary(sim_archive: Path, tmp_path: Path) -> None:
    steps: list[tuple[int, int, str]] = []
    files = make_report(sim_archive, tmp_path / "report",
                        on_progress=lambda done, total, what: steps.append((done, total, what)))
    assert set(files.figures) == {"cluster_area", "particle_areas", "rates", "montage",
                                  "operando"}
    for path in files.figures.values():
        rows, cols, _ = png_shape(path)
        assert rows > 200
        assert cols > 300
    events = [e for e in ArchiveReader(sim_archive).events() if e["frame"] >= 0]
    kinds = {e["kind"] for e in events}
    assert {"contact_made", "contact_lost"} <= kinds
    # three tiles per row, one per event
    montage_rows = png_shape(files.figures["montage"])[0]
    tile_rows = -(-len(events) // 3)
    assert montage_rows % tile_rows == 0
    # progress: counted up to the total, the last call says done
    assert steps[-1] == (steps[-1][1], steps[-1][1], "done")
    assert [d for d, _, _ in steps] == sorted(d for d, _, _ in steps)

    text = files.summary.read_text()
    session_id = ArchiveReader(sim_archive).meta["session_id"]
    assert f"# Session {session_id}" in text
    for name in ("cluster_area.png", "particle_areas.png", "rates.png", "montage.png",
                 "operando.png"):
        assert f"({name})" in text
    assert "| 120 archived, 120 analysed" in text.replace("frames |", "|")
    assert "needle withdrawn at | t = 8" in text
    assert "contact_made" in text
    # the service's tracking ids when the archive has them, else linked by the report
    tracked = "track_id" in ArchiveReader(sim_archive).table("particles")
    assert ("followed by the service's tracker" in text) == tracked
    assert ("no tracking ids" in text) == (not tracked)
    assert files.rates
    grew = [r for r in files.rates if r.expansion_rate is not None and r.expansion_rate > 0]
    assert grew, files.rates
    # Li x is the service's archived lithium_x wherever the archive has it
    particles = ArchiveReader(sim_archive).table("particles")
    archived = {r.particle: particles["lithium_x"][particles["track_id"] == r.particle]
                for r in files.rates}
    assert any(np.isfinite(x).any() for x in archived.values())
    for r in files.rates:
        if np.isfinite(archived[r.particle]).any():
            assert r.lithium_x == pytest.approx(float(np.nanmax(archived[r.particle])))


def test_apparent_diffusion_from_the_relaxation_of_the_swelling() -> None:
    # A particle of r0 = 20 nm approaching its final area with tau = 10 s:
    # D = r0^2 / (pi^2 tau) = (2e-6 cm)^2 / (pi^2 * 10 s)
    t = np.arange(0, 60, 0.5)
    area = np.pi * 20.0**2 * (1 + 0.8 * (1 - np.exp(-t / 10.0)))
    d = apparent_diffusion_cm2_per_s(t, area)
    assert d == pytest.approx((2e-6) ** 2 / (np.pi**2 * 10.0), rel=0.05)
    assert apparent_diffusion_cm2_per_s(t[:4], area[:4]) is None
    assert apparent_diffusion_cm2_per_s(t, np.full(t.size, 100.0)) is None


def test_tracking_ids_from_the_service_are_used_as_they_are() -> None:
    particles = {"frame": np.array([0, 0, 1, 1]), "t_s": np.array([0.0, 0.0, 1.0, 1.0]),
                 "track_id": np.array([7, 9, 9, 7]),
                 "centroid_row": np.zeros(4), "centroid_col": np.zeros(4)}
    tracks, by_service = _tracks(particles, np.array([1.0, 2.0, 3.0, 4.0]), max_step_px=5)
    assert by_service
    assert sorted(tracks) == [7, 9]
    np.testing.assert_array_equal(tracks[7][1], [1.0, 4.0])


def test_without_ids_particles_are_linked_by_centroid() -> None:
    particles = {"frame": np.array([0, 0, 1, 1, 2]), "t_s": np.array([0, 0, 1, 1, 2.0]),
                 "centroid_row": np.array([10.0, 50.0, 51.0, 11.0, 10.5]),
                 "centroid_col": np.array([10.0, 50.0, 50.0, 10.0, 10.0])}
    tracks, by_service = _tracks(particles, np.arange(5.0), max_step_px=5)
    assert not by_service
    assert sorted(len(v[0]) for v in tracks.values()) == [2, 3]


def test_report_command_shows_progress_and_fails_cleanly(sim_archive: Path,
                                                        tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([*LITHOSCOPE, "report", str(sim_archive), "--out", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "summary.md" in done.stdout
    assert (tmp_path / "out" / "montage.png").is_file()
    bad = subprocess.run([*LITHOSCOPE, "report", str(tmp_path), "--out", "x"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1
    assert "not a lithoscope archive" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    (tmp_path / "a-file").write_text("")
    unwritable = subprocess.run([*LITHOSCOPE, "report", str(sim_archive), "--out",
                                 str(tmp_path / "a-file" / "out")], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, env=env)
    assert unwritable.returncode == 1
    assert unwritable.stderr.splitlines() == [
        f"lithoscope: error: Cannot create {tmp_path / 'a-file' / 'out'}: Not a directory."]
