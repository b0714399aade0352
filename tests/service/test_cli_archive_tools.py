"""export, reanalyze and publish watch:/imagezmq:// driven as a user drives them: subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import imagezmq
import numpy as np
import pandas as pd
import pytest
import tifffile

from lithoscope.service.archive import ArchiveReader

from support.archives import record_sim_archive
from support.media import make_frames

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
ENV = {**os.environ, "COLUMNS": "300"}


def run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LITHOSCOPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("cli") / "sim.zarr")


def test_reanalyze_then_export_the_new_tables(archive: Path, tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("[analysis]\nmin_particle_area_px = 100000\n")
    done = run("reanalyze", str(archive), "--config", str(settings), "--run", "strict",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frames = ArchiveReader(archive).frame_count
    assert f"{frames} frames re-analysed into reanalysis/strict" in done.stdout
    done = run("export", str(archive), "--to", "csv", "--reanalysis", "latest",
               "--output", "tables", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cluster = pd.read_csv(tmp_path / "tables" / "cluster.csv")
    assert len(cluster) == frames
    assert (cluster["particle_count"] == 0).all()  # the new settings, not the live ones
    done = run("export", str(archive), "--to", "mp4", "--output", "talk.mp4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "talk.mp4").stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["export", "nowhere.zarr", "--to", "csv"], "not a lithoscope archive"),
    (["export", "ARCHIVE", "--to", "csv", "--reanalysis", "nope"], "no re-analysis run"),
    (["reanalyze", "nowhere.zarr"], "not a lithoscope archive"),
])
def test_bad_input_is_one_line(archive: Path, tmp_path: Path, args: list[str],
                               message: str) -> None:
    args = [str(archive) if arg == "ARCHIVE" else arg for arg in args]
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, str]]:
    serve = subprocess.Popen(
        [*LITHOSCOPE, "serve", "--frames", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
         "--sessions", str(tmp_path / "sessions")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert serve.stdout is not None
        ready = serve.stdout.readline()  # the ready signal: endpoints actually bound
        found = re.findall(r"tcp://127\.0\.0\.1:\d+", ready)
        assert len(found) == 2, ready
        yield found[0], found[1]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)


def test_publish_watch_folder_while_a_camera_writes(tmp_path: Path,
                                                    service: tuple[str, str]) -> None:
    frames_at, results_at = service
    folder = tmp_path / "camera"
    folder.mkdir()
    frames = make_frames(8, (32, 48), np.uint16, seed=5)
    publisher = subprocess.Popen(
        [*LITHOSCOPE, "publish", f"watch:{folder}", "--connect", frames_at,
         "--results", results_at, "--archive-name", "watched", "--pixel-size", "0.5"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    # The camera: each frame saved under a temporary name, then renamed, then the sentinel.
    for number, frame in enumerate(frames, start=1):
        tifffile.imwrite(folder / f"img_{number}.tif.tmp", frame)
        (folder / f"img_{number}.tif.tmp").rename(folder / f"img_{number}.tif")
    (folder / "lithoscope.stop").touch()
    out, err = publisher.communicate(timeout=120)
    assert publisher.returncode == 0, err
    assert "Archived 8 frames" in out
    reader = ArchiveReader(tmp_path / "sessions" / "watched.zarr")
    np.testing.assert_array_equal(reader.frames[:], np.stack(frames))
    assert reader.meta["source_kind"] == "watch"
    assert reader.pixel_size_nm == 0.5


def test_publish_imagezmq_hub_fed_by_an_image_sender(tmp_path: Path,
                                                     service: tuple[str, str]) -> None:
    frames_at, results_at = service
    publisher = subprocess.Popen(
        [*LITHOSCOPE, "publish", "imagezmq://tcp://127.0.0.1:0", "--connect", frames_at,
         "--results", results_at, "--archive-name", "izmq", "-v"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert publisher.stdout is not None
    # "Publishing imagezmq:tcp://127.0.0.1:PORT to FRAMES ...": the hub is bound.
    announced = publisher.stdout.readline()
    found = re.findall(r"imagezmq:(tcp://127\.0\.0\.1:\d+)", announced)
    if not found:
        publisher.kill()
        pytest.fail(f"no hub endpoint announced: {announced!r} {publisher.communicate()}")
    hub = found[0]
    frames = make_frames(6, (24, 32), np.uint8, seed=9)

    def camera() -> None:  # an unchanged imagezmq camera script
        sender = imagezmq.ImageSender(connect_to=hub)
        for number, frame in enumerate(frames):
            sender.send_image(f"cam {number}", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        sender.send_image("lithoscope:stop", frames[0])
        sender.close()

    thread = threading.Thread(target=camera)
    thread.start()
    out, err = publisher.communicate(timeout=120)
    thread.join(timeout=30)
    assert publisher.returncode == 0, err
    assert "Archived 6 frames" in out
    reader = ArchiveReader(tmp_path / "sessions" / "izmq.zarr")
    np.testing.assert_array_equal(reader.frames[:], np.stack(frames))


def test_a_folder_backlog_is_not_replayed_in_real_time(tmp_path: Path,
                                                       service: tuple[str, str]) -> None:
    """Frames saved an hour apart (by their mtimes) are sent as soon as they are complete."""
    frames_at, results_at = service
    folder = tmp_path / "camera"
    folder.mkdir()
    frames = make_frames(3, (16, 16), np.uint8, seed=1)
    for number, frame in enumerate(frames):
        path = folder / f"img_{number}.tif"
        tifffile.imwrite(path, frame)
        os.utime(path, (1e9 + 3600 * number, 1e9 + 3600 * number))
    (folder / "lithoscope.stop").touch()
    done = run("publish", f"watch:{folder}", "--connect", frames_at, "--results", results_at,
               "--archive-name", "backlog", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Archived 3 frames" in done.stdout
    times = ArchiveReader(tmp_path / "sessions" / "backlog.zarr").table("frame_table")["t_s"]
    np.testing.assert_allclose(times, [0.0, 3600.0, 7200.0])
