"""The echem side stream end to end: real sockets, a real worker, archives on disk, and
``lithoscope publish-echem`` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.session import run_local_session
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.operando.context import bookkeeping_summary
from lithoscope.service.protocol import Result
from lithoscope.service.publisher import SESSION_TOKEN_ENV, EchemPublisher, Publisher
from lithoscope.service.sources.echem import CsvEchemSource, SimulatedEchem
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

from support.eclab import GCPL, MB, OCV

SHORT = SimConfig(shape=(384, 384), fps=2.0, duration_s=40.0, contact_s=5.0, bias_on_s=8.0,
                  withdraw_s=28.0, particle_count=5, particle_diameter_nm=(30.0, 45.0))


def test_a_simulated_session_with_its_potentiostat(tmp_path: Path) -> None:
    messages: list[object] = []
    source = SimulatedSource(SHORT)
    report = run_local_session(source, config=ServiceConfig(sessions_dir=str(tmp_path)),
                               speed=None, live=False, echem=SimulatedEchem(SHORT),
                               on_message=messages.append)
    assert report.closed is not None
    reader = ArchiveReader(report.closed.archive_path)
    echem = reader.table("echem")
    assert len(echem["seq"]) > 0
    np.testing.assert_array_equal(echem["seq"], np.arange(len(echem["seq"])))
    operando = reader.table("operando")
    np.testing.assert_array_equal(operando["frame"], np.arange(80))
    assert set(operando["dose_rate_source"]) == {"metadata"}
    bias_on = (operando["t_s"] >= 9.0) & (operando["t_s"] < 27.0)
    np.testing.assert_allclose(operando["bias_v"][bias_on], -2.0)
    # The dose of every frame: 10 e/A^2/s over the frame interval.
    np.testing.assert_allclose(np.diff(operando["dose_e_per_a2"]), 10.0 / 2.0)
    assert len(reader.table("region_dose")["frame"]) == 80 * 16
    particle_dose = reader.table("particle_dose")
    assert particle_dose["dose_e_per_a2"].max() <= operando["dose_e_per_a2"][-1] + 1e-9

    book = bookkeeping_summary(operando)
    assert book is not None
    truth = SimulatedEchem(SHORT).sim.lithium_atoms(np.array([book["peak_t_s"]])).sum()
    assert book["peak_from_charge"] == pytest.approx(truth, rel=0.1)
    # The visible particles' volume accounts for most of the charge while the needle
    # feeds them (segmentation and the sphere model cost some), and after withdrawal
    # lithium leaves the field with no current.
    assert 0.5 < book["uptake_fraction"] < 1.3
    assert book["end_visible"] < 0.6 * book["peak_visible"]
    events = {e["kind"]: e for e in reader.events()}
    onset = events["expansion_onset"]
    assert onset["context"]["bias_v"] == -2.0
    assert onset["context"]["charge_c"] < 0
    assert onset["context"]["particle_dose_e_per_a2"]
    assert "lithium_redistributed" in events
    results = [m for m in messages if isinstance(m, Result)]
    assert any(r.cluster.get("bias_v") == -2.0 for r in results)


TOKEN = "operando-test-token-0123456789"
"""Shared by the camera's publisher and the echem sender, as LITHOSCOPE_SESSION_TOKEN
would be between two processes."""


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_samples_before_the_session_are_filed_with_a_clock_offset(tmp_path: Path) -> None:
    config = ServiceConfig(sessions_dir=str(tmp_path), frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*")
    with WorkerThread(Worker(config)) as thread:
        worker = thread.worker
        assert worker.frames_endpoint
        assert worker.results_endpoint
        log = tmp_path / "holder.csv"
        now = time.time()
        log.write_text("t_unix,bias_v,current_a\n" + "".join(
            f"{now + k * 0.1:.3f},-1.5,-1e-12\n" for k in range(20)))
        with EchemPublisher(worker.frames_endpoint) as publisher:
            report = publisher.publish_echem(
                CsvEchemSource(log, poll_s=0.02, idle_timeout_s=0.2), clock_offset_s=2.0,
                session_token=TOKEN)
            assert report.samples == 20
            _wait_for(lambda: len(worker._echem_unattached) == 1)
            source = SimulatedSource(SimConfig(duration_s=2.0, fps=2.0, shape=(256, 256),
                                               particle_count=3,
                                               particle_diameter_nm=(20.0, 30.0)))
            with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                           ack_timeout_s=60) as frames:
                done = frames.publish(source, speed=None, live=False, session_token=TOKEN)
    assert done.closed is not None
    echem = ArchiveReader(done.closed.archive_path).table("echem")
    assert len(echem["seq"]) == 20
    np.testing.assert_allclose(echem["clock_offset_s"], 2.0)
    t0 = ArchiveReader(done.closed.archive_path).meta["t0_unix"]
    np.testing.assert_allclose(echem["t_s"], echem["t_unix"] + 2.0 - t0)


def test_publish_echem_command_tails_a_csv(tmp_path: Path) -> None:
    config = ServiceConfig(sessions_dir=str(tmp_path), frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*")
    log = tmp_path / "potentiostat.csv"
    log.write_text("time/s,Ewe/V,I/mA\n0,0,0\n1,-2,-1e-6\n2,-2,-1e-6\n")
    script = [sys.executable, "-m", "lithoscope.service"]
    with WorkerThread(Worker(config)) as thread:
        worker = thread.worker
        assert worker.frames_endpoint
        done = subprocess.run(
            [*script, "publish-echem", str(log), "--connect", worker.frames_endpoint,
             "--t0-unix", "1000", "--idle-timeout", "0.5"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, SESSION_TOKEN_ENV: TOKEN})
        assert done.returncode == 0, done.stderr
        assert "Sent 3 samples" in done.stdout
        _wait_for(lambda: len(worker._echem_unattached) == 1)
        (msg,) = worker._echem_unattached
    assert msg.t_unix == [1000.0, 1001.0, 1002.0]
    assert msg.current_a == [0.0, -1e-9, -1e-9]
    bad = subprocess.run([*script, "publish-echem", str(tmp_path / "x.xyz")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "Unknown echem source" in bad.stderr


def _eclab_truth(path: Path) -> tuple[list[float], list[float], list[float | None]]:
    """Times (Unix s), Ewe (V) and current (A, None where not recorded) read with
    galvani directly, the units converted here from the column names."""
    from galvani import BioLogic

    with open(path, "rb") as f:
        mpr = BioLogic.MPRfile(f)
    data = mpr.data
    t = data["time/s"]
    if "I/mA" in data.dtype.names:
        current: list[float | None] = [float(i) * 1e-3 for i in data["I/mA"]]
    elif "dq/mA.h" in data.dtype.names:  # mA h -> C, over the step
        steps = data["dq/mA.h"][1:] * 3.6 / np.diff(t)
        current = [None, *(float(i) for i in steps)]
    else:
        current = [None] * len(t)
    return ((t + mpr.timestamp.timestamp()).tolist(),
            [float(v) for v in data["Ewe/V"]], current)


@pytest.mark.parametrize("path", [MB, OCV, GCPL], ids=["potentiostatic", "open-circuit",
                                                        "galvanostatic"])
def test_publish_echem_command_sends_a_real_eclab_file(tmp_path: Path, path: Path) -> None:
    pytest.importorskip("galvani")
    t_unix, bias_v, current_a = _eclab_truth(path)
    config = ServiceConfig(sessions_dir=str(tmp_path), frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*")
    with WorkerThread(Worker(config)) as thread:
        worker = thread.worker
        assert worker.frames_endpoint
        done = subprocess.run(
            [sys.executable, "-m", "lithoscope.service", "publish-echem", str(path),
             "--connect", worker.frames_endpoint, "--idle-timeout", "0.5"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, SESSION_TOKEN_ENV: TOKEN})
        assert done.returncode == 0, done.stderr
        assert f"Sent {len(t_unix)} samples in 1 batches" in done.stdout
        _wait_for(lambda: len(worker._echem_unattached) == 1)
        (msg,) = worker._echem_unattached
    assert msg.source == f"eclab:{path}"
    np.testing.assert_allclose(msg.t_unix, t_unix, rtol=0, atol=1e-6)  # the file's start
    assert msg.bias_v == bias_v
    assert [i is None for i in msg.current_a] == [i is None for i in current_a]
    np.testing.assert_allclose([np.nan if i is None else i for i in msg.current_a],
                               [np.nan if i is None else i for i in current_a], rtol=1e-12)
