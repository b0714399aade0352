"""Re-analysis on a local Dask cluster: new tables beside the old, frames untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lithoscope.service
from lithoscope.service.analysis import AnalysisConfig
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.errors import ArchiveError, ConfigError
from lithoscope.service.reanalyze import reanalyze

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
    results = reanalyze([archive, second], run="both")
    assert [r.path for r in results] == [archive, second]
    assert all(r.frames_analysed == ArchiveReader(archive).frame_count for r in results)


def test_bad_input_fails_before_any_work(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a lithoscope archive"):
        reanalyze([archive, tmp_path])
    reanalyze([archive], run="x")
    with pytest.raises(ConfigError, match="already exists"):
        reanalyze([archive], run="x")


def test_a_running_scheduler_with_worker_processes(archive: Path) -> None:
    """--scheduler ADDR: the task pickles to a worker process that opens the archive."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      scheduler_port=0, dashboard_address="127.0.0.1:0") as cluster:
        (result,) = reanalyze([archive], scheduler=cluster.scheduler_address, run="remote")
    live = lithoscope.service.open_archive(archive)
    remote = lithoscope.service.open_archive(archive, reanalysis="remote")
    assert result.frames_analysed == live.frames.sizes["t"]
    np.testing.assert_array_equal(remote.cluster["area_px"], live.cluster["area_px"])
    pd.testing.assert_frame_equal(remote.events, live.events[remote.events.columns])


def test_an_unreachable_scheduler_is_one_error(archive: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot reach the Dask scheduler"):
        reanalyze([archive], scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0)
