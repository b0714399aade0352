"""The lithoscope command, driven as a user drives it: real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.cli import app
from lithoscope.service.cli._service import replay_workers

from support.arrays import noisy_frames
from support.media import write_tiff_stack

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
runner = CliRunner()


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LITHOSCOPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_every_command_has_help_a_microscopist_can_read() -> None:
    for command in ("demo", "publish", "serve", "replay", "inspect"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_replay_tiff_then_inspect_json(tmp_path: Path) -> None:
    frames = noisy_frames(12, shape=(64, 80))
    stack = write_tiff_stack(tmp_path / "movie.tif", frames)
    done = run("replay", str(stack), "--archive", "out.zarr", "--fps", "4", "--pixel-size",
               "0.8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "archived 12" in done.stdout
    assert "measuring process" not in done.stdout  # 64x80 px: measured in replay's own
    reader = ArchiveReader(tmp_path / "out.zarr")
    np.testing.assert_array_equal(reader.frames[:], frames)
    assert reader.meta["config"]["workers"] == 0  # small frames: measured in replay's own

    shown = run("inspect", "out.zarr", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["frames"] == 12
    assert summary["duration_s"] == pytest.approx(11 / 4)
    assert summary["pixel_size_nm"] == 0.8
    assert isinstance(summary["events"], list)
    assert len(summary["cluster"]) == 12
    assert set(summary["cluster"][0]) >= {"t_s", "area_px", "needle_contact",
                                          "particle_diameter_px"}

    human = run("inspect", "out.zarr", cwd=tmp_path)
    assert "frames archived" in human.stdout
    assert "12" in human.stdout


def test_replay_with_a_measuring_process_gives_the_same_archive(tmp_path: Path) -> None:
    frames = noisy_frames(10, shape=(64, 80))
    stack = write_tiff_stack(tmp_path / "movie.tif", frames)
    tables = {}
    for workers in ("0", "1"):
        done = run("replay", str(stack), "--archive", f"w{workers}.zarr", "--fps", "4",
                   "--pixel-size", "0.8", "--workers", workers, "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["frames_archived"] == 10
        reader = ArchiveReader(tmp_path / f"w{workers}.zarr")
        np.testing.assert_array_equal(reader.frames[:], frames)
        assert reader.meta["config"]["workers"] == int(workers)  # the worker it ran
        tables[workers] = (reader.table("cluster"), reader.table("particles"))
    for ours, theirs in zip(tables["0"], tables["1"], strict=True):
        assert set(ours) == set(theirs)
        for column in ours:
            if column != "latency_s":  # wall-clock, not analysis
                np.testing.assert_array_equal(ours[column], theirs[column], err_msg=column)
    assert len(tables["1"][0]["area_px"]) == 10  # every frame measured
    refused = run("replay", str(stack), "--archive", "x.zarr", "--connect",
                  "tcp://127.0.0.1:5", "--workers", "1", cwd=tmp_path)
    assert refused.returncode == 1
    assert "--workers sets replay's own worker" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_replay_measures_megapixel_frames_in_a_process_of_its_own_by_default() -> None:
    assert replay_workers((1024, 1024), 2) == 1
    assert replay_workers((2048, 4096), 16) == 1
    assert replay_workers((1024, 1023), 8) == 0  # the analysis is too short to pay
    assert replay_workers((4096, 4096), 1) == 0  # no core to spare
    assert replay_workers(None, 8) == 0  # the shape is not known before reading


def test_replay_refuses_to_overwrite_and_needs_a_frame_rate_to_pace(tmp_path: Path) -> None:
    stack = write_tiff_stack(tmp_path / "movie.tif", noisy_frames(3, shape=(16, 16)))
    (tmp_path / "taken.zarr").mkdir()
    result = runner.invoke(app, ["replay", str(stack), "--archive", str(tmp_path / "taken.zarr")])
    assert result.exit_code == 1
    assert "already exists" in result.output
    result = run("replay", str(stack), "--archive", "x.zarr", "--speed", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert "give --fps" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.tif", None, "missing.tif"),
        ("empty.tif", b"", "empty.tif"),
        ("notes.xyz", b"hi", "Unknown source type"),
        ("cut.tif", b"II*\x00\x08\x00\x00\x00\x10\x00", "cut.tif"),
    ],
)
def test_bad_replay_input_is_one_clear_line(tmp_path: Path, name: str, content: bytes | None,
                                            message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run("replay", str(path), "--archive", "x.zarr", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_inspect_of_a_non_archive_fails_cleanly(tmp_path: Path) -> None:
    result = run("inspect", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "not a lithoscope archive" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_and_publish_as_separate_processes(tmp_path: Path) -> None:
    serve = subprocess.Popen(
        [*LITHOSCOPE, "serve", "--frames", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
         "--sessions", str(tmp_path / "sessions")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "300"})
    try:
        assert serve.stdout is not None
        ready = serve.stdout.readline()  # the ready signal: endpoints actually bound
        found = re.findall(r"tcp://127\.0\.0\.1:\d+", ready)
        assert len(found) == 2, ready
        frames_at, results_at = found
        frames = noisy_frames(15, shape=(48, 64))
        stack = write_tiff_stack(tmp_path / "movie.tif", frames)
        done = run("publish", str(stack), "--connect", frames_at, "--results", results_at,
                   "--speed", "max", "--archive-name", "bench run", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Archived 15 frames" in done.stdout
        archive = tmp_path / "sessions" / "bench_run.zarr"
        np.testing.assert_array_equal(ArchiveReader(archive).frames[:], frames)
    finally:
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    assert "stopped" in out


def test_demo_runs_the_whole_experiment(tmp_path: Path) -> None:
    done = run("demo", "--speed", "25", "--sessions", "runs", cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    (archive,) = (tmp_path / "runs").glob("*.zarr")
    summary = ArchiveReader(archive).summary()
    assert summary["status"] == "complete"
    assert summary["frames"] == 480
    kinds = [e["kind"] for e in summary["events"]]
    assert "contact_made" in kinds
    assert "contact_lost" in kinds
    assert "contact_made" in done.stdout
    assert "particle size" in done.stdout  # the scale read from the frames
    assert str(archive.name) in done.stdout.replace("\n", "")
