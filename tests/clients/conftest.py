"""A real archive from the simulator, made once for the report and monitor tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lithoscope.service.live.session import run_local_session
from lithoscope.service.protocol import Message, Result
from lithoscope.service.sources.echem import SimulatedEchem
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


@dataclass(frozen=True)
class SimRun:
    archive: Path
    results: list[Result]
    """Every result message the worker published, in order."""


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    """The lithiation scenario at one frame per second and 256² (120 frames), replayed
    losslessly so every frame is analysed: contact, swelling, withdrawal, contraction;
    with the simulated potentiostat's bias and current beside it."""
    path = tmp_path_factory.mktemp("archive") / "sim.zarr"
    config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0)
    results: list[Result] = []

    def keep(msg: Message) -> None:
        if isinstance(msg, Result):
            results.append(msg)

    report = run_local_session(SimulatedSource(config), archive_path=path, speed=None,
                               live=False, echem=SimulatedEchem(config), on_message=keep)
    assert report.closed is not None
    assert report.closed.frames_archived == report.frames_sent
    return SimRun(path, results)


@pytest.fixture(scope="session")
def sim_archive(sim_run: SimRun) -> Path:
    """The archive of :func:`sim_run`."""
    return sim_run.archive
