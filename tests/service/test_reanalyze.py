"""Re-analysis on a local Dask cluster: new tables beside the old, frames untouched."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zmq

import lithoscope.service
from lithoscope.service.alerts import AlertConfig
from lithoscope.service.analysis import AnalysisConfig
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.errors import ArchiveError, ConfigError
from lithoscope.service.offline.reanalyze import reanalyze

from support.archives import record_sim_archive


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("re") / "sim.zarr")


@pytest.fixture
def archive(recorded: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(recorded, tmp_path / "sim.zarr"))


def digest_of_everything_but_reanalysis(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()
            and p.relative_to(path).parts[0] != "reanalysis"}


def test_same_settings_reproduce_the_live_analysis(archive: Path) -> None:
    before = digest_of_everything_but_reanalysis(archive)
    (result,) = reanalyze([archive])
    assert digest_of_everything_but_reanalysis(archive) == before  # frames untouched
    live = lithoscope.service.open_archive(archive)
    again = lithoscope.service.open_archive(archive, reanalysis="latest")
    assert again.reanalysis == result.run
    assert live.runs == (result.run,)
    assert result.frames_analysed == live.frames.sizes["t"]
    # Replay is lossless, so the live worker analysed every frame in order, with the
    # same code: every column but the latency is the same.
    assert set(again.cluster.columns) == set(live.cluster.columns)
    for column in again.cluster.columns.drop("latency_s"):
        np.testing.assert_array_equal(again.cluster[column].to_numpy(),
                                      live.cluster[column].to_numpy(), err_msg=column)
    assert np.isnan(again.cluster["latency_s"]).all()
    pd.testing.assert_frame_equal(again.particles, live.particles[again.particles.columns])
    pd.testing.assert_frame_equal(again.events, live.events[again.events.columns])
    assert [e["kind"] for e in result.events] == list(live.events["kind"])


def test_new_settings_give_new_tables_beside_the_old(archive: Path) -> None:
    live_areas = ArchiveReader(archive).table("cluster")["area_px"].copy()
    reanalyze([archive], analysis=AnalysisConfig(min_particle_area_px=100_000), run="huge-min")
    reanalyze([archive], run="defaults")
    strict = lithoscope.service.open_archive(archive, reanalysis="huge-min")
    assert (strict.cluster["particle_count"] == 0).all()
    assert len(strict.particles) == 0
    assert strict.runs == ("defaults", "huge-min")
    assert np.array_equal(ArchiveReader(archive).table("cluster")["area_px"], live_areas)


def test_several_archives_in_one_call(archive: Path, tmp_path: Path) -> None:
    second = Path(shutil.copytree(archive, tmp_path / "second.zarr"))
    seen: dict[Path, list[int]] = {}
    results = reanalyze([archive, second], run="both",
                        frame_progress=lambda path, done, total:
                        seen.setdefault(path, []).append(done))
    assert [r.path for r in results] == [archive, second]
    frames = ArchiveReader(archive).frame_count
    assert all(r.frames_analysed == frames for r in results)
    assert set(seen) == {archive, second}
    for done in seen.values():  # each archive's own count, frame by frame
        assert done == sorted(set(done))
        assert done[-1] == frames
        assert len(done) >= frames // 2
    with pytest.raises(ConfigError, match="given twice"):
        reanalyze([archive, archive], run="twice")


def test_bad_input_fails_before_any_work(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a lithoscope archive"):
        reanalyze([archive, tmp_path])
    reanalyze([archive], run="x")
    with pytest.raises(ConfigError, match="already exists"):
        reanalyze([archive], run="x")


def test_a_running_scheduler_with_worker_processes(archive: Path) -> None:
    """--scheduler ADDR: the task pickles to a worker process that opens the archive."""
    from distributed import LocalCluster

    seen: list[tuple[Path, int, int]] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      scheduler_port=0, dashboard_address="127.0.0.1:0") as cluster:
        (result,) = reanalyze([archive], scheduler=cluster.scheduler_address, run="remote",
                              frame_progress=lambda *args: seen.append(args))
    # Progress frame by frame (40 frames: an event each), from the worker process
    # through the scheduler, never going back, ending at the last frame.
    frames = ArchiveReader(archive).frame_count
    assert {(path, total) for path, _, total in seen} == {(archive, frames)}
    done = [d for _, d, _ in seen]
    assert done == sorted(set(done))
    assert done[-1] == frames
    assert len(done) >= frames // 2  # not only the final count the client adds itself
    live = lithoscope.service.open_archive(archive)
    remote = lithoscope.service.open_archive(archive, reanalysis="remote")
    assert result.frames_analysed == live.frames.sizes["t"]
    np.testing.assert_array_equal(remote.cluster["area_px"], live.cluster["area_px"])
    pd.testing.assert_frame_equal(remote.events, live.events[remote.events.columns])


def test_an_unreachable_scheduler_is_one_error(archive: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot reach the Dask scheduler"):
        reanalyze([archive], scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0)


def _record_operando_session(path: Path) -> Path:
    """A replayed simulator session with echem, over a real socket into a real worker:
    the echem batches first, then the frames, all on one socket (so in that order)."""
    from lithoscope.service.config import ServiceConfig
    from lithoscope.service.live.worker import Worker, WorkerThread
    from lithoscope.service.protocol import Echem, Frame, SessionStart, SessionStop, encode
    from lithoscope.service.sources.sim import SimulatedSource

    from support.archives import SMALL_SIM

    token, t0 = "reanalysis-test-token-0123", 1_764_000_000.0
    config = ServiceConfig(frames_endpoint=f"ipc://{path.parent}/frames",
                           results_endpoint=f"ipc://{path.parent}/results")
    with WorkerThread(Worker(config, archive_path_for=lambda _: path)) as thread:
        worker = thread.worker
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(worker.frames_endpoint or "")
        t = np.arange(-5.0, 45.0, 0.25)
        on = (t >= SMALL_SIM.bias_on_s) & (t < SMALL_SIM.withdraw_s)
        with SimulatedSource(SMALL_SIM) as source:
            push.send_multipart(encode(SessionStart(
                session_id="operando", source="sim", source_kind="sim", t0_unix=t0,
                live=False, pixel_size_nm=source.info.pixel_size_nm, fps=source.info.fps,
                session_token=token)))
            for i in range(0, len(t), 40):
                push.send_multipart(encode(Echem(
                    source="test", t_unix=(t0 + t[i:i + 40]).tolist(),
                    bias_v=np.where(on, -0.8, 0.0)[i:i + 40].tolist(),
                    current_a=np.where(on, -2e-9, 0.0)[i:i + 40].tolist(),
                    session_id="operando", session_token=token)))
            sent = 0
            for item in source:
                push.send_multipart(encode(Frame(
                    session_id="operando", index=item.index, t_s=item.t_s,
                    acquired_at=t0 + item.t_s, shape=list(item.image.shape),
                    dtype=item.image.dtype.name, pixel_size_nm=source.info.pixel_size_nm,
                    exposure_s=item.metadata.get("exposure_s"),
                    metadata={k: v for k, v in item.metadata.items() if k != "exposure_s"},
                    seq=sent + 2, session_token=token, image=item.image)))
                sent += 1
        push.send_multipart(encode(SessionStop(session_id="operando", frames_sent=sent,
                                               session_token=token)))
        deadline = time.monotonic() + 120
        while "operando" not in worker.closed_sessions:
            thread.maybe_raise()
            assert time.monotonic() < deadline, "the session was not closed"
            time.sleep(0.05)
        push.close(linger=0)
    return path


def test_every_table_of_the_live_archive_is_reproduced(tmp_path: Path) -> None:
    """The live worker and re-analysis shape rows in one place (SessionPipeline): with
    the settings it was recorded with, re-analysis writes every table the live worker
    wrote, operando, echem and dose tables included, value for value."""
    from lithoscope.service.offline.reanalyze import TABLES

    archive = _record_operando_session(tmp_path / "operando.zarr")
    live = ArchiveReader(archive)
    assert live.status == "complete"
    config = live.meta["config"]
    (result,) = reanalyze([archive], analysis=AnalysisConfig.from_dict(config["analysis"]),
                          alerts=AlertConfig.from_dict(config["alerts"]), run="same")
    again = ArchiveReader(archive).group[f"reanalysis/{result.run}"]
    for table, columns in TABLES.items():
        recorded = live.table(table)
        assert recorded, f"the live archive has no {table} table: nothing compared"
        for column in columns:
            values = np.asarray(again[f"{table}/{column}"][:])  # type: ignore[index]
            if column == "latency_s":
                assert np.isnan(values).all()
                continue
            np.testing.assert_array_equal(values, recorded[column],
                                          err_msg=f"{table}.{column}")
    assert len(live.table("operando")["frame"]) == live.frame_count
    # The label images too: the same pixels, track colours and properties as the live
    # archive's labels/, with the source image pointing at the same frames.
    from lithoscope.service.archive import LABEL_NAMES

    live_labels, run_labels = live.group["labels"], again["labels"]
    assert dict(run_labels.attrs) == dict(live_labels.attrs)  # type: ignore[union-attr]
    for name in LABEL_NAMES:
        recorded_image = np.asarray(live_labels[f"{name}/0"][:])  # type: ignore[index]
        image = np.asarray(run_labels[f"{name}/0"][:])  # type: ignore[index]
        assert image.shape == recorded_image.shape, name
        if name != "grid":  # the simulator's small session has no grid bars in view
            assert recorded_image.any(), f"the live archive's {name} labels are empty"
        np.testing.assert_array_equal(image, recorded_image, err_msg=name)
        live_ome = dict(live_labels[name].attrs["ome"])  # type: ignore[index, arg-type]
        run_ome = dict(run_labels[name].attrs["ome"])  # type: ignore[index, arg-type]
        assert live_ome["image-label"].pop("source") == {"image": "../../"}
        assert run_ome["image-label"].pop("source") == {"image": "../../../../"}
        assert run_ome == live_ome, name
